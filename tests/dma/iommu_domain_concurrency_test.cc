// Concurrency stress of IommuDomain: neighbouring 4 KiB mappings that share (and keep emptying)
// leaf tables, 2 MiB blocks and block-sized unmaps in the same 1 GiB table, lockless Translate and
// dump walkers, and a dirty sweeper, all at once; a lock-step test that a device write is reported
// by exactly one sweep; and a device reading through the IOTLB model while maps fail. Label:
// concurrency (run under TSan).
//
// PAGEPOOL_STRESS_ITERS overrides the iterations per mapper thread.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "dma/iommu_domain.h"
#include "gtest/gtest.h"
#include "tests/dma/dma_test_util.h"

namespace pagepool::dma {
namespace {

uint64_t Iterations() { return ScaledCount("PAGEPOOL_STRESS_ITERS", 200'000, 100'000, 60'000); }

constexpr uint64_t kRegion = 5 * k1G;  // all threads work inside this 1 GiB
constexpr uint64_t kLeafTables = 4;    // 4 KiB mappers share these 2 MiB leaf tables
constexpr uint64_t kBlockBase = kRegion + 64 * k2M;
constexpr uint64_t kBlockSlots = 8;
constexpr uint64_t kPhysOffset = 0x40'0000'0000;  // phys = iova + kPhysOffset (+4K for 4K leaves
                                                  // made from a 2 MiB range), so walkers can check
constexpr int kMappers = 4;

bool PlausiblePhys(uint64_t iova, uint64_t phys) {
  return phys == iova + kPhysOffset || phys == iova + kPhysOffset + k4K;
}

struct StressMode {
  IommuMode mode;
  bool iotlb;
};

class ConcurrencyTest : public ::testing::TestWithParam<StressMode> {};

TEST_P(ConcurrencyTest, SharedTablesMapUnmapWithWalkersAndSweeper) {
  DomainConfig c;
  c.mode = GetParam().mode;
  c.model_iotlb = GetParam().iotlb;  // strict only: lazy would (rightly) serve stale reads
  absl::StatusOr<std::unique_ptr<IommuDomain>> created = IommuDomain::Create(c);
  ASSERT_TRUE(created.ok());
  IommuDomain& d = **created;
  const uint64_t iters = Iterations();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> walker_hits{0};

  auto fail = [&](const char* what, uint64_t iova, const absl::Status& s) {
    if (errors.fetch_add(1) < 10)
      ADD_FAILURE() << what << " iova 0x" << std::hex << iova << " " << s;
  };

  std::vector<std::thread> threads;
  // 4 KiB mappers: thread t owns the pages p with p % kMappers == t in kLeafTables leaf tables, so
  // every leaf table holds pages of every thread and empties whenever they all unmap.
  for (int t = 0; t < kMappers; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + t);
      uint64_t mine[4];
      for (uint64_t i = 0; i < iters && errors.load(std::memory_order_relaxed) == 0; ++i) {
        const uint64_t table = rng() % kLeafTables;
        const int n = 1 + static_cast<int>(rng() % 3);
        for (int k = 0; k < n; ++k) {
          // Distinct pages of this thread in that table.
          const uint64_t slot = (rng() % (512 / kMappers / 4)) * 4 + k;
          const uint64_t page = slot * kMappers + t;
          mine[k] = kRegion + table * k2M + page * k4K;
          absl::Status s = d.Map(mine[k], mine[k] + kPhysOffset, k4K, kProtRead | kProtWrite);
          if (!s.ok()) fail("map", mine[k], s);
        }
        for (int k = 0; k < n; ++k) {
          absl::StatusOr<PhysAddr> pa = d.Translate(mine[k] + 8, (i & 1) != 0);
          if (!pa.ok() || *pa != mine[k] + kPhysOffset + 8) {
            fail("lost mapping", mine[k], pa.status());
          }
          pa = d.Translate(mine[k] + 16, false);  // with the IOTLB model: usually a hit
          if (!pa.ok() || *pa != mine[k] + kPhysOffset + 16) {
            fail("lost mapping (second read)", mine[k], pa.status());
          }
        }
        for (int k = 0; k < n; ++k) {
          absl::Status s = d.Unmap(mine[k], k4K, false);
          if (!s.ok()) fail("unmap", mine[k], s);
          absl::StatusOr<PhysAddr> pa = d.Translate(mine[k], false);
          if (pa.ok()) fail("still mapped after unmap", mine[k], absl::OkStatus());
        }
      }
    });
  }
  // Block mapper: 2 MiB blocks and 2 MiB of 4 KiB leaves (unmapped whole: live-free case 3) in the
  // same 1 GiB table as the 4 KiB mappers.
  threads.emplace_back([&] {
    std::mt19937_64 rng(77);
    for (uint64_t i = 0; i < iters / 8 && errors.load(std::memory_order_relaxed) == 0; ++i) {
      const uint64_t iova = kBlockBase + (rng() % kBlockSlots) * k2M;
      const bool leaves = rng() % 4 == 0;
      const uint64_t phys = iova + kPhysOffset + (leaves ? k4K : 0);
      absl::Status s = d.Map(iova, phys, k2M, kProtRead | kProtWrite);
      if (!s.ok()) fail("block map", iova, s);
      absl::StatusOr<PhysAddr> pa = d.Translate(iova + k2M - 8, true);
      if (!pa.ok() || *pa != phys + k2M - 8) fail("lost block", iova, pa.status());
      s = d.Unmap(iova, k2M);
      if (!s.ok()) fail("block unmap", iova, s);
    }
  });
  // Walkers: Translate anywhere in the region, and a debugfs-style dump.
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(500 + w);
      uint64_t hits = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        if (w == 1 && rng() % 64 == 0) {
          d.ForEachPresent(kRegion, kRegion + k1G, [&](const PresentEntry& e) {
            if (!PlausiblePhys(e.iova, e.phys) || (e.size != k4K && e.size != k2M)) {
              fail("dump", e.iova, absl::OkStatus());
            }
            return true;
          });
          continue;
        }
        const uint64_t iova = kRegion + (rng() % (kBlockBase + kBlockSlots * k2M - kRegion));
        absl::StatusOr<PhysAddr> pa = d.Translate(iova, (rng() & 1) != 0);
        if (pa.ok()) {
          ++hits;
          if (!PlausiblePhys(iova & ~(k4K - 1), *pa & ~(k4K - 1)))
            fail("walker", iova, pa.status());
        }
      }
      walker_hits.fetch_add(hits);
    });
  }
  // Dirty sweeper.
  threads.emplace_back([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      d.SweepDirty(kRegion, kRegion + k1G, [&](DmaAddr iova, uint64_t size) {
        if (size != k4K && size != k2M) fail("sweep size", iova, absl::OkStatus());
      });
    }
  });

  for (int i = 0; i < kMappers + 1; ++i) threads[i].join();
  stop.store(true);
  for (size_t i = kMappers + 1; i < threads.size(); ++i) threads[i].join();
  ASSERT_EQ(errors.load(), 0u);

  d.FlushQueues();
  d.Quiesce();
  const DomainStats s = d.stats();
  EXPECT_EQ(s.table_pages, 1u);
  EXPECT_EQ(s.table_bytes, 4096u);
  EXPECT_EQ(s.pending_free_pages, 0u);
  EXPECT_EQ(s.mapped_pages, 0u);
  EXPECT_EQ(s.maps, s.unmaps);
  EXPECT_EQ(s.tables_allocated, s.tables_freed + 1);
  EXPECT_EQ(s.tables_released, s.tables_freed);
  EXPECT_EQ(s.fq_pending, 0u);
  EXPECT_GT(s.block_unmap_table, 0u);
  EXPECT_GE(s.peak_table_pages, 4u);
  // Strict: one flush per unmap, plus one per map that unlinked tables (a racing neighbour left a
  // table empty and the map dropped the last reservation, or a block replaced an empty table).
  if (GetParam().mode == IommuMode::kStrict) {
    EXPECT_GE(s.iotlb_flushes, s.unmaps);
  }
  EXPECT_EQ(s.iotlb_flushed_entries, s.unmaps);
  std::printf(
      "iotlb hits %llu, maps %llu, tables freed %llu, install races lost %llu, block-unmap-table "
      "%llu, "
      "walker hits %llu, dirty reports %llu, peak tables %llu\n",
      (unsigned long long)d.iotlb_hits(), (unsigned long long)s.maps,
      (unsigned long long)s.tables_freed, (unsigned long long)s.install_races_lost,
      (unsigned long long)s.block_unmap_table, (unsigned long long)walker_hits.load(),
      (unsigned long long)s.dirty_reports, (unsigned long long)s.peak_table_pages);
}

