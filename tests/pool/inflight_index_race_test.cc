// File: tests/pool/inflight_index_race_test.cc
//
// InflightIndex under concurrency: lock-free readers (Load, ForEach, ForEachFrom in pieces) while
// writers allocate and remove (nodes grow, shrink and are freed after grace periods), and racing
// CompareExchange calls on the same entries, of which exactly one may win.
#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "pool/inflight_index.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

std::vector<PageRecord> g_records(1 << 16);

TEST(InflightIndexRaceTest, ReadersNeverSeeGarbageWhileTreeChanges) {
  InflightIndex index;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> seen{0};
  auto valid = [](PageRecord* p) {
    return p == nullptr || (p >= &g_records[0] && p < &g_records[0] + g_records.size());
  };
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (!stop.load(std::memory_order_acquire)) {
        uint32_t last = 0;
        index.ForEach([&](uint32_t id, PageRecord* page) {
          EXPECT_GT(id, last);
          EXPECT_TRUE(valid(page));
          last = id;
          seen.fetch_add(1, std::memory_order_relaxed);
          return true;
        });
        for (uint32_t id = 1; id < 5000; id += 97) EXPECT_TRUE(valid(index.Load(id)));
        std::this_thread::yield();
      }
    });
  }
  const int rounds = int(testing::EnvOr("POOL_INDEX_RACE_ROUNDS", 40));
  for (int round = 0; round < rounds; ++round) {
    std::vector<uint32_t> ids;
    for (int i = 0; i < 4500; ++i) {
      absl::StatusOr<uint32_t> id = index.Alloc(&g_records[i]);
      ASSERT_TRUE(id.ok());
      ids.push_back(*id);
    }
    for (size_t i = 0; i < ids.size(); ++i)
      ASSERT_TRUE(index.CompareExchange(ids[i], &g_records[i]));
  }
  stop.store(true, std::memory_order_release);
  for (std::thread& t : readers) t.join();
  EXPECT_TRUE(index.empty());
  EXPECT_LE(index.stats().nodes, 4u);
}

// A walk in pieces (each its own read section) while a writer grows the tree past a level and
// shrinks it back: ids keep increasing across pieces, and every entry present for the whole walk
// is seen exactly once.
TEST(InflightIndexRaceTest, WalkInPiecesSeesStableEntriesOnceWhileTreeChanges) {
  constexpr uint32_t kStable = 2000;
  InflightIndex index;
  for (uint32_t i = 0; i < kStable; ++i) ASSERT_EQ(*index.Alloc(&g_records[i]), i + 1);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop.load(std::memory_order_acquire)) {
      std::vector<uint32_t> ids;
      for (uint32_t i = kStable; i < kStable + 3000; ++i)
        ids.push_back(*index.Alloc(&g_records[i]));
      for (uint32_t id : ids) index.Erase(id);
    }
  });
  const int walks = int(testing::EnvOr("POOL_INDEX_RACE_ROUNDS", 40)) * 5;
  for (int walk = 0; walk < walks; ++walk) {
    std::vector<int> seen(kStable + 1, 0);
    uint32_t last = 0;
    uint32_t next = 1;
    do {
      next = index.ForEachFrom(next, 97, [&](uint32_t id, PageRecord* page) {
        EXPECT_GT(id, last);
        last = id;
        EXPECT_TRUE(page >= &g_records[0] && page < &g_records[0] + g_records.size());
        if (id <= kStable) {
          EXPECT_EQ(page, &g_records[id - 1]);
          ++seen[id];
        }
        return true;
      });
      ASSERT_TRUE(next == 0 || next > last);
    } while (next != 0);
    for (uint32_t id = 1; id <= kStable; ++id)
      ASSERT_EQ(seen[id], 1) << "walk " << walk << " id " << id;
  }
  stop.store(true, std::memory_order_release);
  writer.join();
  EXPECT_EQ(index.size(), kStable);
}

TEST(InflightIndexRaceTest, CompareExchangeHasExactlyOneWinner) {
  constexpr int kEntries = 20000;
  constexpr int kThreads = 4;
  InflightIndex index;
  std::vector<uint32_t> ids(kEntries);
  for (int i = 0; i < kEntries; ++i) ids[i] = *index.Alloc(&g_records[i]);
  std::atomic<int> go{0};
  std::vector<std::atomic<int>> wins(kEntries);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (go.load(std::memory_order_acquire) == 0) std::this_thread::yield();
      if (t == 0) {
        // The destroy path: walk and claim.
        index.ForEach([&](uint32_t id, PageRecord* page) {
          if (index.CompareExchange(id, page)) wins[page - &g_records[0]].fetch_add(1);
          return true;
        });
      } else {
        // Return paths: claim by id, in different orders.
        for (int k = 0; k < kEntries; ++k) {
          const int i = t % 2 == 0 ? k : kEntries - 1 - k;
          if (index.CompareExchange(ids[i], &g_records[i])) wins[i].fetch_add(1);
        }
      }
    });
  }
  go.store(1, std::memory_order_release);
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kEntries; ++i) ASSERT_EQ(wins[i].load(), 1) << i;
  EXPECT_TRUE(index.empty());
}

}  // namespace
}  // namespace pagepool::pool
