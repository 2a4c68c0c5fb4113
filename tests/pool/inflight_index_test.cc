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

// The entries of `model` at or above `first`, at most `max` (0: all), and where to resume: the id
// of the next entry, or 0 when none is left (ForEachFrom's contract when fn never stops it).
std::vector<uint32_t> ReferencePiece(const std::map<uint32_t, PageRecord*>& model, uint32_t first,
                                     size_t max, uint32_t* resume) {
  std::vector<uint32_t> ids;
  auto it = model.lower_bound(first);
  for (; it != model.end() && (max == 0 || ids.size() < max); ++it) ids.push_back(it->first);
  *resume = it == model.end() ? 0 : it->first;
  return ids;
}

// Ids 1..5000 (three levels) with holes: every third id, a whole leaf (ids 640..703), a whole
// level-1 subtree (ids 4096..4999, all but its first leaf), and the last id.
void FillWithHoles(InflightIndex* index, std::map<uint32_t, PageRecord*>* model) {
  for (uint32_t i = 1; i <= 5000; ++i) ASSERT_TRUE(index->Alloc(Rec(i)).ok());
  for (uint32_t i = 1; i <= 5000; ++i) (*model)[i] = Rec(i);
  auto erase = [&](uint32_t id) {
    if (model->erase(id) != 0) {
      ASSERT_EQ(index->Erase(id), Rec(id));
    }
  };
  for (uint32_t i = 2; i <= 5000; i += 3) erase(i);
  for (uint32_t i = 640; i < 704; ++i) erase(i);
  for (uint32_t i = 4160; i < 5000; ++i) erase(i);
  erase(5000);
  ASSERT_EQ(index->size(), model->size());
}

TEST(InflightIndexTest, ForEachFromMatchesAReferenceFromEveryStart) {
  InflightIndex index;
  std::map<uint32_t, PageRecord*> model;
  FillWithHoles(&index, &model);
  for (size_t max :
       {size_t{1}, size_t{2}, size_t{63}, size_t{64}, size_t{65}, size_t{4096}, size_t{0}}) {
    // Every start point (and some past the last id) for short pieces; long walks from every 11th.
    for (uint32_t first = 0; first <= 5100; first += (max == 0 || max > 1000 ? 11 : 1)) {
      std::vector<uint32_t> got;
      const uint32_t resume = index.ForEachFrom(first, max, [&](uint32_t id, PageRecord* page) {
        EXPECT_EQ(page, Rec(id));
        got.push_back(id);
        return true;
      });
      uint32_t want_resume = 0;
      const std::vector<uint32_t> want = ReferencePiece(model, first, max, &want_resume);
      ASSERT_EQ(got, want) << "first " << first << " max " << max;
      ASSERT_EQ(resume, want_resume) << "first " << first << " max " << max;
    }
  }
  // Far past the tree's reach.
  EXPECT_EQ(index.ForEachFrom(1u << 20, 0, [](uint32_t, PageRecord*) { return true; }), 0u);
  EXPECT_EQ(index.ForEachFrom(0xffffffffu, 1, [](uint32_t, PageRecord*) { return true; }), 0u);
}

TEST(InflightIndexTest, ForEachFromInPiecesSeesEveryEntryOnceInOrder) {
  InflightIndex index;
  std::map<uint32_t, PageRecord*> model;
  FillWithHoles(&index, &model);
  std::vector<uint32_t> all;
  for (const auto& [id, page] : model) all.push_back(id);
  for (size_t piece : {size_t{1}, size_t{3}, size_t{64}, size_t{100}, size_t{1000}}) {
    std::vector<uint32_t> got;
    size_t calls = 0;
    uint32_t next = 1;
    do {
      size_t n = 0;
      next = index.ForEachFrom(next, piece, [&](uint32_t id, PageRecord*) {
        got.push_back(id);
        ++n;
        return true;
      });
      ++calls;
      ASSERT_LE(n, piece);
      if (next != 0) {
        ASSERT_EQ(n, piece);  // only the last piece may be short
      }
    } while (next != 0);
    EXPECT_EQ(got, all) << "piece " << piece;
    EXPECT_EQ(calls, (all.size() + piece - 1) / piece) << "piece " << piece;
  }
}

TEST(InflightIndexTest, ForEachFromStopsWhereFnSaysAndResumesAfter) {
  InflightIndex index;
  for (uint32_t i = 1; i <= 200; ++i) ASSERT_TRUE(index.Alloc(Rec(i)).ok());
  ASSERT_EQ(index.Erase(100), Rec(100));
  uint32_t last = 0;
  const uint32_t resume = index.ForEachFrom(90, 0, [&](uint32_t id, PageRecord*) {
    last = id;
    return id < 99;
  });
  EXPECT_EQ(last, 99u);
  EXPECT_EQ(resume, 100u);  // one past where fn stopped (100 itself is free)
  std::vector<uint32_t> rest;
  EXPECT_EQ(index.ForEachFrom(resume, 2,
                              [&](uint32_t id, PageRecord*) {
                                rest.push_back(id);
                                return true;
                              }),
            103u);
  EXPECT_EQ(rest, (std::vector<uint32_t>{101, 102}));
}

TEST(InflightIndexTest, ForEachFromOnAnEmptyIndexIsDoneAtOnce) {
  InflightIndex index;
  size_t calls = 0;
  auto count = [&](uint32_t, PageRecord*) {
    ++calls;
    return true;
  };
  for (uint32_t first : {0u, 1u, 64u, 0xffffffffu}) {
    EXPECT_EQ(index.ForEachFrom(first, 1, count), 0u);
    EXPECT_EQ(index.ForEachFrom(first, 0, count), 0u);
  }
  // Emptied again (the small tree keeps its nodes): still nothing.
  for (uint32_t i = 1; i <= 100; ++i) ASSERT_TRUE(index.Alloc(Rec(i)).ok());
  for (uint32_t i = 1; i <= 100; ++i) ASSERT_EQ(index.Erase(i), Rec(i));
  EXPECT_EQ(index.ForEachFrom(1, 1, count), 0u);
  EXPECT_EQ(calls, 0u);
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
