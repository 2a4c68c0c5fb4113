// File: tests/pool/nic_test.cc
//
// Tests of pool::Nic, the one registry of a device's pools: create, find, list, destroy (released
// at once or detached), unbind, the release worker and what each destroy path says it forgot, the
// NAPI context every destroy path stops, and two threads creating, finding and destroying pools on
// one Nic at once.
#include "pool/nic.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "pool/page_pool.h"
#include "pool/phys_memory.h"
#include "tests/support/fake_clock.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

constexpr uint64_t kMemoryBytes = uint64_t{32} << 20;

class NicTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<PhysMemory>> m = PhysMemory::Create({kMemoryBytes, 1});
    ASSERT_TRUE(m.ok()) << m.status();
    memory_ = std::shared_ptr<PhysMemory>(std::move(*m));
    NicConfig config;
    config.device.name = "eth0";
    config.ifindex = 5;
    config.clock = &clock_;
    config.warn = [this](std::string_view line) { warnings_.emplace_back(line); };
    absl::StatusOr<std::unique_ptr<Nic>> nic = Nic::Create(memory_, config);
    ASSERT_TRUE(nic.ok()) << nic.status();
    nic_ = std::move(*nic);
  }

  std::shared_ptr<NicPool> NewPool(DestroyStrategy strategy = DestroyStrategy::kXarray) {
    PagePoolParams params;
    params.strategy = strategy;
    absl::StatusOr<std::shared_ptr<NicPool>> p = nic_->CreateNicPool(params);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : nullptr;
  }

  // `n` pages allocated in the pool's NAPI context.
  std::vector<PoolPage> Allocate(NicPool& p, size_t n) {
    std::vector<PoolPage> pages;
    base::MutexLock napi(&p.napi_mu());
    EXPECT_FALSE(p.napi_stopped());
    EXPECT_TRUE(p.pool().AllocateBulk(n, &pages).ok());
    return pages;
  }

  testing::FakeClock clock_;
  std::vector<std::string> warnings_;
  std::shared_ptr<PhysMemory> memory_;
  std::unique_ptr<Nic> nic_;
};

TEST_F(NicTest, CreateFindAndListInIdOrder) {
  auto a = NewPool();
  auto b = NewPool();
  ASSERT_TRUE(a && b);
  EXPECT_LT(a->id(), b->id());
  EXPECT_EQ(a->pool().params().ifindex, 5u);  // the Nic's ifindex, whatever the params said
  EXPECT_EQ(nic_->FindNicPool(a->id()), a);
  EXPECT_EQ(nic_->FindPool(b->id()), b->shared_pool());
  EXPECT_EQ(nic_->FindNicPool(b->id() + 1000), nullptr);
  EXPECT_EQ(nic_->pool_count(), 2u);
  std::vector<std::shared_ptr<NicPool>> all = nic_->NicPools();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0], a);
  EXPECT_EQ(all[1], b);
  EXPECT_TRUE(a->registered());
  absl::StatusOr<std::shared_ptr<PagePool>> plain = nic_->CreatePool({});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(nic_->FindPool((*plain)->id()), *plain);
  EXPECT_EQ(nic_->Pools().size(), 3u);
}

