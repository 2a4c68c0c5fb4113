// Service tests of a device's DMA coherence and of queue restarts, over gRPC against an in-process
// pagepoold:
//   * CreateDevice's dma_coherence: GetDevice/ListDevices show it and dma_need_sync; a coherent
//     device's pool makes no DMA sync (the domain's sync_calls, /metrics) and its XARRAY destroy
//     waits no synchronize_net grace period; non-coherent and swiotlb devices do both; a value
//     outside the enum is INVALID_ARGUMENT.
//   * CreatePool with replaces_pool_id (netdev_rx_queue_restart) and xdp_rxq, DestroyPool with
//     xdp_rxq_unreg: the old pool is not destroyed while an xdp_rxq holds it, is destroyed (pages
//     unmapped, no violation) when its last user goes, the new pool serves traffic meanwhile, the
//     device stays bound, and WatchEvents shows the new pool's ADD before the old pool's
//     DETACH/DELETE; bad restarts get their codes and change nothing.
#include <algorithm>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/loopback_http.h"

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;

class ServiceQueueTest : public testing::DaemonTest {
 protected:
  void SetUp() override {
    server::DaemonOptions o = InProcessDaemon::DefaultOptions();
    o.metrics_listen = "127.0.0.1:0";
    StartDaemon(o);
  }

