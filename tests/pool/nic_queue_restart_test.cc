// File: tests/pool/nic_queue_restart_test.cc
//
// A destroy that is not an unbind: Nic::RestartQueue (netdev_rx_queue_restart, an ethtool -G ring
// resize) recreates a queue's pool while the device stays bound, and the pool's users (the
// kernel's user_cnt: the driver's reference plus one per xdp_rxq registration) decide which
// page_pool_destroy really destroys it. Asserted: the new pool is created first and serves traffic
// while the old one waits; the old pool is not destroyed while an xdp_rxq holds it, and is
// destroyed (pages unmapped by its strategy, no checker violation) when the last user goes, in
// either order of the driver's destroy and xdp_rxq_info_unreg; the device stays bound throughout;
// refusals leave everything as it was. Single-threaded (tests/pool/nic_queue_restart_race_test.cc
// races the same calls).
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/support/pool_fixtures.h"

namespace pagepool::pool {
namespace {

using ::pagepool::testing::kMiB;
using ::pagepool::testing::ViolationSummary;

class QueueRestartTest : public ::testing::Test, public testing::NicFixture {
 protected:
  void SetUp() override {
    const absl::Status s = CreateNic(64 * kMiB, 1, dma::IommuMode::kStrict, /*ifindex=*/4);
    ASSERT_TRUE(s.ok()) << s;
  }

  std::shared_ptr<NicPool> NewPool(bool xdp_rxq,
                                   DestroyStrategy strategy = DestroyStrategy::kXarray,
                                   uint32_t pool_size = 0) {
    PagePoolParams params;
    params.strategy = strategy;
    params.pool_size = pool_size;
    absl::StatusOr<std::shared_ptr<NicPool>> p = nic_->CreateNicPool(params, xdp_rxq);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : nullptr;
  }

  // `n` pages allocated in the pool's NAPI context.
  static std::vector<PoolPage> Allocate(NicPool& p, size_t n) {
    std::vector<PoolPage> pages;
    base::MutexLock napi(&p.napi_mu());
    EXPECT_FALSE(p.napi_stopped());
    const absl::Status s = p.pool().AllocateBulk(n, &pages);
    EXPECT_TRUE(s.ok()) << s;
    return pages;
  }

  static bool NapiStopped(NicPool& p) {
    base::MutexLock napi(&p.napi_mu());
    return p.napi_stopped();
  }

  static uint32_t XdpRxqs(NicPool& p) {
    base::MutexLock napi(&p.napi_mu());
    return p.xdp_rxqs();
  }

  // The new pool serves a round of traffic: allocate, direct recycle, allocate again, return.
  static void ServeTraffic(NicPool& p) {
    std::vector<PoolPage> pages = Allocate(p, 8);
    ASSERT_EQ(pages.size(), 8u);
    {
      base::MutexLock napi(&p.napi_mu());
      for (const PoolPage& pg : pages) ASSERT_TRUE(p.pool().Recycle(pg.handle, true).ok());
    }
    pages = Allocate(p, 8);
    for (const PoolPage& pg : pages) ASSERT_TRUE(p.pool().Return(pg.handle).ok());
  }

  RestartOptions KeepOldXdpRxq(bool new_xdp_rxq = true) {
    RestartOptions o;
    o.xdp_rxq = new_xdp_rxq;
    o.keep_old_xdp_rxq = true;
    return o;
  }
};

TEST_F(QueueRestartTest, CreationRegistersTheXdpRxqAsASecondUser) {
  auto plain = NewPool(false);
  auto xdp = NewPool(true);
  ASSERT_TRUE(plain && xdp);
  EXPECT_EQ(plain->pool().users(), 1u);
  EXPECT_EQ(XdpRxqs(*plain), 0u);
  EXPECT_EQ(xdp->pool().users(), 2u);
  EXPECT_EQ(xdp->pool().info().users, 2u);
  EXPECT_EQ(XdpRxqs(*xdp), 1u);
  ASSERT_TRUE(nic_->XdpRxqReg(*plain).ok());  // an XDP program attached later
  EXPECT_EQ(plain->pool().users(), 2u);
  EXPECT_EQ(XdpRxqs(*plain), 1u);
}

// The kernel's page_pool_destroy of a pool still used by an xdp_rxq does nothing but drop the
// driver's reference: the pool is live (its pages mapped, returns unmapping them) until
// xdp_rxq_info_unreg drops the last user.
TEST_F(QueueRestartTest, DriversDestroyWaitsForTheXdpRxqsUnregistration) {
  auto p = NewPool(true);
  ASSERT_TRUE(p);
  std::vector<PoolPage> held = Allocate(*p, 6);
  const uint64_t mapped = p->pool().info().dma_mapped;  // the held pages and the alloc cache's
  ASSERT_GE(mapped, 6u);

  absl::StatusOr<PoolDestroyed> d = nic_->DestroyPool(*p);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->destroyed());
  EXPECT_EQ(d->result.users_left, 1u);
  EXPECT_EQ(d->result.pages_unmapped, 0u);
  EXPECT_FALSE(d->forgotten);
  EXPECT_FALSE(p->pool().destroyed());
  EXPECT_TRUE(NapiStopped(*p));  // the driver's queue is gone
  EXPECT_EQ(p->pool().users(), 1u);
  EXPECT_EQ(p->pool().info().dma_mapped, mapped);  // nothing unmapped
  EXPECT_EQ(nic_->FindNicPool(p->id()), p);

