// File: tests/pool/nic_queue_restart_race_test.cc
//
// Nic::RestartQueue racing what can happen to the old queue at the same time, round after round:
// xdp_rxq_info_unreg of its xdp_rxq (before the restart: bnxt's order; after it: mlx5's), users
// giving its pages back (returns and ring recycles from other CPUs), traffic on the new pool, and a
// driver unbind. Whatever the interleaving, the old pool is destroyed exactly once (by whichever
// call drops its last user), its pages are unmapped exactly once, and the device's checker counts
// no violation. PAGEPOOL_RESTART_RACE_ROUNDS sets the rounds (default 300).
#include <atomic>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/support/pool_fixtures.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

using ::pagepool::testing::kMiB;
using ::pagepool::testing::ViolationSummary;

constexpr size_t kHeld = 96;

int Rounds() { return static_cast<int>(testing::EnvOr("PAGEPOOL_RESTART_RACE_ROUNDS", 300)); }

std::unique_ptr<Nic> MakeNic(const std::shared_ptr<PhysMemory>& memory) {
  absl::StatusOr<std::unique_ptr<Nic>> nic =
      Nic::Create(memory, testing::MakeNicConfig("eth0", dma::IommuMode::kStrict));
  EXPECT_TRUE(nic.ok()) << nic.status();
  return nic.ok() ? *std::move(nic) : nullptr;
}

std::vector<PoolPage> Allocate(NicPool& p, size_t n) {
  std::vector<PoolPage> pages;
  base::MutexLock napi(&p.napi_mu());
  EXPECT_TRUE(p.pool().AllocateBulk(n, &pages).ok());
  return pages;
}

// Gives the pages back from another CPU: even ones returned, odd ones recycled into the ring.
void GiveBack(NicPool& p, const std::vector<PoolPage>& pages, std::atomic<int>* errors) {
  for (size_t i = 0; i < pages.size(); ++i) {
    const bool ok = i % 2 == 0 ? p.pool().Return(pages[i].handle).ok()
                               : p.pool().Recycle(pages[i].handle, /*napi_local=*/false).ok();
    if (!ok) errors->fetch_add(1);
  }
}

TEST(QueueRestartRaceTest, RestartXdpUnregAndGiveBacksDestroyTheOldPoolExactlyOnce) {
  absl::StatusOr<std::shared_ptr<PhysMemory>> memory = testing::MakeSharedMemory(64 * kMiB);
  ASSERT_TRUE(memory.ok());
  std::unique_ptr<Nic> nic = MakeNic(*memory);
  ASSERT_TRUE(nic);
  const int rounds = Rounds();
  for (int round = 0; round < rounds; ++round) {
    const DestroyStrategy strategy =
        round % 2 == 0 ? DestroyStrategy::kXarray : DestroyStrategy::kScan;
    const bool keep_old_xdp_rxq = (round / 2) % 2 == 0;
    PagePoolParams params;
    params.strategy = strategy;
    absl::StatusOr<std::shared_ptr<NicPool>> made = nic->CreateNicPool(params, /*xdp_rxq=*/true);
    ASSERT_TRUE(made.ok()) << made.status();
    std::shared_ptr<NicPool> old = *made;
    const std::vector<PoolPage> held = Allocate(*old, kHeld);

    std::atomic<int> destroys{0};
    std::atomic<int> errors{0};
    std::shared_ptr<NicPool> fresh;
    std::thread restarter([&] {
      RestartOptions options;
      options.xdp_rxq = true;
      options.keep_old_xdp_rxq = keep_old_xdp_rxq;
      absl::StatusOr<QueueRestart> r = nic->RestartQueue(*old, params, options);
      if (!r.ok()) {
        ADD_FAILURE() << r.status();
        return;
      }
      if (r->old.destroyed()) destroys.fetch_add(1);
      fresh = r->pool;
      // The new queue serves traffic while the old pool may still wait for its xdp_rxq.
      for (int i = 0; i < 4; ++i) {
        std::vector<PoolPage> pages = Allocate(*fresh, 16);
        base::MutexLock napi(&fresh->napi_mu());
        for (const PoolPage& pg : pages) {
          if (!fresh->pool().Recycle(pg.handle, /*napi_local=*/true).ok()) errors.fetch_add(1);
        }
      }
    });
    std::thread unreg([&] {
      if (round % 3 == 0) std::this_thread::yield();
      absl::StatusOr<PoolDestroyed> d = nic->XdpRxqUnreg(*old);
      // Refused only when a restart that keeps nothing has unregistered it first.
      if (!d.ok()) {
        if (keep_old_xdp_rxq) ADD_FAILURE() << d.status();
        return;
      }
      if (d->destroyed()) destroys.fetch_add(1);
    });
    std::thread giver([&] { GiveBack(*old, held, &errors); });
    restarter.join();
    unreg.join();
    giver.join();

    ASSERT_EQ(destroys.load(), 1) << "round " << round;
    ASSERT_EQ(errors.load(), 0) << "round " << round;
    ASSERT_TRUE(old->pool().destroyed());
    ASSERT_EQ(old->pool().users(), 0u);
    ASSERT_EQ(old->pool().inflight(), 0) << "round " << round;
    ASSERT_TRUE(fresh);
    ASSERT_TRUE(nic->bound());
    ASSERT_EQ(nic->device().violations().Total(), 0u)
        << "round " << round << ": " << ViolationSummary(nic->device().violations());
    nic->ReleaseRetry(0);
    ASSERT_EQ(nic->FindNicPool(old->id()), nullptr);
    // The new queue goes too, the way its driver would.
    ASSERT_TRUE(nic->XdpRxqUnreg(*fresh).ok());
    absl::StatusOr<PoolDestroyed> last = nic->DestroyPool(*fresh);
    ASSERT_TRUE(last.ok()) << last.status();
    ASSERT_TRUE(last->forgotten);
    ASSERT_EQ(nic->device().live_mappings(), 0u) << "round " << round;
  }
  EXPECT_EQ(nic->pool_count(), 0u);
}