  v1::Device NewDevice(v1::DmaCoherence coherence = v1::DMA_COHERENCE_UNSPECIFIED) {
    v1::CreateDeviceRequest req;
    req.set_dma_coherence(coherence);
    auto r = c().CreateDevice(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->device() : v1::Device();
  }
  v1::CreatePoolRequest PoolRequest(uint64_t device, bool xdp_rxq) {
    v1::CreatePoolRequest req;
    req.set_device_id(device);
    req.set_strategy(v1::STRATEGY_XARRAY);
    req.set_xdp_rxq(xdp_rxq);
    return req;
  }
  uint64_t NewPool(uint64_t device, bool xdp_rxq = false) {
    auto r = c().CreatePool(PoolRequest(device, xdp_rxq));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->pool().id() : 0;
  }
  absl::StatusOr<v1::ReturnResponse> ReturnPages(uint64_t pool,
                                                 const std::vector<v1::PageHandle>& pages) {
    v1::ReturnRequest req;
    req.set_pool_id(pool);
    for (const auto& h : pages) *req.add_pages() = h;
    return c().Return(req);
  }
  absl::StatusOr<v1::DestroyPoolResponse> XdpRxqUnreg(uint64_t pool) {
    v1::DestroyPoolRequest req;
    req.set_pool_id(pool);
    req.set_xdp_rxq_unreg(true);
    return c().DestroyPool(req);
  }
  v1::Pool GetPool(uint64_t pool) {
    auto r = c().GetPool(pool);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->pool() : v1::Pool();
  }
  v1::DomainInfo Domain(uint64_t device) {
    auto r = c().GetDomain(device);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->domain() : v1::DomainInfo();
  }
  std::string Metrics() {
    return testing::AskLoopback(d_->daemon().metrics_port(),
                                "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
  }
  // Starts a WatchEvents stream with the include_existing replay and reads that replay (`existing`
  // events, seq 0), so the stream is known to be subscribed before the test goes on.
  std::unique_ptr<grpc::ClientReader<v1::Event>> Watch(grpc::ClientContext* ctx, int existing) {
    v1::WatchEventsRequest req;
    req.set_include_existing(true);
    auto reader = c().stub()->WatchEvents(ctx, req);
    v1::Event ev;
    for (int i = 0; i < existing; ++i) {
      EXPECT_TRUE(reader->Read(&ev));
      EXPECT_EQ(ev.seq(), 0u);
    }
    return reader;
  }
  // The next event that is not the release-retry tick's POOL_CHANGE.
  static bool ReadSkippingChanges(grpc::ClientReader<v1::Event>* reader, v1::Event* ev) {
    while (reader->Read(ev)) {
      if (ev->type() != v1::EVENT_TYPE_POOL_CHANGE) return true;
    }
    return false;
  }
  // The "NAME{LABELS} VALUE" line of a metric, or "" if absent.
  static std::string MetricLine(const std::string& page, const std::string& prefix) {
    const size_t at = page.find(prefix);
    if (at == std::string::npos) return "";
    return page.substr(at, page.find('\n', at) - at);
  }
};

// ---- DMA coherence ----

TEST_F(ServiceQueueTest, DeviceCoherenceDecidesSyncsAndTheDestroysSyncGracePeriod) {
  const struct {
    v1::DmaCoherence asked, shown;
    bool need_sync;
  } cases[] = {
      {v1::DMA_COHERENCE_COHERENT, v1::DMA_COHERENCE_COHERENT, false},
      {v1::DMA_COHERENCE_NON_COHERENT, v1::DMA_COHERENCE_NON_COHERENT, true},
      {v1::DMA_COHERENCE_SWIOTLB, v1::DMA_COHERENCE_SWIOTLB, true},
      {v1::DMA_COHERENCE_UNSPECIFIED, v1::DMA_COHERENCE_NON_COHERENT, true},
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(v1::DmaCoherence_Name(k.asked));
    const v1::Device dev = NewDevice(k.asked);
    EXPECT_EQ(dev.dma_coherence(), k.shown);
    EXPECT_EQ(dev.dma_need_sync(), k.need_sync);
    auto got = c().GetDevice(dev.id());
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->device().dma_coherence(), k.shown);
    EXPECT_EQ(got->device().dma_need_sync(), k.need_sync);
    auto list = c().ListDevices();
    ASSERT_TRUE(list.ok());
    auto it = std::find_if(list->devices().begin(), list->devices().end(),
                           [&](const v1::Device& d) { return d.id() == dev.id(); });
    ASSERT_NE(it, list->devices().end());
    EXPECT_EQ(it->dma_coherence(), k.shown);

    v1::CreatePoolRequest req = PoolRequest(dev.id(), false);
    req.mutable_flags()->set_dma_sync_dev(true);
    req.mutable_flags()->set_max_len(1500);
    auto pool = c().CreatePool(req);
    ASSERT_TRUE(pool.ok()) << pool.status();
    const uint64_t id = pool->pool().id();
    std::vector<v1::PageHandle> pages = Alloc(id, 2);
    ASSERT_EQ(pages.size(), 2u);
    v1::RecycleRequest rec;
    rec.set_pool_id(id);
    rec.set_napi_local(true);
    *rec.add_pages() = pages[0];
    ASSERT_TRUE(c().Recycle(rec).ok());
    // 64 new pages synced for the device at max_len, and the recycled one: or nothing at all.
    EXPECT_EQ(Domain(dev.id()).sync_calls(), k.need_sync ? 65u : 0u);
    const std::string page = Metrics();
    EXPECT_EQ(MetricLine(page, "pagepool_pool_dma_synced_bytes_total{pool_id=\"" +
                                   std::to_string(id) + "\""),
              "pagepool_pool_dma_synced_bytes_total{pool_id=\"" + std::to_string(id) +
                  "\",ifindex=\"" + std::to_string(dev.id()) + "\",strategy=\"xarray\"} " +
                  std::to_string(k.need_sync ? 65 * 1500 : 0));
    // GetPool says the same as /metrics.
    EXPECT_EQ(GetPool(id).dma_synced_bytes(), k.need_sync ? 65u * 1500 : 0u);
    EXPECT_EQ(MetricLine(page, "pagepool_domain_sync_calls_total{device_id=\"" +
                                   std::to_string(dev.id()) + "\""),
              "pagepool_domain_sync_calls_total{device_id=\"" + std::to_string(dev.id()) +
                  "\",iommu_mode=\"IOMMU_MODE_STRICT\"} " + std::to_string(k.need_sync ? 65 : 0));

    auto destroyed = c().DestroyPool(id);
    ASSERT_TRUE(destroyed.ok()) << destroyed.status();
    EXPECT_TRUE(destroyed->destroyed());
    EXPECT_EQ(destroyed->pages_unmapped(), 1u);
    // page_pool_scrub's synchronize_net() only where syncs happen, then the wait for returns still
    // inside their unmap.
    EXPECT_EQ(destroyed->grace_periods(), k.need_sync ? 2u : 1u);
    auto back = ReturnPages(id, {pages[1]});
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->unmapped(), 0u);
    const v1::DomainInfo dom = Domain(dev.id());
    EXPECT_EQ(dom.sync_calls(), k.need_sync ? 65u : 0u);
    EXPECT_EQ(dom.violations().total(), 0u);
    EXPECT_EQ(dom.live_mappings(), 0u);
  }
}

