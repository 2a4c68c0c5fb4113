// File: tests/pool/page_pool_frag_race_test.cc
//
// Fragments of one page put back from several threads at once: every thread puts every fragment
// of the page (so most puts are beyond the page's references), and exactly one put must drop the
// last reference and recycle or release the page; the others are refused and counted. And the same
// while the pool is destroyed and the device unbound (XARRAY and SCAN): every mapping torn down
// exactly once, zero checker violations, every frame free at the end.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "dma/device.h"
#include "gtest/gtest.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/pool/frag_fixture.h"
#include "tests/support/pool_fixtures.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

using ::pagepool::testing::kMiB;

constexpr int kThreads = 4;
constexpr int kFragsPerPage = 64;  // 64 fragments of 64 bytes fill a 4 KiB page
constexpr int kRounds = 200;

struct Counts {
  std::atomic<uint64_t> accepted{0}, refused{0}, last{0};
};

// Puts every fragment once, alternating PutFrag and ReturnFrag by thread.
void PutAll(PagePool* pool, const std::vector<PoolFrag>* frags, int thread, std::atomic<int>* go,
            Counts* counts) {
  while (go->load(std::memory_order_acquire) == 0) std::this_thread::yield();
  for (size_t i = 0; i < frags->size(); ++i) {
    const FragHandle& h = (*frags)[(i + size_t(thread) * 16) % frags->size()].handle;
    absl::StatusOr<FragPutResult> r =
        (thread % 2 == 0) ? pool->PutFrag(h, /*napi_local=*/false) : pool->ReturnFrag(h);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
      counts->refused.fetch_add(1);
      continue;
    }
    counts->accepted.fetch_add(1);
    if (r->refs_left == 0) counts->last.fetch_add(1);
  }
}

// Allocates 64-byte fragments until one lands on a new page (the drain), puts that one back at
// once, and returns the fragments of the drained page: it holds exactly one reference for each.
// The first call fills a fresh page (64 fragments); later ones the rest of the page the previous
// call's put-back fragment started (63).
std::vector<PoolFrag> FillAndDrain(PagePool& pool) {
  std::vector<PoolFrag> frags;
  for (int i = 0; i <= kFragsPerPage; ++i) {
    absl::StatusOr<PoolFrag> f = pool.AllocFrag(64);
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) break;
    if (!frags.empty() && f->handle.page != frags[0].handle.page) {
      EXPECT_TRUE(pool.PutFrag(f->handle, /*napi_local=*/true).ok());
      break;
    }
    frags.push_back(*f);
  }
  return frags;
}

class PagePoolFragRaceTest : public testing::FragPoolTest {};

TEST_P(PagePoolFragRaceTest, ConcurrentPutsOfOnePageRecycleItOnce) {
  auto pool = MakePool();
  uint64_t refused = 0;
  for (int round = 0; round < kRounds; ++round) {
    const std::vector<PoolFrag> frags = FillAndDrain(*pool);
    ASSERT_EQ(frags.size(), size_t(round == 0 ? kFragsPerPage : kFragsPerPage - 1));
    ASSERT_EQ(pool->PpRefCount(frags[0].handle.page.frame).pp_ref_count, uint32_t(frags.size()));
    const PagePoolInfo before = pool->info();
    Counts counts;
    std::atomic<int> go{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back(PutAll, pool.get(), &frags, t, &go, &counts);
    }
    go.store(1, std::memory_order_release);
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(counts.accepted.load(), frags.size());
    EXPECT_EQ(counts.refused.load(), frags.size() * (kThreads - 1));
    ASSERT_EQ(counts.last.load(), 1u) << "round " << round;
    const PagePoolInfo after = pool->info();
    // The page went back exactly once: into the ring, or released by a Return.
    EXPECT_EQ(
        (after.stats.recycle_ring - before.stats.recycle_ring) + (before.inflight - after.inflight),
        1u);
    EXPECT_EQ(after.frag_pages, 1u);  // the current frag page
    refused += counts.refused.load();
    EXPECT_EQ(after.frag_put_refused, refused);
  }
  ASSERT_TRUE(nic_->Unbind().ok());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
}

TEST_P(PagePoolFragRaceTest, ConcurrentPutsDuringDestroyAndUnbind) {
  const DestroyStrategy strategy = GetParam();
  for (int round = 0; round < kRounds / 4; ++round) {
    auto pool = MakePool();
    const std::vector<PoolFrag> frags = FillAndDrain(*pool);
    ASSERT_EQ(frags.size(), size_t(kFragsPerPage));  // a fresh pool: a fresh page
    Counts counts;
    std::atomic<int> go{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back(PutAll, pool.get(), &frags, t, &go, &counts);
    }
    go.store(1, std::memory_order_release);
    absl::StatusOr<UnbindResult> u = nic_->Unbind();
    for (std::thread& t : threads) t.join();
    ASSERT_TRUE(u.ok()) << u.status();
    EXPECT_EQ(counts.accepted.load(), frags.size());
    ASSERT_EQ(counts.last.load(), 1u) << "round " << round;
    EXPECT_EQ(pool->inflight(), 0);
    EXPECT_EQ(pool->info().frag_pages, 0u);
    const dma::CheckerCounters v = nic_->device().violations();
    if (strategy != DestroyStrategy::kNone) {
      EXPECT_EQ(v.Total(), 0u) << testing::ViolationSummary(v);
      EXPECT_EQ(nic_->device().unmap_calls(), nic_->device().map_calls());
    }
    pool.reset();
    nic_.reset();
    EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1) << "round " << round;
    const absl::Status s = CreateNic(64 * kMiB, 1, dma::IommuMode::kStrict);
    ASSERT_TRUE(s.ok()) << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Strategies, PagePoolFragRaceTest,
                         ::testing::Values(DestroyStrategy::kXarray, DestroyStrategy::kScan,
                                           DestroyStrategy::kNone),
                         [](const ::testing::TestParamInfo<DestroyStrategy>& info) {
                           return std::string(DestroyStrategyName(info.param));
                         });

}  // namespace
}  // namespace pagepool::pool