// An unbind racing a restart: either the restart creates its pool before the unbind starts (and the
// unbind destroys both, the old one once its users are all gone) or it is refused and the unbind
// destroys the old queue's pool. Either way nothing is live at the unbind and no unmap follows it.
TEST(QueueRestartRaceTest, UnbindRacingARestartLeavesNothingMapped) {
  absl::StatusOr<std::shared_ptr<PhysMemory>> memory = testing::MakeSharedMemory(64 * kMiB);
  ASSERT_TRUE(memory.ok());
  const int rounds = Rounds() / 3 + 1;
  int restarted = 0;
  for (int round = 0; round < rounds; ++round) {
    std::unique_ptr<Nic> nic = MakeNic(*memory);
    ASSERT_TRUE(nic);
    PagePoolParams params;
    params.strategy = round % 2 == 0 ? DestroyStrategy::kXarray : DestroyStrategy::kScan;
    absl::StatusOr<std::shared_ptr<NicPool>> made = nic->CreateNicPool(params, /*xdp_rxq=*/true);
    ASSERT_TRUE(made.ok()) << made.status();
    std::shared_ptr<NicPool> old = *made;
    const std::vector<PoolPage> held = Allocate(*old, kHeld);
    std::atomic<int> errors{0};
    absl::StatusOr<QueueRestart> r = absl::UnknownError("not run");
    std::thread restarter([&] {
      RestartOptions options;
      options.keep_old_xdp_rxq = round % 4 < 2;
      r = nic->RestartQueue(*old, params, options);
    });
    std::thread unbinder([&] {
      if (round % 3 == 0) std::this_thread::yield();
      absl::StatusOr<UnbindResult> u = nic->Unbind();
      if (!u.ok()) ADD_FAILURE() << u.status();
    });
    std::thread giver([&] { GiveBack(*old, held, &errors); });
    restarter.join();
    unbinder.join();
    giver.join();
    if (r.ok()) {
      ++restarted;
      ASSERT_TRUE(r->pool->pool().destroyed());
    } else {
      // The unbind came first: it stopped the old queue (or, with every page back, destroyed and
      // forgot its pool), or refuses the new pool.
      ASSERT_TRUE(r.status().code() == absl::StatusCode::kFailedPrecondition ||
                  r.status().code() == absl::StatusCode::kNotFound)
          << r.status();
    }
    ASSERT_EQ(errors.load(), 0);
    ASSERT_TRUE(old->pool().destroyed()) << "round " << round;
    ASSERT_FALSE(nic->bound());
    ASSERT_EQ(nic->device().violations().Total(), 0u)
        << "round " << round << ": " << ViolationSummary(nic->device().violations());
  }
  // Not an assertion on the scheduler: just say how often each side won.
  std::printf("%d of %d restarts ran before their unbind\n", restarted, rounds);
}

}  // namespace
}  // namespace pagepool::pool