  // A second driver destroy is refused, saying why; the pool is untouched.
  absl::StatusOr<PoolDestroyed> again = nic_->DestroyPool(*p);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.status().message().find("xdp_rxq"), std::string::npos) << again.status();
  EXPECT_EQ(p->pool().users(), 1u);
  // Nor can a new xdp_rxq use a pool whose queue is stopped.
  EXPECT_EQ(nic_->XdpRxqReg(*p).code(), absl::StatusCode::kFailedPrecondition);

  // A page given back meanwhile is unmapped by its own return: the pool is live.
  absl::StatusOr<bool> r = p->pool().Return(held.back().handle);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  held.pop_back();

  d = nic_->XdpRxqUnreg(*p);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->destroyed());
  EXPECT_TRUE(p->pool().destroyed());
  EXPECT_EQ(d->result.inflight_at_destroy, 5);
  EXPECT_EQ(d->result.pages_unmapped, 5u);
  EXPECT_EQ(p->pool().users(), 0u);
  EXPECT_EQ(p->pool().info().dma_mapped, 0u);
  EXPECT_EQ(nic_->XdpRxqUnreg(*p).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(nic_->DestroyPool(*p).status().code(), absl::StatusCode::kFailedPrecondition);

  for (const PoolPage& pg : held) {
    absl::StatusOr<bool> late = p->pool().Return(pg.handle);
    ASSERT_TRUE(late.ok());
    EXPECT_FALSE(*late);  // unmapped by the destroy already: no DMA-API call
  }
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);
  EXPECT_EQ(nic_->FindNicPool(p->id()), nullptr);
  EXPECT_TRUE(nic_->bound());
  EXPECT_EQ(nic_->device().violations().Total(), 0u)
      << ViolationSummary(nic_->device().violations());
  EXPECT_EQ(nic_->device().live_mappings(), 0u);
}