INSTANTIATE_TEST_SUITE_P(Modes, ConcurrencyTest,
                         ::testing::Values(StressMode{IommuMode::kStrict, false},
                                           StressMode{IommuMode::kLazy, false},
                                           StressMode{IommuMode::kStrict, true}),
                         [](const ::testing::TestParamInfo<StressMode>& info) {
                           return std::string(IommuModeName(info.param.mode)) +
                                  (info.param.iotlb ? "_iotlb" : "");
                         });

// A device write is reported by exactly one sweep, even while neighbours in the same leaf table are
// mapped and unmapped: the writer waits for each report before writing again.
TEST(DirtyConcurrency, EveryWriteReportedExactlyOnce) {
  absl::StatusOr<std::unique_ptr<IommuDomain>> created = IommuDomain::Create(DomainConfig{});
  ASSERT_TRUE(created.ok());
  IommuDomain& d = **created;
  const uint64_t target = kRegion + 100 * k4K;
  ASSERT_TRUE(d.Map(target, target + kPhysOffset, k4K, kProtRead | kProtWrite).ok());
  // Each write waits for the sweeper thread to be scheduled: keep the count modest on a busy box.
  const uint64_t writes = std::max<uint64_t>(100, Iterations() / 400);
  std::atomic<uint64_t> reports{0};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> errors{0};

  std::thread sweeper([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      d.SweepDirty(kRegion, kRegion + k2M, [&](DmaAddr iova, uint64_t) {
        if (iova == target) reports.fetch_add(1);
      });
    }
  });
  std::vector<std::thread> churn;
  for (int t = 0; t < 1; ++t) {
    churn.emplace_back([&, t] {
      uint64_t i = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const uint64_t iova = kRegion + (200 + t * 100 + (i++ % 100)) * k4K;
        if (!d.Map(iova, iova + kPhysOffset, k4K, kProtRead | kProtWrite).ok()) errors++;
        if (!d.Translate(iova, true).ok()) errors++;  // dirties the neighbour too
        if (!d.Unmap(iova, k4K).ok()) errors++;
      }
    });
  }
  for (uint64_t i = 0; i < writes; ++i) {
    ASSERT_TRUE(d.Translate(target + 64, true).ok());
    while (reports.load() < i + 1) std::this_thread::yield();
    ASSERT_EQ(reports.load(), i + 1);
  }
  stop.store(true);
  sweeper.join();
  for (auto& t : churn) t.join();
  d.SweepDirty(kRegion, kRegion + k2M, [&](DmaAddr iova, uint64_t) {
    if (iova == target) reports.fetch_add(1);
  });
  EXPECT_EQ(reports.load(), writes);
  EXPECT_EQ(errors.load(), 0u);
}

