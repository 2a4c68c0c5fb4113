// File: tests/dma/io_pgtable_stress_test.cc
//
// Concurrency stress of the lock-free I/O page table where tables at every level (not only 4 KiB
// leaf tables) keep emptying and dying while neighbours install into their parents, with blocks
// over (possibly empty) tables and block-sized unmaps of tables in the same parents, and lockless
// walkers and a dirty sweeper running throughout. All widths, both table policies.
// Label: concurrency (run under TSan).
//
// PAGEPOOL_STRESS_ITERS overrides the iterations per mapper thread.
#include <atomic>
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

constexpr uint64_t kPhysOffset = uint64_t{1} << 40;

uint64_t StressIterations() {
  return ScaledCount("PAGEPOOL_STRESS_ITERS", 100'000, 40'000, 20'000);
}

struct Param {
  unsigned width;
  bool free_tables;
  IommuMode mode;
};

class IoPgtableCascadeStress : public ::testing::TestWithParam<Param> {};

// Mappers own pages p % kMappers == t. The pages they pick spread over 2 regions of the top-level
// entry below the root, 2 x 1 GiB and 2 x 2 MiB below that, so level-0, level-1 and level-2 tables
// all empty and die (cascading) while another mapper installs a sibling next to them. A block
// thread maps 2 MiB and 1 GiB ranges in the same parents (blocks over tables left empty when the
// policy is off, block-sized unmaps of tables made of 4 KiB leaves).
TEST_P(IoPgtableCascadeStress, EveryLevelDiesWhileNeighboursInstall) {
  const Param p = GetParam();
  DomainConfig c;
  c.address_width = p.width;
  c.free_empty_tables = p.free_tables;
  c.mode = p.mode;
  absl::StatusOr<std::unique_ptr<IommuDomain>> created = IommuDomain::Create(c);
  ASSERT_TRUE(created.ok());
  IommuDomain& d = **created;
  const unsigned levels = d.levels();
  // Span of one root entry; 39-bit: the root itself holds the 1 GiB entries, use one region at 0.
  const uint64_t upper_span = uint64_t{1} << (12 + 9 * (levels - 1));
  const uint64_t base = levels == 3 ? 0 : upper_span;
  constexpr int kMappers = 3;
  const uint64_t iters = StressIterations();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> errors{0};
  auto fail = [&](const char* what, uint64_t iova, const absl::Status& s) {
    if (errors.fetch_add(1) < 10) {
      ADD_FAILURE() << what << " iova 0x" << std::hex << iova << " " << s;
    }
  };
  auto addr = [&](uint64_t upper, uint64_t g, uint64_t m, uint64_t page) {
    // upper: root entry (0/1 above `base`), g: 1 GiB index, m: 2 MiB index (the block thread
    // uses m 4..7, and g 2..3 for 1 GiB).
    return base + upper * upper_span + g * k1G + m * k2M + page * k4K;
  };
  const uint64_t uppers = levels == 3 ? 1 : 2;  // 39-bit: level 2 is the root itself

  std::vector<std::thread> threads;
  for (int t = 0; t < kMappers; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(91 + t);
      for (uint64_t i = 0; i < iters && errors.load(std::memory_order_relaxed) == 0; ++i) {
        const uint64_t page = (rng() % 8) * kMappers + t;
        const uint64_t iova = addr(rng() % uppers, rng() % 2, rng() % 2, page);
        absl::Status s = d.Map(iova, iova + kPhysOffset, k4K, kRW);
        if (!s.ok()) {
          fail("map", iova, s);
          break;
        }
        absl::StatusOr<PhysAddr> pa = d.Translate(iova + 8, (i & 1) != 0);
        if (!pa.ok() || *pa != iova + kPhysOffset + 8) fail("lost mapping", iova, pa.status());
        s = d.Unmap(iova, k4K);
        if (!s.ok()) fail("unmap", iova, s);
        if (d.Translate(iova, false).ok()) fail("mapped after unmap", iova, absl::OkStatus());
      }
    });
  }
  // Block thread: 2 MiB blocks and 2 MiB of 4 KiB leaves in the mappers' level-1 tables, and a
  // 1 GiB block (or 1 GiB of 2 MiB blocks) in their level-2 table.
  threads.emplace_back([&] {
    std::mt19937_64 rng(7);
    for (uint64_t i = 0; i < iters / 4 && errors.load(std::memory_order_relaxed) == 0; ++i) {
      const uint64_t upper = rng() % uppers;
      uint64_t iova;
      uint64_t size;
      uint64_t phys_extra = 0;
      switch (rng() % 4) {
        case 0:
          iova = addr(upper, rng() % 2, 4 + rng() % 4, 0);
          size = k2M;
          break;
        case 1:
          iova = addr(upper, rng() % 2, 4 + rng() % 4, 0);
          size = k2M;
          phys_extra = k4K;  // 512 leaves: unmapped whole (block-sized unmap finds a table)
          break;
        case 2:
          iova = addr(upper, 2 + rng() % 2, 0, 0);
          size = k1G;
          break;
        default:
          iova = addr(upper, 2 + rng() % 2, 0, 0);
          size = k1G;
          phys_extra = k2M;  // 512 2 MiB blocks in a level-1 table, unmapped whole
          break;
      }
      absl::Status s = d.Map(iova, iova + kPhysOffset + phys_extra, size, kRW);
      if (!s.ok()) {
        fail("block map", iova, s);
        break;
      }
      absl::StatusOr<PhysAddr> pa = d.Translate(iova + size - 8, true);
      if (!pa.ok() || *pa != iova + kPhysOffset + phys_extra + size - 8) {
        fail("lost block", iova, pa.status());
      }
      // Sometimes leave a table behind (policy off) by unmapping piecewise.
      if (!p.free_tables && size == k2M && phys_extra != 0 && rng() % 2 == 0) {
        for (uint64_t off = 0; off < size; off += k2M / 4) {
          s = d.Unmap(iova + off, k2M / 4);
          if (!s.ok()) fail("piecewise unmap", iova + off, s);
        }
      } else {
        s = d.Unmap(iova, size);
        if (!s.ok()) fail("block unmap", iova, s);
      }
    }
  });
  // Walkers.
  std::vector<std::thread> walkers;
  for (int w = 0; w < 2; ++w) {
    walkers.emplace_back([&, w] {
      std::mt19937_64 rng(300 + w);
      while (!stop.load(std::memory_order_relaxed)) {
        if (w == 1) {
          d.SweepDirty(base, base + uppers * upper_span, [&](DmaAddr, uint64_t) {});
          d.ForEachPresent(base, base + uppers * upper_span, [&](const PresentEntry& e) {
            const uint64_t delta = e.phys - e.iova;
            if (delta != kPhysOffset && delta != kPhysOffset + k4K && delta != kPhysOffset + k2M) {
              fail("dump", e.iova, absl::OkStatus());
            }
            return true;
          });
          continue;
        }
        const uint64_t iova =
            addr(rng() % uppers, rng() % 4, rng() % 8, rng() % 512) + rng() % 4096;
        absl::StatusOr<PhysAddr> pa = d.Translate(iova, (rng() & 1) != 0);
        if (pa.ok()) {
          const uint64_t delta = *pa - iova;
          if (delta != kPhysOffset && delta != kPhysOffset + k4K && delta != kPhysOffset + k2M) {
            fail("walker", iova, absl::OkStatus());
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  stop.store(true);
  for (auto& t : walkers) t.join();
  ASSERT_EQ(errors.load(), 0u);

  d.FlushQueues();
  d.Quiesce();
  const DomainStats s = d.stats();
  EXPECT_EQ(s.mapped_pages, 0u);
  EXPECT_EQ(s.pending_free_pages, 0u);
  EXPECT_EQ(s.tables_released, s.tables_freed);
  EXPECT_EQ(s.tables_allocated, s.tables_freed + s.table_pages);
  if (p.free_tables) {
    EXPECT_EQ(s.table_pages, 1u);
  }
  EXPECT_LE(s.table_pages, s.peak_table_pages);
  // Everything left (policy off) is empty tables.
  uint64_t present = 0;
  d.ForEachPresent(0, ~uint64_t{0}, [&](const PresentEntry&) {
    ++present;
    return true;
  });
  EXPECT_EQ(present, 0u);
  std::printf(
      "tables freed %llu, install races lost %llu, block over table %llu, "
      "block unmap table %llu, peak %llu\n",
      (unsigned long long)s.tables_freed, (unsigned long long)s.install_races_lost,
      (unsigned long long)s.block_over_table, (unsigned long long)s.block_unmap_table,
      (unsigned long long)s.peak_table_pages);
}

INSTANTIATE_TEST_SUITE_P(Widths, IoPgtableCascadeStress,
                         ::testing::Values(Param{48, true, IommuMode::kStrict},
                                           Param{39, true, IommuMode::kStrict},
                                           Param{57, true, IommuMode::kLazy},
                                           Param{48, false, IommuMode::kStrict},
                                           Param{39, false, IommuMode::kLazy}),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           // Appended piece by piece: "w" + std::string trips GCC 12's -Wrestrict
                           // false positive.
                           std::string name = "w";
                           name += std::to_string(info.param.width);
                           name += info.param.free_tables ? "_free" : "_keep";
                           name += "_";
                           name += IommuModeName(info.param.mode);
                           return name;
                         });

}  // namespace
}  // namespace pagepool::dma