// bnxt_free_rx_rings' order: xdp_rxq_info_unreg first (the pool stays, its queue still runs), then
// the driver's page_pool_destroy, which is the last user's.
TEST_F(QueueRestartTest, XdpRxqUnregisteredFirstLeavesTheDriversDestroyTheRealOne) {
  auto p = NewPool(true);
  ASSERT_TRUE(p);
  absl::StatusOr<PoolDestroyed> d = nic_->XdpRxqUnreg(*p);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->result.users_left, 1u);
  EXPECT_FALSE(p->pool().destroyed());
  EXPECT_FALSE(NapiStopped(*p));
  ServeTraffic(*p);  // the queue runs on
  std::vector<PoolPage> held = Allocate(*p, 3);
  d = nic_->DestroyPool(*p);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->destroyed());
  EXPECT_EQ(d->result.pages_unmapped, 3u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

// The restart with the old queue's xdp_rxq kept: the new pool is serving before the old one is
// touched, the old one stays live (not destroyed, pages mapped) while its xdp_rxq holds it, and its
// strategy unmaps the pages still out when XdpRxqUnreg drops that last user. The device stays
// bound all along, so no strategy (NONE included) makes a DMA-API call on an unbound device.
TEST_F(QueueRestartTest, OldPoolLivesWhileItsXdpRxqHoldsItAndIsDestroyedAtTheLastUser) {
  for (DestroyStrategy strategy :
       {DestroyStrategy::kXarray, DestroyStrategy::kScan, DestroyStrategy::kNone}) {
    SCOPED_TRACE(std::string(DestroyStrategyName(strategy)));
    auto old = NewPool(true, strategy, /*pool_size=*/256);
    ASSERT_TRUE(old);
    std::vector<PoolPage> held = Allocate(*old, 40);
    const uint64_t maps_before = nic_->device().map_calls();
    const uint64_t mapped = old->pool().info().dma_mapped;  // the held pages and the alloc cache's
    ASSERT_GE(mapped, 40u);

    std::shared_ptr<NicPool> announced;
    RestartOptions options = KeepOldXdpRxq();
    options.on_created = [&](const std::shared_ptr<NicPool>& created) {
      // The new pool exists before the old queue stops.
      announced = created;
      EXPECT_FALSE(old->pool().destroyed());
    };
    PagePoolParams params;
    params.strategy = strategy;
    params.pool_size = 512;  // the ring resize
    absl::StatusOr<QueueRestart> r = nic_->RestartQueue(*old, params, options);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->pool);
    EXPECT_EQ(announced, r->pool);
    EXPECT_NE(r->pool->id(), old->id());
    EXPECT_EQ(r->pool->pool().params().pool_size, 512u);
    EXPECT_EQ(r->pool->pool().users(), 2u);  // the new queue's xdp_rxq registered on it
    EXPECT_EQ(r->old.pool, old->shared_pool());
    EXPECT_FALSE(r->old.destroyed());
    EXPECT_EQ(r->old.result.users_left, 1u);

    // The old pool: live, queue stopped, pages still mapped, still listed.
    EXPECT_FALSE(old->pool().destroyed());
    EXPECT_TRUE(NapiStopped(*old));
    EXPECT_EQ(old->pool().info().dma_mapped, mapped);
    EXPECT_EQ(old->pool().info().unmapped_at_destroy, 0u);
    EXPECT_EQ(nic_->FindNicPool(old->id()), old);
    EXPECT_TRUE(nic_->bound());

    // Meanwhile the new pool serves traffic, and the old pool's pages come back as to a live pool.
    ServeTraffic(*r->pool);
    EXPECT_GT(nic_->device().map_calls(), maps_before);
    ASSERT_TRUE(old->pool().Recycle(held.back().handle, /*napi_local=*/false).ok());
    held.pop_back();
    absl::StatusOr<bool> ret = old->pool().Return(held.back().handle);
    ASSERT_TRUE(ret.ok());
    EXPECT_TRUE(*ret);  // unmapped by the return itself
    held.pop_back();

    // The last user: the old queue's xdp_rxq_info_unreg.
    absl::StatusOr<PoolDestroyed> d = nic_->XdpRxqUnreg(*old);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->destroyed());
    EXPECT_TRUE(old->pool().destroyed());
    EXPECT_EQ(d->result.inflight_at_destroy, 38);
    // XARRAY's scrub unmaps the page parked in the ring too; SCAN empties the ring first.
    const uint64_t want_unmapped = strategy == DestroyStrategy::kXarray ? 39u
                                   : strategy == DestroyStrategy::kScan ? 38u
                                                                        : 0u;
    EXPECT_EQ(d->result.pages_unmapped, want_unmapped);
    EXPECT_FALSE(d->forgotten);  // detached: pages still out
    EXPECT_EQ(old->pool().info().dma_mapped, strategy == DestroyStrategy::kNone ? 38u : 0u);
    EXPECT_TRUE(nic_->bound());

    for (const PoolPage& pg : held) {
      absl::StatusOr<bool> late = old->pool().Return(pg.handle);
      ASSERT_TRUE(late.ok());
      EXPECT_EQ(*late, strategy == DestroyStrategy::kNone);  // NONE unmaps late, device bound
    }
    EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);
    EXPECT_EQ(nic_->FindNicPool(old->id()), nullptr);
    EXPECT_EQ(nic_->device().violations().Total(), 0u)
        << ViolationSummary(nic_->device().violations());

    // The new queue's pool goes the usual way.
    ASSERT_TRUE(nic_->XdpRxqUnreg(*r->pool).ok());
    absl::StatusOr<PoolDestroyed> last = nic_->DestroyPool(*r->pool);
    ASSERT_TRUE(last.ok()) << last.status();
    EXPECT_TRUE(last->destroyed());
    EXPECT_TRUE(last->forgotten);
    EXPECT_EQ(nic_->device().live_mappings(), 0u);
    EXPECT_EQ(nic_->pool_count(), 0u);
  }
}

// The default restart frees the old queue as ndo_queue_mem_free does: page_pool_destroy, then
// xdp_rxq_info_unreg, whose drop of the last user destroys the pool within the restart.
TEST_F(QueueRestartTest, DefaultRestartDropsEveryOldUserAndDestroysTheOldPool) {
  auto old = NewPool(true);
  ASSERT_TRUE(old);
  std::vector<PoolPage> held = Allocate(*old, 5);
  RestartOptions options;
  options.xdp_rxq = true;
  absl::StatusOr<QueueRestart> r = nic_->RestartQueue(*old, PagePoolParams{}, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->old.destroyed());
  EXPECT_EQ(r->old.result.pages_unmapped, 5u);
  EXPECT_TRUE(old->pool().destroyed());
  EXPECT_EQ(XdpRxqs(*old), 0u);
  EXPECT_EQ(old->pool().users(), 0u);
  ServeTraffic(*r->pool);
  EXPECT_TRUE(nic_->bound());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);

  // A pool with nothing in flight is forgotten by the restart at once.
  auto empty = NewPool(false);
  ASSERT_TRUE(empty);
  r = nic_->RestartQueue(*empty, PagePoolParams{});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->old.destroyed());
  EXPECT_TRUE(r->old.forgotten);
  EXPECT_EQ(nic_->FindNicPool(empty->id()), nullptr);
  EXPECT_EQ(r->pool->pool().users(), 1u);
}