TEST_F(NicTest, DestroyWithNothingInFlightForgetsAtOnce) {
  auto p = NewPool();
  ASSERT_TRUE(p);
  absl::StatusOr<PoolDestroyed> d = nic_->DestroyPool(*p);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->result.released);
  EXPECT_TRUE(d->forgotten);
  EXPECT_EQ(d->pool, p->shared_pool());
  EXPECT_FALSE(p->registered());
  EXPECT_EQ(nic_->FindNicPool(p->id()), nullptr);
  EXPECT_EQ(nic_->pool_count(), 0u);
  {
    base::MutexLock napi(&p->napi_mu());
    EXPECT_TRUE(p->napi_stopped());
  }
  EXPECT_EQ(nic_->DestroyPool(p->id()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(NicTest, DestroyWithPagesInFlightDetachesUntilReleaseRetrySeesThemBack) {
  auto p = NewPool();
  ASSERT_TRUE(p);
  std::vector<PoolPage> held = Allocate(*p, 3);
  absl::StatusOr<PoolDestroyed> d = nic_->DestroyPool(*p);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->forgotten);
  EXPECT_EQ(d->result.inflight_at_destroy, 3);
  EXPECT_TRUE(p->registered());
  EXPECT_EQ(nic_->FindNicPool(p->id()), p);  // detached, still findable
  absl::StatusOr<PoolDestroyed> again = nic_->DestroyPool(*p);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(again.status().message(), "pool " + std::to_string(p->id()) + " is already destroyed");

  std::vector<std::shared_ptr<PagePool>> released;
  clock_.Advance(kDeferTimeNs);
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos(), &released), 1u);
  EXPECT_TRUE(released.empty());
  for (const PoolPage& pg : held) ASSERT_TRUE(p->pool().Return(pg.handle).ok());
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos(), &released), 0u);
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0], p->shared_pool());
  EXPECT_FALSE(p->registered());
  EXPECT_EQ(nic_->FindNicPool(p->id()), nullptr);
  // Forgotten once: a second tick reports nothing.
  released.clear();
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos(), &released), 0u);
  EXPECT_TRUE(released.empty());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST_F(NicTest, StalledNonePoolWarnsThroughTheNicsSink) {
  auto p = NewPool(DestroyStrategy::kNone);
  ASSERT_TRUE(p);
  std::vector<PoolPage> held = Allocate(*p, 1);
  ASSERT_TRUE(nic_->DestroyPool(p->id()).ok());
  // Linked to the NIC's netdev: current kernels print nothing for such a pool.
  for (int sec = 1; sec <= 60; ++sec) {
    clock_.Advance(kDeferTimeNs);
    EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 1u);
  }
  EXPECT_TRUE(warnings_.empty()) << warnings_[0];
  // The driver unbinds: the netdev is gone, and the stalled pool is reported.
  ASSERT_TRUE(nic_->Unbind().ok());
  for (int sec = 1; sec <= 60; ++sec) {
    clock_.Advance(kDeferTimeNs);
    EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 1u);
  }
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_NE(warnings_[0].find("stalled pool shutdown: id " + std::to_string(p->id())),
            std::string::npos)
      << warnings_[0];
  (void)p->pool().Return(held[0].handle);  // NONE after the unbind: the unmap is a violation
  EXPECT_GT(nic_->device().violations().Total(), 0u);
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);
  EXPECT_TRUE(nic_->Pools().empty());
}

// Thread 1 destroys a pool with many pages in flight; thread 2 unbinds the device as soon as the
// pool shows destroyed(), i.e. while the destroy is still unmapping. The unbind must wait for it:
// with XARRAY (and SCAN) no DMA-API call may follow the unbind.
TEST(NicRaceTest, UnbindWaitsForADestroyInProgress) {
  for (DestroyStrategy strategy : {DestroyStrategy::kXarray, DestroyStrategy::kScan}) {
    for (int round = 0; round < 5; ++round) {
      absl::StatusOr<std::unique_ptr<PhysMemory>> m = PhysMemory::Create({uint64_t{256} << 20, 1});
      ASSERT_TRUE(m.ok()) << m.status();
      NicConfig config;
      config.device.name = "eth1";
      config.ifindex = 6;
      absl::StatusOr<std::unique_ptr<Nic>> nic =
          Nic::Create(std::shared_ptr<PhysMemory>(std::move(*m)), config);
      ASSERT_TRUE(nic.ok()) << nic.status();
      PagePoolParams params;
      params.strategy = strategy;
      absl::StatusOr<std::shared_ptr<NicPool>> p = (*nic)->CreateNicPool(params);
      ASSERT_TRUE(p.ok()) << p.status();
      std::vector<PoolPage> held;
      {
        base::MutexLock napi(&(*p)->napi_mu());
        ASSERT_TRUE((*p)->pool().AllocateBulk(40000, &held).ok());
      }
      std::thread destroyer([&] { EXPECT_TRUE((*nic)->DestroyPool((*p)->id()).ok()); });
      while (!(*p)->pool().destroyed()) std::this_thread::yield();
      EXPECT_TRUE((*nic)->Unbind().ok());
      destroyer.join();
      EXPECT_EQ((*nic)->device().violations().Total(), 0u)
          << DestroyStrategyName(strategy) << " round " << round;
    }
  }
}

