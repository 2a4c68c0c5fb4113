// File: tests/pool/inflight_index_test.cc
#include "pool/inflight_index.h"

#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

// Distinct fake record pointers (the index never dereferences entries).
std::vector<PageRecord> g_records(1 << 18);
PageRecord* Rec(size_t i) { return &g_records[i]; }

TEST(InflightIndexTest, AllocatesLowestFreeFromOne) {
  InflightIndex index;
  EXPECT_TRUE(index.empty());
  for (uint32_t i = 1; i <= 200; ++i) {
    absl::StatusOr<uint32_t> id = index.Alloc(Rec(i));
    ASSERT_TRUE(id.ok());
    EXPECT_EQ(*id, i);
  }
  EXPECT_EQ(index.size(), 200u);
  EXPECT_EQ(index.Load(0), nullptr);
  EXPECT_EQ(index.Load(7), Rec(7));
  EXPECT_EQ(index.Load(201), nullptr);
  EXPECT_EQ(index.Load(0xffffffffu), nullptr);
  EXPECT_EQ(index.Erase(5), Rec(5));
  EXPECT_EQ(index.Erase(130), Rec(130));
  EXPECT_EQ(index.Erase(5), nullptr);
  EXPECT_EQ(*index.Alloc(Rec(1000)), 5u);
  EXPECT_EQ(*index.Alloc(Rec(1001)), 130u);
  EXPECT_EQ(*index.Alloc(Rec(1002)), 201u);
}

TEST(InflightIndexTest, LimitAndExhaustion) {
  for (uint32_t limit : {1u, 10u, 63u, 64u, 100u, 4096u, 5000u}) {
    InflightIndex index(limit);
    for (uint32_t i = 1; i <= limit; ++i) {
      absl::StatusOr<uint32_t> id = index.Alloc(Rec(i));
      ASSERT_TRUE(id.ok()) << limit << " " << i;
      ASSERT_EQ(*id, i);
    }
    absl::StatusOr<uint32_t> full = index.Alloc(Rec(limit + 1));
    EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted) << limit;
    EXPECT_EQ(index.stats().alloc_failures, 1u);
    const uint32_t hole = (limit + 1) / 2;
    EXPECT_TRUE(index.CompareExchange(hole, Rec(hole)));
    EXPECT_EQ(*index.Alloc(Rec(99999)), hole);
    EXPECT_FALSE(index.Alloc(Rec(1)).ok());
  }
}

TEST(InflightIndexTest, CompareExchangeWinsOnce) {
  InflightIndex index;
  const uint32_t id = *index.Alloc(Rec(1));
  EXPECT_FALSE(index.CompareExchange(id, Rec(2)));      // wrong expected
  EXPECT_FALSE(index.CompareExchange(id + 1, Rec(1)));  // wrong id
  EXPECT_FALSE(index.CompareExchange(0, Rec(1)));
  EXPECT_FALSE(index.CompareExchange(id, Rec(1), Rec(3)));  // only -> nullptr is supported
  EXPECT_TRUE(index.CompareExchange(id, Rec(1)));
  EXPECT_FALSE(index.CompareExchange(id, Rec(1)));
  EXPECT_TRUE(index.empty());
}

TEST(InflightIndexTest, ForEachVisitsInIdOrderAndStops) {
  InflightIndex index;
  for (uint32_t i = 1; i <= 5000; ++i) ASSERT_TRUE(index.Alloc(Rec(i)).ok());
  for (uint32_t i = 1; i <= 5000; i += 3) ASSERT_EQ(index.Erase(i), Rec(i));
  std::vector<uint32_t> ids;
  index.ForEach([&](uint32_t id, PageRecord* page) {
    EXPECT_EQ(page, Rec(id));
    ids.push_back(id);
    return true;
  });
  ASSERT_EQ(ids.size(), index.size());
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_LT(ids[i - 1], ids[i]);
  size_t n = 0;
  index.ForEach([&](uint32_t, PageRecord*) { return ++n < 10; });
  EXPECT_EQ(n, 10u);
}

TEST(InflightIndexTest, ForEachMayRemoveWhileWalking) {
  InflightIndex index;
  for (uint32_t i = 1; i <= 3000; ++i) ASSERT_TRUE(index.Alloc(Rec(i)).ok());
  uint64_t removed = 0;
  index.ForEach([&](uint32_t id, PageRecord* page) {
    removed += index.CompareExchange(id, page) ? 1 : 0;
    return true;
  });
  EXPECT_EQ(removed, 3000u);
  EXPECT_TRUE(index.empty());
  EXPECT_LE(index.stats().nodes, 4u);  // a tree of <= 4 nodes keeps its empty nodes
}

TEST(InflightIndexTest, GrowsAndShrinks) {
  InflightIndex index;
  for (uint32_t i = 1; i <= 300000; ++i) ASSERT_TRUE(index.Alloc(Rec(i % g_records.size())).ok());
  EXPECT_EQ(index.stats().height, 4u);  // 64^3 = 262144 < 300001
  for (uint32_t i = 1; i <= 300000; ++i) ASSERT_NE(index.Erase(i), nullptr);
  const InflightIndexStats s = index.stats();
  EXPECT_LE(s.nodes, 4u);  // empty nodes are freed down to the small-tree cache
  EXPECT_LE(s.height, 4u);
  EXPECT_EQ(s.nodes_allocated - s.nodes_freed, s.nodes);
  EXPECT_GT(s.nodes_freed, 4000u);
}

TEST(InflightIndexTest, MemoryPerPageAt128K) {
  InflightIndex index;
  for (uint32_t i = 1; i <= 131072; ++i) ASSERT_TRUE(index.Alloc(Rec(i)).ok());
  const InflightIndexStats s = index.stats();
  EXPECT_EQ(s.entries, 131072u);
  EXPECT_EQ(s.node_bytes, index.memory_bytes());
  EXPECT_EQ(s.node_bytes, s.nodes * InflightIndex::NodeSize());
  EXPECT_LE(InflightIndex::NodeSize(), 576u);
  EXPECT_LE(s.bytes_per_entry, 10.0) << s.nodes << " nodes";
  RecordProperty("bytes_per_entry", std::to_string(s.bytes_per_entry));
}

TEST(InflightIndexTest, RandomOpsMatchAModel) {
  InflightIndex index(3000);
  std::map<uint32_t, PageRecord*> model;
  std::mt19937 rng(7);
  for (int step = 0; step < 100000; ++step) {
    if (model.empty() || rng() % 2 == 0) {
      PageRecord* r = Rec(rng() % 1000 + 1);
      absl::StatusOr<uint32_t> id = index.Alloc(r);
      uint32_t expect = 1;
      while (model.count(expect)) ++expect;
      if (expect > 3000) {
        ASSERT_FALSE(id.ok());
        continue;
      }
      ASSERT_TRUE(id.ok());
      ASSERT_EQ(*id, expect);
      model[*id] = r;
    } else {
      auto it = model.begin();
      std::advance(it, rng() % model.size());
      ASSERT_EQ(index.Load(it->first), it->second);
      ASSERT_TRUE(index.CompareExchange(it->first, it->second));
      model.erase(it);
    }
  }
  EXPECT_EQ(index.size(), model.size());
}

}  // namespace
}  // namespace pagepool::pool