TEST_F(QueueRestartTest, RefusedRestartsLeaveTheOldQueueRunning) {
  auto old = NewPool(true);
  ASSERT_TRUE(old);
  std::vector<PoolPage> held = Allocate(*old, 2);
  const size_t pools = nic_->pool_count();

  // The new pool cannot be created: the old queue runs on, untouched.
  PagePoolParams bad;
  bad.order = PhysMemory::kMaxOrder + 1;
  absl::StatusOr<QueueRestart> r = nic_->RestartQueue(*old, bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_FALSE(NapiStopped(*old));
  EXPECT_EQ(old->pool().users(), 2u);
  EXPECT_EQ(nic_->pool_count(), pools);
  ServeTraffic(*old);

  // A pool of another Nic.
  absl::StatusOr<std::unique_ptr<Nic>> other =
      Nic::Create(memory_, testing::MakeNicConfig("eth9", dma::IommuMode::kStrict));
  ASSERT_TRUE(other.ok());
  absl::StatusOr<std::shared_ptr<NicPool>> foreign = (*other)->CreateNicPool({});
  ASSERT_TRUE(foreign.ok());
  EXPECT_EQ(nic_->RestartQueue(**foreign, {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(NapiStopped(**foreign));

  // A queue already restarted (or destroyed by its driver) cannot be restarted again.
  r = nic_->RestartQueue(*old, {}, KeepOldXdpRxq(false));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<QueueRestart> twice = nic_->RestartQueue(*old, {});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition) << twice.status();
  EXPECT_EQ(nic_->pool_count(), pools + 1);  // no third pool
  EXPECT_FALSE(old->pool().destroyed());

  // After the unbind no queue runs: a restart is refused (the new pool is kept findable by a page
  // still out).
  std::vector<PoolPage> out = Allocate(*r->pool, 1);
  ASSERT_TRUE(nic_->Unbind().ok());
  EXPECT_EQ(nic_->RestartQueue(*r->pool, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Driver unbind takes every user with it: a pool kept only by an xdp_rxq is destroyed too, before
// the device goes, so nothing is live at the unbind.
TEST_F(QueueRestartTest, UnbindDestroysAPoolKeptOnlyByItsXdpRxq) {
  auto old = NewPool(true);
  ASSERT_TRUE(old);
  std::vector<PoolPage> held = Allocate(*old, 7);
  absl::StatusOr<QueueRestart> r = nic_->RestartQueue(*old, {}, KeepOldXdpRxq());
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<PoolPage> fresh = Allocate(*r->pool, 3);
  ASSERT_FALSE(old->pool().destroyed());

  absl::StatusOr<UnbindResult> u = nic_->Unbind();
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->pools_destroyed, 2u);
  EXPECT_EQ(u->pages_unmapped, 10u);
  EXPECT_TRUE(old->pool().destroyed());
  EXPECT_TRUE(r->pool->pool().destroyed());
  EXPECT_EQ(XdpRxqs(*old), 0u);
  EXPECT_EQ(XdpRxqs(*r->pool), 0u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u)
      << ViolationSummary(nic_->device().violations());
  for (const PoolPage& pg : held) ASSERT_TRUE(old->pool().Return(pg.handle).ok());
  for (const PoolPage& pg : fresh) ASSERT_TRUE(r->pool->pool().Return(pg.handle).ok());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST(PagePoolUsersTest, UseXdpMemIsRefusedOnceDestroyed) {
  absl::StatusOr<std::shared_ptr<PhysMemory>> m = testing::MakeSharedMemory(8 * kMiB);
  ASSERT_TRUE(m.ok());
  PagePoolParams params;
  params.flags = 0;  // no DMA mapping: no device needed
  absl::StatusOr<std::shared_ptr<PagePool>> p = PagePool::Create(*m, nullptr, params);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE((*p)->UseXdpMem().ok());
  EXPECT_EQ((*p)->users(), 2u);
  absl::StatusOr<DestroyResult> d = (*p)->Destroy();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->users_left, 1u);
  EXPECT_FALSE((*p)->destroyed());
  d = (*p)->Destroy();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->users_left, 0u);
  EXPECT_TRUE(d->released);
  EXPECT_TRUE((*p)->destroyed());
  EXPECT_EQ((*p)->UseXdpMem().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*p)->Destroy().status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace pagepool::pool