// A Map that fails (ALREADY_EXISTS) leaves nothing mapped, but its fast path writes leaves before
// it finds the conflict and takes them back. A device read that walked one of those transient
// leaves fills the IOTLB model; without an invalidation that translation outlives the failed map,
// and a later mapping of the same IOVA would be served the old physical address (strict mode too).
TEST(IotlbConcurrency, FailedMapLeavesNoTranslationBehind) {
  DomainConfig c;
  c.model_iotlb = true;
  absl::StatusOr<std::unique_ptr<IommuDomain>> created = IommuDomain::Create(c);
  ASSERT_TRUE(created.ok());
  IommuDomain& d = **created;
  const uint64_t base = 64 * k1G;
  // Page 8 is mapped; the failing maps cover pages 0..8 (8 transient leaves, then the conflict).
  ASSERT_TRUE(d.Map(base + 8 * k4K, 0x5000'0000, k4K, kRW).ok());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ghost_reads{0};
  std::thread device([&] {
    uint64_t i = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      if (d.Translate(base + (i++ % 8) * k4K, false).ok()) ghost_reads.fetch_add(1);
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (uint64_t i = 0;
       ghost_reads.load() < 50 && (i % 1024 != 0 || std::chrono::steady_clock::now() < deadline);
       ++i) {
    absl::Status s = d.Map(base, 0x1000'0000, 9 * k4K, kRW);
    ASSERT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  }
  stop.store(true);
  device.join();
  std::printf("device reads that found a translation: %llu\n",
              static_cast<unsigned long long>(ghost_reads.load()));
  for (uint64_t p = 0; p < 8; ++p) {
    EXPECT_FALSE(d.Translate(base + p * k4K, false).ok()) << "page " << p;
    ASSERT_TRUE(d.Map(base + p * k4K, 0x2000'0000 + p * k4K, k4K, kRW).ok());
    absl::StatusOr<PhysAddr> pa = d.Translate(base + p * k4K, false);
    ASSERT_TRUE(pa.ok());
    EXPECT_EQ(*pa, 0x2000'0000 + p * k4K) << "page " << p;
  }
}

}  // namespace
}  // namespace pagepool::dma
