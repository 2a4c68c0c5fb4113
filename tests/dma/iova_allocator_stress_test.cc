// File: tests/dma/iova_allocator_stress_test.cc
//
// IovaAllocator under many threads: live ranges never overlap, magazines and depot stay consistent,
// and everything coalesces back once freed. Label: concurrency (run under TSan).
#include <atomic>
#include <cstdint>
#include <map>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "dma/iova_allocator.h"
#include "gtest/gtest.h"

namespace pagepool::dma {
namespace {

TEST(IovaAllocatorConcurrencyTest, ManyThreadsNoOverlap) {
  const uint64_t limit = (uint64_t{1} << 18) - 1;
  IovaAllocator a(1, limit);
  base::Mutex mu;
  std::map<uint64_t, uint64_t> live;  // shared record of live ranges: pfn -> size
  std::atomic<uint64_t> overlaps{0};
  auto claim = [&](uint64_t pfn, uint64_t size) {
    base::MutexLock l(&mu);
    auto next = live.lower_bound(pfn);
    if (next != live.end() && next->first < pfn + size) overlaps++;
    if (next != live.begin() && std::prev(next)->first + std::prev(next)->second > pfn) overlaps++;
    live.emplace(pfn, size);
  };
  auto release = [&](uint64_t pfn) {
    base::MutexLock l(&mu);
    live.erase(pfn);
  };
  constexpr int kThreads = 8;
  constexpr int kOps = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t + 1);
      std::vector<std::pair<uint64_t, uint64_t>> mine;
      for (int i = 0; i < kOps; ++i) {
        if (mine.size() < 300 && (mine.empty() || rng() % 2 == 0)) {
          const uint64_t pages = (rng() % 16 == 0) ? 1 + rng() % 200 : 1 + rng() % 4;
          auto r = a.Alloc(pages);
          if (!r.ok()) continue;
          claim(*r, IovaAllocator::RoundedPages(pages));  // exact from 32 pages on
          mine.emplace_back(*r, pages);
        } else {
          const size_t k = rng() % mine.size();
          auto [pfn, pages] = mine[k];
          mine[k] = mine.back();
          mine.pop_back();
          release(pfn);  // before Free: once freed another thread may claim it
          a.Free(pfn, pages);
        }
        if (i % 5000 == 0) a.stats();  // stats under concurrency
        if (t == 0 && i % 7000 == 0) a.FlushCaches();
      }
      for (auto [pfn, pages] : mine) {
        release(pfn);
        a.Free(pfn, pages);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(overlaps.load(), 0u);
  EXPECT_EQ(a.stats().allocated_pages, 0u);
  EXPECT_EQ(a.stats().invalid_frees, 0u);
  EXPECT_GT(a.stats().rcache_hits, 0u);
  a.FlushCaches();
  EXPECT_EQ(a.stats().cached_pages, 0u);
  auto r = a.Alloc(uint64_t{1} << 17);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, uint64_t{1} << 17);
}

}  // namespace
}  // namespace pagepool::dma