TEST_F(ServiceQueueTest, DmaCoherenceOutsideTheEnumIsInvalid) {
  v1::CreateDeviceRequest req;
  req.set_name("eth7");
  req.set_dma_coherence(static_cast<v1::DmaCoherence>(9));
  auto r = c().CreateDevice(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("dma_coherence 9"));
  auto list = c().ListDevices();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->devices_size(), 0);                         // nothing was created
  EXPECT_NE(NewDevice(v1::DMA_COHERENCE_COHERENT).id(), 0u);  // and the daemon serves on
}

// ---- Queue restarts ----

// The restart keeps the old queue's xdp_rxq: the old pool lives until DestroyPool xdp_rxq_unreg.
TEST_F(ServiceQueueTest, RestartedQueuesOldPoolLivesUntilItsXdpRxqIsUnregistered) {
  const uint64_t dev = NewDevice().id();
  const uint64_t old = NewPool(dev, /*xdp_rxq=*/true);
  std::vector<v1::PageHandle> held = Alloc(old, 20);
  ASSERT_EQ(held.size(), 20u);
  const uint64_t mapped = GetPool(old).dma_mapped();
  EXPECT_EQ(GetPool(old).users(), 2u);  // the driver and the xdp_rxq

  grpc::ClientContext watch_ctx;
  auto events = Watch(&watch_ctx, /*existing=*/2);  // the device and the old pool

  v1::CreatePoolRequest req = PoolRequest(dev, /*xdp_rxq=*/true);
  req.set_pool_size(2048);  // ethtool -G rx 2048
  req.set_replaces_pool_id(old);
  req.set_keep_old_xdp_rxq(true);
  auto restarted = c().CreatePool(req);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  const uint64_t fresh = restarted->pool().id();
  EXPECT_NE(fresh, old);
  EXPECT_EQ(restarted->pool().pool_size(), 2048u);
  ASSERT_TRUE(restarted->has_replaced());
  EXPECT_EQ(restarted->replaced().pool_id(), old);
  EXPECT_FALSE(restarted->replaced().destroyed());
  EXPECT_EQ(restarted->replaced().users_left(), 1u);
  EXPECT_EQ(restarted->replaced().pages_unmapped(), 0u);

  // The old pool: listed, live, its pages still mapped; its queue allocates no more.
  v1::Pool old_pool = GetPool(old);
  EXPECT_FALSE(old_pool.destroyed());
  EXPECT_EQ(old_pool.users(), 1u);  // its xdp_rxq only
  EXPECT_EQ(restarted->pool().users(), 2u);
  EXPECT_EQ(old_pool.dma_mapped(), mapped);
  auto alloc_old = c().Allocate(old, 1);
  EXPECT_EQ(alloc_old.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(alloc_old.status().message()), HasSubstr("queue is stopped"));
  auto device = c().GetDevice(dev);
  ASSERT_TRUE(device.ok());
  EXPECT_EQ(device->device().state(), v1::DEVICE_STATE_BOUND);
  EXPECT_THAT(device->device().pool_ids(), ::testing::ElementsAre(old, fresh));
  // The driver's reference is gone already: a second driver destroy is refused.
  auto driver_again = c().DestroyPool(old);
  EXPECT_EQ(driver_again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(driver_again.status().message()), HasSubstr("xdp_rxq"));

  // Meanwhile the new pool serves traffic, and an old page given back is unmapped by its return.
  std::vector<v1::PageHandle> fresh_pages = Alloc(fresh, 16);
  ASSERT_EQ(fresh_pages.size(), 16u);
  v1::RecycleRequest rec;
  rec.set_pool_id(fresh);
  for (const auto& h : fresh_pages) *rec.add_pages() = h;
  ASSERT_TRUE(c().Recycle(rec).ok());
  auto one = ReturnPages(old, {held.back()});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->unmapped(), 1u);
  held.pop_back();

  // The old queue's xdp_rxq_info_unreg: the last user goes, the pool is destroyed.
  auto unreg = XdpRxqUnreg(old);
  ASSERT_TRUE(unreg.ok()) << unreg.status();
  EXPECT_TRUE(unreg->destroyed());
  EXPECT_EQ(unreg->users_left(), 0u);
  EXPECT_EQ(unreg->inflight_at_destroy(), 19u);
  EXPECT_EQ(unreg->pages_unmapped(), 19u);
  old_pool = GetPool(old);
  EXPECT_TRUE(old_pool.destroyed());
  EXPECT_EQ(old_pool.users(), 0u);
  EXPECT_EQ(old_pool.dma_mapped(), 0u);
  EXPECT_EQ(old_pool.unmapped_at_destroy(), 19u);
  EXPECT_EQ(XdpRxqUnreg(old).status().code(), absl::StatusCode::kFailedPrecondition);
  v1::DomainInfo dom = Domain(dev);
  EXPECT_EQ(dom.violations().total(), 0u);
  device = c().GetDevice(dev);
  ASSERT_TRUE(device.ok());
  EXPECT_EQ(device->device().state(), v1::DEVICE_STATE_BOUND);

  auto rest = ReturnPages(old, held);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->unmapped(), 0u);  // the destroy unmapped them

  // Events: the new pool's ADD, then the old pool's DETACH, then (release-retry tick) its DELETE.
  v1::Event ev;
  ASSERT_TRUE(ReadSkippingChanges(events.get(), &ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_ADD);
  EXPECT_EQ(ev.pool().id(), fresh);
  ASSERT_TRUE(ReadSkippingChanges(events.get(), &ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_DETACH);
  EXPECT_EQ(ev.pool().id(), old);
  EXPECT_TRUE(ev.pool().destroyed());
  ASSERT_TRUE(ReadSkippingChanges(events.get(), &ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_DELETE);
  EXPECT_EQ(ev.pool().id(), old);
  watch_ctx.TryCancel();
  while (events->Read(&ev)) {
  }

  dom = Domain(dev);
  EXPECT_EQ(dom.violations().total(), 0u);
  EXPECT_EQ(c().GetPool(old).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(GetPool(fresh).destroyed());
}

// The default restart frees the old queue whole (page_pool_destroy, then xdp_rxq_info_unreg): the
// old pool is destroyed within the call.
TEST_F(ServiceQueueTest, DefaultRestartDestroysTheOldPoolWithinTheCall) {
  const uint64_t dev = NewDevice().id();
  const uint64_t old = NewPool(dev, /*xdp_rxq=*/true);
  std::vector<v1::PageHandle> held = Alloc(old, 8);
  grpc::ClientContext watch_ctx;
  auto events = Watch(&watch_ctx, /*existing=*/2);  // the device and the old pool

  v1::CreatePoolRequest req = PoolRequest(dev, /*xdp_rxq=*/false);
  req.set_replaces_pool_id(old);
  auto restarted = c().CreatePool(req);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_TRUE(restarted->replaced().destroyed());
  EXPECT_EQ(restarted->replaced().users_left(), 0u);
  EXPECT_EQ(restarted->replaced().pages_unmapped(), 8u);
  EXPECT_EQ(restarted->replaced().strategy(), v1::STRATEGY_XARRAY);
  EXPECT_TRUE(GetPool(old).destroyed());
  EXPECT_EQ(Alloc(restarted->pool().id(), 4).size(), 4u);

  v1::Event ev;
  ASSERT_TRUE(ReadSkippingChanges(events.get(), &ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_ADD);
  EXPECT_EQ(ev.pool().id(), restarted->pool().id());
  ASSERT_TRUE(ReadSkippingChanges(events.get(), &ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_DETACH);
  EXPECT_EQ(ev.pool().id(), old);
  watch_ctx.TryCancel();
  while (events->Read(&ev)) {
  }
  auto back = ReturnPages(old, held);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->unmapped(), 0u);
  EXPECT_EQ(Domain(dev).violations().total(), 0u);
}

// bnxt's order over the wire: xdp_rxq_info_unreg first leaves the queue running; the driver's
// DestroyPool is then the last user's.
TEST_F(ServiceQueueTest, XdpRxqUnregisteredFirstLeavesTheQueueRunning) {
  const uint64_t dev = NewDevice().id();
  const uint64_t pool = NewPool(dev, /*xdp_rxq=*/true);
  auto unreg = XdpRxqUnreg(pool);
  ASSERT_TRUE(unreg.ok()) << unreg.status();
  EXPECT_FALSE(unreg->destroyed());
  EXPECT_EQ(unreg->users_left(), 1u);
  std::vector<v1::PageHandle> held = Alloc(pool, 3);
  EXPECT_EQ(held.size(), 3u);
  auto d = c().DestroyPool(pool);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->destroyed());
  EXPECT_EQ(d->pages_unmapped(), 3u);
  EXPECT_EQ(Domain(dev).violations().total(), 0u);
}

TEST_F(ServiceQueueTest, BadRestartsGetTheirCodesAndChangeNothing) {
  const uint64_t dev = NewDevice().id();
  const uint64_t other_dev = NewDevice().id();
  const uint64_t old = NewPool(dev, /*xdp_rxq=*/true);
  const uint64_t plain = NewPool(dev);
  auto pools_now = [&] {
    auto l = c().ListPools(0);
    EXPECT_TRUE(l.ok());
    return l.ok() ? l->pools_size() : -1;
  };
  const int pools = pools_now();

  struct Case {
    const char* what;
    v1::CreatePoolRequest req;
    absl::StatusCode code;
    const char* says;
  };
  std::vector<Case> cases;
  {
    Case k{"keep_old_xdp_rxq without replaces_pool_id", PoolRequest(dev, false),
           absl::StatusCode::kInvalidArgument, "keep_old_xdp_rxq"};
    k.req.set_keep_old_xdp_rxq(true);
    cases.push_back(k);
  }
  {
    Case k{"an unknown pool", PoolRequest(dev, false), absl::StatusCode::kNotFound, "pool 999"};
    k.req.set_replaces_pool_id(999);
    cases.push_back(k);
  }
  {
    Case k{"a pool of another device", PoolRequest(other_dev, false),
           absl::StatusCode::kInvalidArgument, "not of device"};
    k.req.set_replaces_pool_id(old);
    cases.push_back(k);
  }
  {
    Case k{"a new pool that cannot be made", PoolRequest(dev, false),
           absl::StatusCode::kInvalidArgument, "order 11"};
    k.req.set_order(11);
    k.req.set_replaces_pool_id(old);
    cases.push_back(k);
  }
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    auto r = c().CreatePool(k.req);
    EXPECT_EQ(r.status().code(), k.code) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(k.says));
    EXPECT_EQ(pools_now(), pools);
    EXPECT_EQ(Alloc(old, 1).size(), 1u);  // the old queue still runs
  }
  // No xdp_rxq on the pool to unregister.
  auto no_xdp = XdpRxqUnreg(plain);
  EXPECT_EQ(no_xdp.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(no_xdp.status().message()), HasSubstr("no xdp_rxq"));
  EXPECT_FALSE(GetPool(plain).destroyed());

  // A queue already restarted cannot be restarted again.
  v1::CreatePoolRequest once = PoolRequest(dev, false);
  once.set_replaces_pool_id(old);
  once.set_keep_old_xdp_rxq(true);
  ASSERT_TRUE(c().CreatePool(once).ok());
  auto twice = c().CreatePool(once);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(twice.status().message()), HasSubstr("stopped"));
  EXPECT_EQ(pools_now(), pools + 1);

  // Unbind takes the kept xdp_rxq with it: nothing is live at the unbind.
  auto unbound = c().UnbindDevice(dev);
  ASSERT_TRUE(unbound.ok()) << unbound.status();
  EXPECT_EQ(unbound->pools_destroyed(), 3u);  // old (its xdp_rxq), plain, the restart's pool
  EXPECT_TRUE(GetPool(old).destroyed());
  const v1::DomainInfo dom = Domain(dev);
  EXPECT_EQ(dom.violations().total(), 0u);
  EXPECT_EQ(dom.violations().live_at_unbind(), 0u);
}

}  // namespace
}  // namespace pagepool
