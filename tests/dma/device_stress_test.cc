// File: tests/dma/device_stress_test.cc
//
// Device under concurrency: threads map, sync and unmap while another thread unbinds, repeated many
// times in every mode. Whatever the interleaving, no mapping may escape the teardown: every map
// that succeeded was either unmapped by its thread or counted live_at_unbind, and the domain and
// IOVA space end empty. Label: concurrency (run under TSan).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dma/device.h"
#include "dma/iommu_domain.h"
#include "dma/iova_allocator.h"
#include "gtest/gtest.h"

namespace pagepool::dma {
namespace {

struct ThreadTally {
  uint64_t maps = 0;
  uint64_t unmaps = 0;
  uint64_t refused = 0;
};

void RunUnbindRace(IommuMode mode, bool free_empty_tables, int rounds, int threads) {
  uint64_t total_live_at_unbind = 0;
  uint64_t total_maps = 0;
  for (int round = 0; round < rounds; ++round) {
    DeviceConfig c;
    c.name = "race";
    c.mode = mode;
    c.free_empty_tables = free_empty_tables;
    auto made = Device::Create(c);
    ASSERT_TRUE(made.ok()) << made.status();
    std::unique_ptr<Device> dev = *std::move(made);

    std::atomic<int> started{0};
    std::vector<ThreadTally> tally(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        std::mt19937_64 rng(round * 131 + t);
        std::vector<std::pair<DmaAddr, uint64_t>> mine;
        uint64_t seq = 0;  // distinct phys per map: passthrough bus addresses never repeat
        ThreadTally& my = tally[t];
        started.fetch_add(1);
        // Run until the device refuses us a few times (it is unbound), with a cap.
        for (int i = 0; i < 200000 && my.refused < 3; ++i) {
          if (mine.size() < 64 && (mine.empty() || rng() % 3 != 0)) {
            const uint64_t size = (rng() % 4 == 0) ? 3 * kPageSize : kPageSize;
            const PhysAddr phys = (uint64_t(t) << 32) + (seq++) * 4 * kPageSize;
            auto a = dev->MapPage(phys, size, DmaDirection::kFromDevice);
            if (a.ok()) {
              ++my.maps;
              mine.emplace_back(*a, size);
            } else {
              ASSERT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition) << a.status();
              ++my.refused;
            }
          } else {
            const size_t k = rng() % mine.size();
            auto [addr, size] = mine[k];
            absl::Status ss = dev->SyncForCpu(addr, 0, size, DmaDirection::kFromDevice);
            if (!ss.ok()) {
              ASSERT_EQ(ss.code(), absl::StatusCode::kFailedPrecondition) << ss;
            }
            absl::Status s = dev->UnmapPage(addr, size, DmaDirection::kFromDevice);
            if (s.ok()) {
              ++my.unmaps;
              mine[k] = mine.back();
              mine.pop_back();
            } else {
              ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
              ++my.refused;
            }
          }
        }
      });
    }
    while (started.load() < threads) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::microseconds(200 + (round % 7) * 300));
    ASSERT_TRUE(dev->Unbind().ok());
    for (auto& w : workers) w.join();

    uint64_t maps = 0, unmaps = 0;
    for (const auto& my : tally) {
      maps += my.maps;
      unmaps += my.unmaps;
    }
    CheckerCounters v = dev->violations();
    total_live_at_unbind += v.live_at_unbind;
    total_maps += maps;
    EXPECT_EQ(dev->live_mappings(), 0u);
    EXPECT_EQ(v.live_at_unbind, maps - unmaps) << "a mapping escaped the unbind teardown";
    EXPECT_EQ(
        v.double_unmap + v.unknown_unmap + v.size_mismatch + v.direction_mismatch + v.sync_unknown,
        0u);
    EXPECT_EQ(dev->map_calls(), maps);
    EXPECT_EQ(dev->unmap_calls(), unmaps);
    if (dev->domain() != nullptr) {
      dev->domain()->Quiesce();
      DomainStats st = dev->domain_stats();
      EXPECT_EQ(st.mapped_pages, 0u);
      if (free_empty_tables) {
        EXPECT_EQ(st.table_pages, 1u);
      }
      dev->domain()->iova()->FlushCaches();
      IovaStats is = dev->domain()->iova()->stats();
      EXPECT_EQ(is.allocated_pages, 0u);
      EXPECT_EQ(is.cached_pages, 0u);
      EXPECT_EQ(is.invalid_frees, 0u);
    }
    if (::testing::Test::HasFailure()) return;
  }
  // The race was really exercised: threads were mapping when Unbind came.
  EXPECT_GT(total_maps, 0u);
  EXPECT_GT(total_live_at_unbind, 0u);
  std::printf("%s: %d rounds, %llu maps, %llu live at unbind\n",
              std::string(IommuModeName(mode)).c_str(), rounds,
              static_cast<unsigned long long>(total_maps),
              static_cast<unsigned long long>(total_live_at_unbind));
}

#if defined(PAGEPOOL_TSAN) || defined(PAGEPOOL_ASAN)
constexpr int kRounds = 12;
#else
constexpr int kRounds = 40;
#endif

TEST(DeviceConcurrencyTest, UnbindRacesMapUnmapStrict) {
  RunUnbindRace(IommuMode::kStrict, true, kRounds, 4);
}

TEST(DeviceConcurrencyTest, UnbindRacesMapUnmapLazy) {
  RunUnbindRace(IommuMode::kLazy, true, kRounds, 4);
}

TEST(DeviceConcurrencyTest, UnbindRacesMapUnmapPassthrough) {
  RunUnbindRace(IommuMode::kPassthrough, true, kRounds, 4);
}

TEST(DeviceConcurrencyTest, UnbindRacesMapUnmapStrictKeepTables) {
  RunUnbindRace(IommuMode::kStrict, false, kRounds / 2, 5);
}

TEST(DeviceConcurrencyTest, ConcurrentUnbindsExactlyOneWins) {
  for (int round = 0; round < 20; ++round) {
    DeviceConfig c;
    c.name = "twice";
    auto dev = Device::Create(c);
    ASSERT_TRUE(dev.ok());
    for (int i = 0; i < 10; ++i)
      ASSERT_TRUE((*dev)->MapPage(0x1000 * (i + 1), 4096, DmaDirection::kToDevice).ok());
    std::atomic<int> ok{0}, refused{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) {
      ts.emplace_back([&] {
        absl::Status s = (*dev)->Unbind();
        (s.ok() ? ok : refused).fetch_add(1);
      });
    }
    for (auto& t : ts) t.join();
    EXPECT_EQ(ok.load(), 1);
    EXPECT_EQ(refused.load(), 3);
    EXPECT_EQ((*dev)->violations().call_after_unbind, 3u);
    EXPECT_EQ((*dev)->violations().live_at_unbind, 10u);
    EXPECT_EQ((*dev)->domain_stats().mapped_pages, 0u);
  }
}

}  // namespace
}  // namespace pagepool::dma