TEST_F(NicTest, DestroyLivePoolsSkipsDetachedOnesAndSumsTheRest) {
  auto detached = NewPool();
  auto live_held = NewPool();
  auto live_empty = NewPool();
  ASSERT_TRUE(detached && live_held && live_empty);
  Allocate(*detached, 1);
  ASSERT_TRUE(nic_->DestroyPool(*detached).ok());
  Allocate(*live_held, 2);
  UnbindResult r = nic_->DestroyLivePools();
  EXPECT_EQ(r.pools_destroyed, 2u);
  EXPECT_EQ(r.inflight_at_destroy, 2);
  EXPECT_EQ(r.pages_unmapped, 2u);
  ASSERT_EQ(r.destroyed.size(), 2u);
  EXPECT_EQ(r.destroyed[0].pool, live_held->shared_pool());  // id order
  EXPECT_FALSE(r.destroyed[0].forgotten);
  EXPECT_EQ(r.destroyed[1].pool, live_empty->shared_pool());
  EXPECT_TRUE(r.destroyed[1].forgotten);
  EXPECT_EQ(nic_->pool_count(), 2u);  // the two detached ones
  EXPECT_TRUE(nic_->bound());         // not an unbind
  EXPECT_EQ(nic_->DestroyLivePools().pools_destroyed, 0u);
}

TEST_F(NicTest, UnbindDestroysLivePoolsThenRefusesNewPoolsAndASecondUnbind) {
  auto held = NewPool();
  auto empty = NewPool();
  ASSERT_TRUE(held && empty);
  std::vector<PoolPage> pages = Allocate(*held, 4);
  absl::StatusOr<UnbindResult> u = nic_->Unbind();
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->pools_destroyed, 2u);
  EXPECT_EQ(u->inflight_at_destroy, 4);
  EXPECT_EQ(u->pages_unmapped, 4u);
  ASSERT_EQ(u->destroyed.size(), 2u);
  EXPECT_FALSE(nic_->bound());
  EXPECT_EQ(nic_->Unbind().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(nic_->CreateNicPool({}).status().code(), absl::StatusCode::kFailedPrecondition);
  {
    base::MutexLock napi(&held->napi_mu());
    EXPECT_TRUE(held->napi_stopped());
  }
  // Pages held across the unbind come back without a DMA-API call.
  for (const PoolPage& pg : pages) {
    absl::StatusOr<bool> r = held->pool().Return(pg.handle);
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(*r);
  }
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);
  EXPECT_TRUE(nic_->Pools().empty());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  EXPECT_EQ(nic_->device().live_mappings(), 0u);
}

// Two threads on one Nic: each creates pools, allocates in their NAPI context, looks up its own and
// the other's pools and destroys its pools, while the other thread ticks the release worker. Every
// pool is forgotten exactly once; nothing is left mapped.
TEST_F(NicTest, TwoThreadsCreateFindAndDestroyConcurrently) {
  const int kRounds = static_cast<int>(testing::EnvOr("PAGEPOOL_NIC_TEST_ROUNDS", 200));
  std::atomic<uint64_t> forgotten{0};
  std::atomic<uint64_t> created{0};
  std::atomic<bool> failed{false};
  auto worker = [&](int seed) {
    std::vector<std::shared_ptr<PagePool>> released;
    for (int i = 0; i < kRounds && !failed; ++i) {
      PagePoolParams params;
      params.strategy = (i + seed) % 3 == 0 ? DestroyStrategy::kNone : DestroyStrategy::kXarray;
      absl::StatusOr<std::shared_ptr<NicPool>> p = nic_->CreateNicPool(params);
      if (!p.ok()) {
        failed = true;
        break;
      }
      ++created;
      std::vector<PoolPage> pages;
      {
        base::MutexLock napi(&(*p)->napi_mu());
        if (!(*p)->pool().AllocateBulk(1 + i % 8, &pages).ok()) failed = true;
      }
      if (nic_->FindNicPool((*p)->id()) != *p) failed = true;
      (void)nic_->NicPools();
      // Half the pools are destroyed with their pages out, half after they came back.
      const bool early = i % 2 == 0;
      if (!early) {
        for (const PoolPage& pg : pages) (void)(*p)->pool().Return(pg.handle);
      }
      absl::StatusOr<PoolDestroyed> d = nic_->DestroyPool(**p);
      if (!d.ok()) {
        failed = true;
        break;
      }
      if (d->forgotten) ++forgotten;
      if (early) {
        for (const PoolPage& pg : pages) (void)(*p)->pool().Return(pg.handle);
      }
      released.clear();
      nic_->ReleaseRetry(clock_.NowNanos(), &released);
      forgotten += released.size();
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  ASSERT_FALSE(failed.load());
  std::vector<std::shared_ptr<PagePool>> released;
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos(), &released), 0u);
  forgotten += released.size();
  EXPECT_EQ(forgotten.load(), created.load());
  EXPECT_EQ(nic_->pool_count(), 0u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  EXPECT_EQ(nic_->device().live_mappings(), 0u);
}

}  // namespace
}  // namespace pagepool::pool
