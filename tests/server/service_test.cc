// Service tests: every PagePoolService call against an in-process pagepoold on 127.0.0.1:0, and a
// table of bad requests, each answered with its status code while the daemon keeps serving.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/health.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/loopback_http.h"
#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;

class ServiceTest : public testing::DaemonTest {
 protected:
  void SetUp() override { StartDaemon(); }

  absl::Status ReturnPages(uint64_t pool, const std::vector<v1::PageHandle>& pages) {
    v1::ReturnRequest req;
    req.set_pool_id(pool);
    for (const auto& h : pages) *req.add_pages() = h;
    return c().Return(req).status();
  }
};

TEST_F(ServiceTest, DeviceCalls) {
  v1::CreateDeviceRequest req;
  req.set_name("eth0");
  req.set_iommu_mode(v1::IOMMU_MODE_LAZY);
  req.set_address_width(39);
  auto created = c().CreateDevice(req);
  ASSERT_TRUE(created.ok()) << created.status();
  const v1::Device& dev = created->device();
  EXPECT_EQ(dev.name(), "eth0");
  EXPECT_EQ(dev.state(), v1::DEVICE_STATE_BOUND);
  EXPECT_EQ(dev.iommu_mode(), v1::IOMMU_MODE_LAZY);
  EXPECT_EQ(dev.address_width(), 39u);
  EXPECT_TRUE(dev.free_empty_tables());  // unset means on
  EXPECT_EQ(dev.ifindex(), dev.id());

  uint64_t defaulted = NewDevice(v1::IOMMU_MODE_UNSPECIFIED);
  auto got = c().GetDevice(defaulted);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->device().iommu_mode(), v1::IOMMU_MODE_STRICT);
  EXPECT_EQ(got->device().address_width(), 48u);
  EXPECT_EQ(got->device().domain().levels(), 4u);

  auto list = c().ListDevices();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->devices_size(), 2);
  EXPECT_EQ(list->devices(0).id(), dev.id());

  uint64_t pool = NewPool(dev.id());
  auto held = Alloc(pool, 10);
  auto unbound = c().UnbindDevice(dev.id());
  ASSERT_TRUE(unbound.ok()) << unbound.status();
  EXPECT_EQ(unbound->pools_destroyed(), 1u);
  EXPECT_EQ(unbound->inflight_at_destroy(), 10u);
  EXPECT_EQ(unbound->pages_unmapped(), 10u);
  EXPECT_EQ(unbound->device().state(), v1::DEVICE_STATE_UNBOUND);
  // Pages held across the unbind come back without any DMA-API call: zero violations.
  EXPECT_TRUE(ReturnPages(pool, held).ok());
  auto dom = c().GetDomain(dev.id());
  ASSERT_TRUE(dom.ok());
  EXPECT_EQ(dom->domain().violations().total(), 0u);
  EXPECT_EQ(dom->domain().live_mappings(), 0u);
}

// GetDomain carries the invalidation model's figures and the table protocol's counters; a device
// created with model_iotlb says so, and its DMA writes into the allocated pages fill its walk
// caches. DumpPageTable with walk_cache sends the walk cache beside the leaves.
TEST_F(ServiceTest, GetDomainShowsInvalidationsTablesAndWalkCache) {
  v1::CreateDeviceRequest req;
  req.set_model_iotlb(true);
  const uint64_t dev = NewDevice(req);
  const uint64_t plain = NewDevice();
  const uint64_t pool = NewPool(dev);
  auto held = Alloc(pool, 8);
  ASSERT_EQ(held.size(), 8u);

  auto before = c().GetDomain(dev);
  ASSERT_TRUE(before.ok()) << before.status();
  const v1::DomainInfo b = before->domain();
  EXPECT_TRUE(b.model_iotlb());
  EXPECT_TRUE(b.dirty_tracking());
  EXPECT_GT(b.table_pages(), 0u);
  EXPECT_GE(b.iommu_pages(), b.table_pages());  // linked tables count until released
  EXPECT_GT(b.mapped_pages(), 0u);
  EXPECT_GT(b.walk_cache_entries(), 0u);  // the device wrote into the 8 pages
  EXPECT_EQ(b.faults(), 0u);

  v1::DumpPageTableRequest dump;
  dump.set_device_id(dev);
  dump.set_walk_cache(true);
  auto dumped = c().DumpPageTable(dump);
  ASSERT_TRUE(dumped.ok()) << dumped.status();
  EXPECT_EQ(uint64_t(dumped->entries_size()), b.mapped_pages());
  EXPECT_EQ(uint64_t(dumped->walk_cache_size()), b.walk_cache_entries());
  for (const v1::WalkCacheEntry& e : dumped->walk_cache()) EXPECT_FALSE(e.stale());
  dump.set_start(uint64_t{1} << 47);  // a range with no leaves: the walk cache alone, then the end
  dump.set_end(uint64_t{1} << 47 | 4096);
  dumped = c().DumpPageTable(dump);
  ASSERT_TRUE(dumped.ok()) << dumped.status();
  EXPECT_EQ(dumped->entries_size(), 0);

  ASSERT_TRUE(ReturnPages(pool, held).ok());
  ASSERT_TRUE(c().DestroyPool(pool).ok());
  auto after = c().GetDomain(dev);
  ASSERT_TRUE(after.ok()) << after.status();
  const v1::DomainInfo& a = after->domain();
  const uint64_t unmaps = a.unmaps() - b.unmaps();
  ASSERT_GT(unmaps, 0u);
  const uint64_t commands = (a.iotlb_inv_leaf() - b.iotlb_inv_leaf()) +
                            (a.iotlb_inv_nonleaf() - b.iotlb_inv_nonleaf()) +
                            (a.iotlb_inv_domain() - b.iotlb_inv_domain());
  EXPECT_GE(commands, 1u);  // strict mode: every unmap is invalidated before it returns
  EXPECT_LE(commands, 2 * unmaps);
  // Each ranged leaf-only command covers at least one page.
  EXPECT_GE(a.iotlb_inv_pages() - b.iotlb_inv_pages(), a.iotlb_inv_leaf() - b.iotlb_inv_leaf());
  EXPECT_GT(a.tables_freed(), b.tables_freed());  // the pool's tables emptied and were freed
  EXPECT_GE(a.iommu_pages(), a.table_pages());
  EXPECT_EQ(a.walk_cache_stale_walks(), 0u);
  EXPECT_EQ(a.released_tables_not_zero(), 0u);

  auto p = c().GetDomain(plain);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->domain().model_iotlb());
  EXPECT_EQ(p->domain().walk_cache_entries(), 0u);
  EXPECT_EQ(p->domain().iotlb_hits(), 0u);
}

TEST_F(ServiceTest, PoolAndPageCalls) {
  uint64_t dev = NewDevice();
  v1::CreatePoolRequest req;
  req.set_device_id(dev);
  req.set_napi_id(7);
  req.set_pool_size(256);
  auto created = c().CreatePool(req);
  ASSERT_TRUE(created.ok()) << created.status();
  const v1::Pool& pool = created->pool();
  EXPECT_EQ(pool.ifindex(), dev);
  EXPECT_EQ(pool.napi_id(), 7u);
  EXPECT_EQ(pool.strategy(), v1::STRATEGY_XARRAY);  // unspecified means XARRAY
  EXPECT_TRUE(pool.flags().dma_map());              // unset means on
  EXPECT_EQ(pool.detach_time(), 0);

  auto a = c().Allocate(pool.id(), 5);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->pages_size(), 5);
  for (const auto& p : a->pages()) EXPECT_NE(p.dma_addr(), 0u);

  auto got = c().GetPool(pool.id());
  ASSERT_TRUE(got.ok());
  EXPECT_GE(got->pool().inflight(), 5u);
  EXPECT_EQ(got->pool().inflight_mem(), got->pool().inflight() * 4096);
  EXPECT_GE(got->pool().dma_mapped(), 5u);
  EXPECT_EQ(got->pool().stats().alloc_slow(), 1u);  // one bulk of 64

  auto inflight = c().ListInflight(pool.id());
  ASSERT_TRUE(inflight.ok());
  EXPECT_EQ(uint64_t(inflight->pages_size()), got->pool().dma_mapped());
  auto limited = c().ListInflight(pool.id(), 3);
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->pages_size(), 3);

  v1::DumpPageTableRequest dump;
  dump.set_device_id(dev);
  auto entries = c().DumpPageTable(dump);
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(uint64_t(entries->entries_size()), got->pool().dma_mapped());
  dump.set_limit(2);
  EXPECT_EQ(c().DumpPageTable(dump)->entries_size(), 2);

  v1::RecycleRequest rec;
  rec.set_pool_id(pool.id());
  rec.set_napi_local(true);
  *rec.add_pages() = a->pages(0).handle();
  *rec.add_pages() = a->pages(1).handle();
  auto r1 = c().Recycle(rec);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->cached(), 2u);
  rec.clear_pages();
  rec.set_napi_local(false);
  *rec.add_pages() = a->pages(2).handle();
  auto r2 = c().Recycle(rec);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->ring(), 1u);

  v1::ReturnRequest ret;
  ret.set_pool_id(pool.id());
  *ret.add_pages() = a->pages(3).handle();
  *ret.add_pages() = a->pages(4).handle();
  auto r3 = c().Return(ret);
  ASSERT_TRUE(r3.ok()) << r3.status();
  EXPECT_EQ(r3->returned(), 2u);
  EXPECT_EQ(r3->unmapped(), 2u);

  auto pools = c().ListPools(dev);
  ASSERT_TRUE(pools.ok());
  ASSERT_EQ(pools->pools_size(), 1);
  EXPECT_EQ(c().ListPools(0)->pools_size(), 1);  // 0: every device

  auto held = Alloc(pool.id(), 3);
  auto destroyed = c().DestroyPool(pool.id());
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_EQ(destroyed->inflight_at_destroy(), 3u);
  // As page_pool_scrub: the index walk unmaps the user's pages and the page parked in the ring.
  EXPECT_EQ(destroyed->pages_unmapped(), 4u);
  EXPECT_EQ(destroyed->strategy(), v1::STRATEGY_XARRAY);
  auto detached = c().GetPool(pool.id());
  ASSERT_TRUE(detached.ok());
  EXPECT_TRUE(detached->pool().destroyed());
  EXPECT_GT(detached->pool().detach_time(), 0);
  EXPECT_TRUE(ReturnPages(pool.id(), held).ok());
  auto dom = c().GetDomain(dev);
  ASSERT_TRUE(dom.ok());
  EXPECT_EQ(dom->domain().violations().total(), 0u);
  EXPECT_EQ(dom->domain().mapped_pages(), 0u);
}

// grpc.health.v1 answers for the empty name and for the service's own name (Kubernetes' grpc probe
// may name it); unknown names are NOT_FOUND.
TEST_F(ServiceTest, HealthServesTheServiceName) {
  for (const char* name : {"", "pagepool.v1.PagePoolService"}) {
    auto status = client::CheckHealth(c(), name);
    ASSERT_TRUE(status.ok()) << name << ": " << status.status();
    EXPECT_EQ(*status, client::ServingStatus::kServing) << name;
  }
  EXPECT_EQ(client::CheckHealth(c(), "pagepool.v1.NoSuchService").status().code(),
            absl::StatusCode::kNotFound);
}

// A client may keep many batches in flight (ppctl traffic --window): the stream reads ahead while
// it answers, past the point where it pauses reading for the client to catch up, and answers in
// order.
TEST_F(ServiceTest, TrafficStreamAnswersPipelinedBatchesInOrder) {
  uint64_t pool = NewPool(NewDevice());
  grpc::ClientContext ctx;
  auto rw = c().stub()->Traffic(&ctx);
  constexpr int kBatches = 80;  // more than the stream queues before it stops reading
  v1::TrafficRequest req;
  for (int i = 1; i <= kBatches; ++i) {
    req.Clear();
    req.set_pool_id(pool);
    req.set_seq(i);
    req.set_allocate(8);
    ASSERT_TRUE(rw->Write(req));
  }
  v1::TrafficResponse resp;
  std::vector<v1::PageHandle> held;
  for (int i = 1; i <= kBatches; ++i) {
    ASSERT_TRUE(rw->Read(&resp));
    EXPECT_EQ(resp.seq(), uint64_t(i));
    EXPECT_EQ(resp.errors(), 0u) << resp.error_message();
    ASSERT_EQ(resp.allocated_size(), 8);
    for (const auto& p : resp.allocated()) held.push_back(p.handle());
  }
  req.Clear();
  req.set_pool_id(pool);
  req.set_seq(kBatches + 1);
  for (const auto& h : held) *req.add_return_pages() = h;
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.returned(), held.size());
  EXPECT_EQ(resp.errors(), 0u) << resp.error_message();
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
  std::sort(held.begin(), held.end(),
            [](const auto& a, const auto& b) { return a.frame() < b.frame(); });
  for (size_t i = 1; i < held.size(); ++i) {
    EXPECT_NE(held[i].frame(), held[i - 1].frame()) << "a page handed out twice";
  }
}

TEST_F(ServiceTest, TrafficStream) {
  uint64_t pool = NewPool(NewDevice());
  grpc::ClientContext ctx;
  auto rw = c().stub()->Traffic(&ctx);
  v1::TrafficRequest req;
  v1::TrafficResponse resp;
  std::vector<v1::PageHandle> prev;
  for (int i = 0; i < 100; ++i) {
    req.Clear();
    req.set_pool_id(pool);
    req.set_seq(i);
    req.set_allocate(64);
    req.set_napi_local(true);
    for (auto& h : prev) *req.add_recycle() = h;
    prev.clear();
    ASSERT_TRUE(rw->Write(req));
    ASSERT_TRUE(rw->Read(&resp));
    EXPECT_EQ(resp.seq(), uint64_t(i));
    EXPECT_EQ(resp.errors(), 0u) << resp.error_message();
    ASSERT_EQ(resp.allocated_size(), 64);
    EXPECT_EQ(resp.recycled_cached() + resp.recycled_ring() + resp.recycled_released(),
              i == 0 ? 0u : 64u);
    for (const auto& p : resp.allocated()) prev.push_back(p.handle());
  }
  // Errors inside a batch are reported and the stream goes on.
  req.Clear();
  req.set_pool_id(pool);
  *req.add_return_pages() = prev[0];
  *req.add_return_pages() = prev[0];  // the second is a double return
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.returned(), 1u);
  EXPECT_EQ(resp.errors(), 1u);
  EXPECT_EQ(resp.error_code(), int(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_THAT(resp.error_message(), HasSubstr("page #1"));
  req.Clear();
  req.set_pool_id(pool + 1000);
  req.set_allocate(1);
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.error_code(), int(grpc::StatusCode::NOT_FOUND));
  EXPECT_THAT(resp.error_message(), HasSubstr("not found"));
  req.Clear();
  req.set_pool_id(pool);
  for (size_t i = 1; i < prev.size(); ++i) *req.add_return_pages() = prev[i];
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.returned(), 63u);
  EXPECT_EQ(resp.errors(), 0u);
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
  EXPECT_GE(d_->daemon().rpc_stats().traffic_page_ops(), 100u * 64);
}

TEST_F(ServiceTest, WatchEvents) {
  uint64_t dev = NewDevice();
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.set_include_existing(true);
  auto reader = c().stub()->WatchEvents(&ctx, req);
  v1::Event ev;
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_DEVICE_ADD);
  EXPECT_EQ(ev.device().id(), dev);
  uint64_t pool = NewPool(dev);
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_ADD);
  EXPECT_EQ(ev.pool().id(), pool);
  auto held = Alloc(pool, 2);
  ASSERT_TRUE(c().DestroyPool(pool).ok());
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_DETACH);
  EXPECT_GT(ev.pool().detach_time(), 0);
  ASSERT_TRUE(ReturnPages(pool, held).ok());
  // The release-retry tick (1 s) notices the last page came back.
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_DELETE);
  EXPECT_EQ(ev.pool().id(), pool);
  EXPECT_EQ(c().GetPool(pool).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(c().UnbindDevice(dev).ok());
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_DEVICE_CHANGE);
  EXPECT_EQ(ev.device().state(), v1::DEVICE_STATE_UNBOUND);
  EXPECT_GT(ev.seq(), 0u);
  // Daemon shutdown ends the stream with OK.
  d_->Stop();
  EXPECT_FALSE(reader->Read(&ev));
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(ServiceTest, WatchEventsFilterAndCancel) {
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.add_types(v1::EVENT_TYPE_POOL_ADD);
  auto reader = c().stub()->WatchEvents(&ctx, req);
  uint64_t dev = NewDevice();  // filtered out
  uint64_t pool = NewPool(dev);
  v1::Event ev;
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::EVENT_TYPE_POOL_ADD);
  EXPECT_EQ(ev.pool().id(), pool);
  ctx.TryCancel();
  while (reader->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The daemon keeps serving and publishing.
  EXPECT_TRUE(c().ListDevices().ok());
  EXPECT_NE(NewPool(dev), 0u);
}

// ListPools naming a device that does not exist is NOT_FOUND (it answered OK with an empty list);
// an unbound device still lists its detached pools.
TEST_F(ServiceTest, ListPoolsOfAnUnknownDeviceIsNotFound) {
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  auto held = Alloc(pool, 1);
  auto unknown = c().ListPools(dev + 100);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(unknown.status().message()),
              HasSubstr("device " + std::to_string(dev + 100) + " not found"));
  ASSERT_TRUE(c().UnbindDevice(dev).ok());
  auto detached = c().ListPools(dev);
  ASSERT_TRUE(detached.ok()) << detached.status();
  ASSERT_EQ(detached->pools_size(), 1);
  EXPECT_TRUE(detached->pools(0).destroyed());
  EXPECT_TRUE(ReturnPages(pool, held).ok());
}

// Unary Return and Recycle are all-or-nothing: a bad page anywhere in the list means no page was
// given back, the error names its index and says so, and the client can retry the fixed list
// without a double return. (Page #0 used to be returned before page #1 was refused.)
TEST_F(ServiceTest, UnaryGiveBacksAreAllOrNothing) {
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  uint64_t other = NewPool(dev);
  auto mine = Alloc(pool, 4);
  auto theirs = Alloc(other, 1);
  ASSERT_TRUE(ReturnPages(pool, {mine[3]}).ok());
  v1::PageHandle beyond;
  beyond.set_frame(uint64_t{1} << 40);
  beyond.set_generation(1);
  v1::PageHandle even = mine[0];
  even.set_generation(even.generation() + 1);
  struct Bad {
    const char* name;
    v1::PageHandle page;
    absl::StatusCode code;
    const char* says;
  };
  const Bad bads[] = {
      {"already returned", mine[3], absl::StatusCode::kFailedPrecondition, "double return"},
      {"page of another pool", theirs[0], absl::StatusCode::kFailedPrecondition, "belongs to pool"},
      {"frame beyond memory", beyond, absl::StatusCode::kInvalidArgument, "beyond memory"},
      {"generation never handed out", even, absl::StatusCode::kFailedPrecondition,
       "never handed out"},
      {"page named twice", mine[0], absl::StatusCode::kInvalidArgument, "named twice"},
  };
  for (const Bad& bad : bads) {
    SCOPED_TRACE(bad.name);
    // Good pages first, the bad one at index 2: none of the good ones may be given back.
    std::vector<v1::PageHandle> list = {mine[0], mine[1], bad.page, mine[2]};
    absl::Status r = ReturnPages(pool, list);
    EXPECT_EQ(r.code(), bad.code) << r;
    EXPECT_THAT(std::string(r.message()), HasSubstr("page #2"));
    EXPECT_THAT(std::string(r.message()), HasSubstr(bad.says));
    EXPECT_THAT(std::string(r.message()), HasSubstr("no page was returned"));
    v1::RecycleRequest rec;
    rec.set_pool_id(pool);
    for (const auto& h : list) *rec.add_pages() = h;
    auto rr = c().Recycle(rec);
    EXPECT_EQ(rr.status().code(), bad.code) << rr.status();
    EXPECT_THAT(std::string(rr.status().message()), HasSubstr("no page was recycled"));
  }
  // Nothing was given back: the fixed list goes through in one call, each page once.
  v1::ReturnRequest fixed;
  fixed.set_pool_id(pool);
  for (int i = 0; i < 3; ++i) *fixed.add_pages() = mine[i];
  auto ok = c().Return(fixed);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->returned(), 3u);
  EXPECT_EQ(c().GetDomain(dev)->domain().violations().total(), 0u);
}

// A call to a method or service the daemon does not have answers UNIMPLEMENTED naming it and
// pointing to reflection (it answered with an empty message); health and PagePoolService still
// answer, and the calls are counted.
TEST_F(ServiceTest, UnknownMethodIsUnimplementedNamingIt) {
  grpc::GenericStub generic(c().channel());
  for (const char* method : {"/pagepool.v1.PagePoolService/Nope", "/no.such.Service/Call"}) {
    SCOPED_TRACE(method);
    grpc::ClientContext ctx;
    grpc::Slice empty("");
    grpc::ByteBuffer req(&empty, 1), resp;
    grpc::Status st;
    std::atomic<bool> done{false};
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
      st = s;
      done = true;
    });
    for (int i = 0; i < 500 && !done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(done);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
    EXPECT_THAT(st.error_message(), HasSubstr(std::string("unknown method '") + method + "'"));
    EXPECT_THAT(st.error_message(), HasSubstr("grpcurl -plaintext HOST:PORT list"));
  }
  EXPECT_EQ(d_->daemon().rpc_stats().unknown_method(), 2u);
  EXPECT_EQ(*client::CheckHealth(c(), ""), client::ServingStatus::kServing);
  EXPECT_TRUE(c().ListDevices().ok());
}

// One bad request: a call and the code it must get.
struct BadCase {
  const char* name;
  absl::StatusCode code;
  std::function<absl::Status()> call;
};

TEST_F(ServiceTest, BadRequestsGetTheirCodeAndTheDaemonKeepsServing) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.max_devices = 4;
  o.max_pools = 6;
  o.max_pages_per_call = 70000;
  o.max_message_bytes = 1 << 20;
  d_.reset();
  StartDaemon(o);

  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  uint64_t other = NewPool(dev);
  auto mine = Alloc(pool, 4);
  auto theirs = Alloc(other, 1);
  ASSERT_EQ(mine.size(), 4u);
  ASSERT_EQ(theirs.size(), 1u);
  ASSERT_TRUE(ReturnPages(pool, {mine[3]}).ok());  // mine[3] is now returned
  // A destroyed pool that stays findable (a page still held) and an unbound device.
  uint64_t doomed = NewPool(dev);
  auto doomed_pages = Alloc(doomed, 2);
  ASSERT_TRUE(c().DestroyPool(doomed).ok());
  uint64_t gone_dev = NewDevice();
  ASSERT_TRUE(c().UnbindDevice(gone_dev).ok());
  v1::PageHandle stale = mine[0];
  stale.set_generation(stale.generation() + 7);
  v1::PageHandle beyond;
  beyond.set_frame(uint64_t{1} << 40);

  auto recycle = [&](uint64_t p, std::vector<v1::PageHandle> pages) {
    v1::RecycleRequest r;
    r.set_pool_id(p);
    for (auto& h : pages) *r.add_pages() = h;
    return c().Recycle(r).status();
  };
  auto create_device = [&](int mode, uint32_t width) {
    v1::CreateDeviceRequest r;
    r.set_iommu_mode(static_cast<v1::IommuMode>(mode));
    r.set_address_width(width);
    return c().CreateDevice(r).status();
  };
  auto create_pool = [&](uint64_t d, int strategy, uint32_t order) {
    v1::CreatePoolRequest r;
    r.set_device_id(d);
    r.set_strategy(static_cast<v1::Strategy>(strategy));
    r.set_order(order);
    return c().CreatePool(r).status();
  };
  auto watch = [&](int type) {
    grpc::ClientContext ctx;
    v1::WatchEventsRequest r;
    r.add_types(static_cast<v1::EventType>(type));
    auto reader = c().stub()->WatchEvents(&ctx, r);
    v1::Event ev;
    while (reader->Read(&ev)) {
    }
    return client::FromGrpc(reader->Finish());
  };
  using C = absl::StatusCode;
  const std::vector<BadCase> cases = {
      {"GetDevice unknown id", C::kNotFound, [&] { return c().GetDevice(999).status(); }},
      {"GetDevice id 0", C::kNotFound, [&] { return c().GetDevice(0).status(); }},
      {"UnbindDevice unknown id", C::kNotFound, [&] { return c().UnbindDevice(999).status(); }},
      {"GetDomain unknown id", C::kNotFound, [&] { return c().GetDomain(999).status(); }},
      {"GetPool unknown id", C::kNotFound, [&] { return c().GetPool(999).status(); }},
      {"DestroyPool unknown id", C::kNotFound, [&] { return c().DestroyPool(999).status(); }},
      {"Allocate unknown pool", C::kNotFound, [&] { return c().Allocate(999, 1).status(); }},
      {"Recycle unknown pool", C::kNotFound, [&] { return recycle(999, {mine[0]}); }},
      {"Return unknown pool", C::kNotFound, [&] { return ReturnPages(999, {mine[0]}); }},
      {"ListInflight unknown pool", C::kNotFound, [&] { return c().ListInflight(999).status(); }},
      {"DumpPageTable unknown device", C::kNotFound,
       [&] {
         v1::DumpPageTableRequest r;
         r.set_device_id(999);
         return c().DumpPageTable(r).status();
       }},
      {"CreatePool unknown device", C::kNotFound, [&] { return create_pool(999, 0, 0); }},
      {"ListPools unknown device", C::kNotFound, [&] { return c().ListPools(999).status(); }},
      {"Return with a bad page #1", C::kFailedPrecondition,
       [&] {
         return ReturnPages(pool, {mine[0], mine[3]});
       }},
      {"Return naming a page twice", C::kInvalidArgument,
       [&] {
         return ReturnPages(pool, {mine[0], mine[0]});
       }},
      {"Allocate count 0", C::kInvalidArgument, [&] { return c().Allocate(pool, 0).status(); }},
      {"Recycle no pages", C::kInvalidArgument, [&] { return recycle(pool, {}); }},
      {"Return no pages", C::kInvalidArgument, [&] { return ReturnPages(pool, {}); }},
      {"Return frame beyond memory", C::kInvalidArgument,
       [&] { return ReturnPages(pool, {beyond}); }},
      {"CreateDevice iommu_mode 99", C::kInvalidArgument, [&] { return create_device(99, 0); }},
      {"CreateDevice iommu_mode -1", C::kInvalidArgument, [&] { return create_device(-1, 0); }},
      {"CreateDevice address_width 40", C::kInvalidArgument, [&] { return create_device(1, 40); }},
      {"CreatePool strategy 42", C::kInvalidArgument, [&] { return create_pool(dev, 42, 0); }},
      {"CreatePool order 11", C::kInvalidArgument, [&] { return create_pool(dev, 1, 11); }},
      {"DumpPageTable start >= end", C::kInvalidArgument,
       [&] {
         v1::DumpPageTableRequest r;
         r.set_device_id(dev);
         r.set_start(8192);
         r.set_end(4096);
         return c().DumpPageTable(r).status();
       }},
      {"WatchEvents type 77", C::kInvalidArgument, [&] { return watch(77); }},
      {"WatchEvents type unspecified", C::kInvalidArgument, [&] { return watch(0); }},
      {"Recycle stale generation", C::kFailedPrecondition, [&] { return recycle(pool, {stale}); }},
      {"Return stale generation", C::kFailedPrecondition,
       [&] { return ReturnPages(pool, {stale}); }},
      {"Return already returned", C::kFailedPrecondition,
       [&] { return ReturnPages(pool, {mine[3]}); }},
      {"Recycle already returned", C::kFailedPrecondition,
       [&] { return recycle(pool, {mine[3]}); }},
      {"Return page of another pool", C::kFailedPrecondition,
       [&] { return ReturnPages(pool, {theirs[0]}); }},
      {"Recycle page of another pool", C::kFailedPrecondition,
       [&] { return recycle(pool, {theirs[0]}); }},
      {"Allocate on destroyed pool", C::kFailedPrecondition,
       [&] { return c().Allocate(doomed, 1).status(); }},
      {"DestroyPool twice", C::kFailedPrecondition,
       [&] { return c().DestroyPool(doomed).status(); }},
      {"CreatePool on unbound device", C::kFailedPrecondition,
       [&] { return create_pool(gone_dev, 0, 0); }},
      {"UnbindDevice twice", C::kFailedPrecondition,
       [&] { return c().UnbindDevice(gone_dev).status(); }},
      {"Allocate above --max-pages-per-call", C::kResourceExhausted,
       [&] { return c().Allocate(pool, 70001).status(); }},
      {"Allocate count 2^32-1", C::kResourceExhausted,
       [&] { return c().Allocate(pool, 0xffffffffu).status(); }},
      {"Allocate beyond simulated memory", C::kResourceExhausted,
       [&] { return c().Allocate(pool, 66000).status(); }},
      {"Return message above --max-message-bytes", C::kResourceExhausted,
       [&] {
         std::vector<v1::PageHandle> many(200000, mine[0]);
         return ReturnPages(pool, many);
       }},
      {"CreateDevice above --max-devices", C::kResourceExhausted,
       [&] {
         absl::Status s;
         for (int i = 0; i < 5 && s.ok(); ++i) s = create_device(1, 48);
         return s;
       }},
      {"CreatePool above --max-pools", C::kResourceExhausted,
       [&] {
         absl::Status s;
         for (int i = 0; i < 7 && s.ok(); ++i) s = create_pool(dev, 1, 0);
         return s;
       }},
  };
  for (const BadCase& bc : cases) {
    SCOPED_TRACE(bc.name);
    absl::Status s = bc.call();
    EXPECT_EQ(s.code(), bc.code) << s;
    EXPECT_FALSE(s.message().empty());
    // The daemon keeps serving: a good call right after.
    auto good = c().Allocate(pool, 1);
    ASSERT_TRUE(good.ok()) << good.status();
    EXPECT_TRUE(ReturnPages(pool, {good->pages(0).handle()}).ok());
  }
  // Messages name what was wrong.
  EXPECT_THAT(std::string(c().GetPool(999).status().message()), HasSubstr("pool 999"));
  EXPECT_THAT(std::string(c().Allocate(pool, 0).status().message()), HasSubstr("count"));
  EXPECT_THAT(std::string(ReturnPages(pool, {mine[3]}).message()), HasSubstr("page #0"));
  // No bad request caused a DMA-API misuse.
  EXPECT_EQ(c().GetDomain(dev)->domain().violations().total(), 0u);
}

TEST_F(ServiceTest, ManyClientsOnOnePool) {
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  constexpr int kThreads = 6;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto cl = client::Client::Connect(d_->address());
      if (!cl.ok()) {
        ++failures;
        return;
      }
      grpc::ClientContext ctx;
      auto rw = (*cl)->stub()->Traffic(&ctx);
      v1::TrafficRequest req;
      v1::TrafficResponse resp;
      std::vector<v1::PageHandle> prev;
      for (int i = 0; i < 300; ++i) {
        req.Clear();
        req.set_pool_id(pool);
        req.set_allocate(32);
        req.set_napi_local(t % 2 == 0);
        for (auto& h : prev) *(i % 3 == 0 ? req.add_return_pages() : req.add_recycle()) = h;
        prev.clear();
        if (!rw->Write(req) || !rw->Read(&resp) || resp.errors() != 0) {
          ++failures;
          break;
        }
        for (const auto& p : resp.allocated()) prev.push_back(p.handle());
      }
      req.Clear();
      req.set_pool_id(pool);
      for (auto& h : prev) *req.add_return_pages() = h;
      if (!rw->Write(req) || !rw->Read(&resp) || resp.errors() != 0) ++failures;
      rw->WritesDone();
      if (!rw->Finish().ok()) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  // Every user page came back: destroying unmaps none.
  auto destroyed = c().DestroyPool(pool);
  ASSERT_TRUE(destroyed.ok());
  EXPECT_EQ(destroyed->inflight_at_destroy(), 0u);
  auto dom = c().GetDomain(dev);
  EXPECT_EQ(dom->domain().violations().total(), 0u);
  EXPECT_EQ(dom->domain().mapped_pages(), 0u);
}

TEST_F(ServiceTest, ShutdownDestroysPoolsAndPrintsTheSummary) {
  uint64_t pool = NewPool(NewDevice());
  Alloc(pool, 7);
  d_->Stop();
  EXPECT_EQ(d_->exit_code(), 0);
  std::string log = d_->log();
  EXPECT_THAT(log, HasSubstr("pagepoold summary"));
  EXPECT_THAT(log, HasSubstr("pools destroyed at shutdown: 1"));
  EXPECT_THAT(log, HasSubstr("pages in flight at shutdown: 7"));
  EXPECT_THAT(log, HasSubstr("pages unmapped at shutdown:  7"));
  EXPECT_THAT(log, HasSubstr("violations:                  0"));
  EXPECT_THAT(log, HasSubstr("Allocate 1"));
}

// A pool with 20000 pages in flight (five chunks of the daemon's walk) listed through the stream:
// every page exactly once, in increasing index-id order, in messages of at most 256 pages; the
// limit cuts across a chunk boundary; start_index_id resumes a listing where it broke.
TEST_F(ServiceTest, ListInflightOfALargePoolStreamsEveryPageOnceAndResumes) {
  uint64_t pool = NewPool(NewDevice());
  std::vector<v1::PageHandle> held = Alloc(pool, 20000);
  ASSERT_EQ(held.size(), 20000u);
  const uint64_t mapped = c().GetPool(pool)->pool().dma_mapped();

  v1::ListInflightRequest req;
  req.set_pool_id(pool);
  grpc::ClientContext ctx;
  auto reader = c().stub()->ListInflight(&ctx, req);
  v1::ListInflightResponse msg;
  std::vector<v1::InflightPage> all;
  size_t messages = 0;
  while (reader->Read(&msg)) {
    ++messages;
    EXPECT_GE(msg.pages_size(), 1);
    EXPECT_LE(msg.pages_size(), 256);
    for (const auto& p : msg.pages()) all.push_back(p);
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(all.size(), mapped);
  EXPECT_EQ(messages, (mapped + 255) / 256);
  std::map<uint64_t, uint32_t> frames;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i > 0) {
      ASSERT_LT(all[i - 1].index_id(), all[i].index_id());
    }
    ASSERT_TRUE(frames.emplace(all[i].handle().frame(), all[i].handle().generation()).second);
  }
  for (const v1::PageHandle& h : held) {
    auto it = frames.find(h.frame());
    ASSERT_NE(it, frames.end()) << h.frame();
    EXPECT_EQ(it->second, h.generation());
  }

  auto limited = c().ListInflight(pool, 5000);  // across the first chunk's end (4096)
  ASSERT_TRUE(limited.ok()) << limited.status();
  ASSERT_EQ(limited->pages_size(), 5000);
  for (int i = 0; i < 5000; ++i) EXPECT_EQ(limited->pages(i).index_id(), all[i].index_id());

  // A listing that broke after 12345 pages resumes one above the last id received.
  const uint32_t resume = all[12344].index_id() + 1;
  auto rest = c().ListInflight(pool, 0, resume);
  ASSERT_TRUE(rest.ok()) << rest.status();
  ASSERT_EQ(size_t(rest->pages_size()), all.size() - 12345);
  for (int i = 0; i < rest->pages_size(); ++i) {
    ASSERT_EQ(rest->pages(i).index_id(), all[12345 + i].index_id());
  }
  auto some = c().ListInflight(pool, 10, resume);
  ASSERT_TRUE(some.ok());
  ASSERT_EQ(some->pages_size(), 10);
  EXPECT_EQ(some->pages(0).index_id(), all[12345].index_id());
  auto beyond = c().ListInflight(pool, 0, all.back().index_id() + 1);
  ASSERT_TRUE(beyond.ok());
  EXPECT_EQ(beyond->pages_size(), 0);
  EXPECT_EQ(c().ListInflight(9999, 0, 5).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ReturnPages(pool, held).ok());
}

// A device with a 20-bit DMA mask over the wire: shown in GetDevice, its IOVA space runs out at
// 255 pages with RESOURCE_EXHAUSTED naming it; a mask out of range is INVALID_ARGUMENT.
TEST_F(ServiceTest, DmaMaskOverTheWire) {
  v1::CreateDeviceRequest req;
  req.set_dma_mask_bits(12);
  auto bad = c().CreateDevice(req);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("dma_mask_bits 12"));
  req.set_dma_mask_bits(20);
  auto dev = c().CreateDevice(req);
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ(dev->device().dma_mask_bits(), 20u);
  auto got = c().GetDevice(dev->device().id());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->device().dma_mask_bits(), 20u);
  uint64_t pool = NewPool(dev->device().id());
  std::vector<v1::PageHandle> held = Alloc(pool, 255);
  ASSERT_EQ(held.size(), 255u);
  auto full = c().Allocate(pool, 1);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.status().message()), HasSubstr("IOVA space exhausted"));
  EXPECT_TRUE(ReturnPages(pool, held).ok());
  EXPECT_TRUE(c().Allocate(pool, 64).ok());
}

TEST_F(ServiceTest, DestroyStrategies) {
  uint64_t dev = NewDevice();
  // SCAN walks every frame of simulated memory and unmaps the pool's pages; it tracks nothing.
  uint64_t scan = NewPool(dev, v1::STRATEGY_SCAN);
  auto held = Alloc(scan, 5);
  EXPECT_EQ(c().ListInflight(scan)->pages_size(), 0);
  auto d = c().DestroyPool(scan);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->strategy(), v1::STRATEGY_SCAN);
  EXPECT_GT(d->frames_scanned(), 0u);
  EXPECT_EQ(d->inflight_at_destroy(), 5u);
  EXPECT_GE(d->pages_unmapped(), 5u);
  EXPECT_TRUE(ReturnPages(scan, held).ok());

  // NONE unmaps nothing at destroy; a late return on a bound device unmaps legally.
  uint64_t none = NewPool(dev, v1::STRATEGY_NONE);
  held = Alloc(none, 5);
  d = c().DestroyPool(none);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->strategy(), v1::STRATEGY_NONE);
  EXPECT_EQ(d->pages_unmapped(), 0u);
  v1::ReturnRequest ret;
  ret.set_pool_id(none);
  for (auto& h : held) *ret.add_pages() = h;
  auto r = c().Return(ret);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->unmapped(), 5u);
  EXPECT_EQ(c().GetDomain(dev)->domain().violations().total(), 0u);

  // NONE with the device unbound under it: each late return is a DMA-API call after unbind.
  uint64_t dev2 = NewDevice();
  uint64_t none2 = NewPool(dev2, v1::STRATEGY_NONE);
  held = Alloc(none2, 3);
  ASSERT_TRUE(c().UnbindDevice(dev2).ok());
  EXPECT_TRUE(ReturnPages(none2, held).ok());
  auto v = c().GetDomain(dev2)->domain().violations();
  EXPECT_GE(v.call_after_unbind(), 3u);
  EXPECT_EQ(v.total(), v.call_after_unbind() + v.live_at_unbind() + v.double_unmap() +
                           v.unknown_unmap() + v.size_mismatch() + v.direction_mismatch() +
                           v.sync_unknown());
}

// A lazy domain's flush queue holds unmaps (their IOVAs and tables) until one IOTLB invalidation
// covers them: 256 entries, or the kernel's 10 ms fq_timer. A few returns on an otherwise idle
// device never fill a queue, so only the daemon's timer can release them.
TEST_F(ServiceTest, LazyFlushQueueIsDrainedByTheTimer) {
  uint64_t dev = NewDevice(v1::IOMMU_MODE_LAZY);
  uint64_t pool = NewPool(dev);
  auto held = Alloc(pool, 8);
  ASSERT_EQ(held.size(), 8u);
  ASSERT_TRUE(ReturnPages(pool, held).ok());
  uint64_t pending = 1;
  for (int i = 0; i < 200 && pending != 0; ++i) {
    auto d = c().GetDomain(dev);
    ASSERT_TRUE(d.ok()) << d.status();
    pending = d->domain().fq_pending();
    if (pending != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(pending, 0u) << "lazy unmaps still queued after 2 s";
  auto d = c().GetDomain(dev);
  ASSERT_TRUE(d.ok());
  EXPECT_GT(d->domain().iotlb_flushes(), 0u);
  EXPECT_EQ(d->domain().violations().total(), 0u);
}

TEST_F(ServiceTest, TrafficBatchAboveTheLimitIsReported) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.max_pages_per_call = 100;
  d_.reset();
  StartDaemon(o);
  uint64_t pool = NewPool(NewDevice());
  grpc::ClientContext ctx;
  auto rw = c().stub()->Traffic(&ctx);
  v1::TrafficRequest req;
  v1::TrafficResponse resp;
  req.set_pool_id(pool);
  req.set_allocate(101);
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.error_code(), int(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_THAT(resp.error_message(), HasSubstr("--max-pages-per-call"));
  EXPECT_EQ(resp.allocated_size(), 0);
  req.set_allocate(100);
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.errors(), 0u);
  EXPECT_EQ(resp.allocated_size(), 100);
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
}

TEST(DaemonTlsTest, ServesOverTls) {
  char dir[] = "/tmp/pagepool-tls-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string d(dir);
  std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " +
      d + "/key.pem -out " + d + "/cert.pem >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl not available";
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.tls_cert = d + "/cert.pem";
  o.tls_key = d + "/key.pem";
  auto daemon = InProcessDaemon::Start(o);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  client::ClientOptions co;
  co.tls_ca = d + "/cert.pem";
  auto tls = client::Client::Connect((*daemon)->address(), co);
  ASSERT_TRUE(tls.ok());
  auto r = (*tls)->ListDevices();
  EXPECT_TRUE(r.ok()) << r.status();
  // A plaintext client cannot talk to it.
  auto plain = client::Client::Connect((*daemon)->address());
  EXPECT_FALSE((*plain)->ListDevices().ok());
  std::system(("rm -rf " + d).c_str());
}

// ListDevices over a TLS channel with `ca` as the root and, when given, a client certificate.
grpc::Status ListDevicesOverTls(const std::string& address, const std::string& ca,
                                const std::string& cert = "", const std::string& key = "") {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca;
  ssl.pem_cert_chain = cert;
  ssl.pem_private_key = key;
  auto stub = v1::PagePoolService::NewStub(grpc::CreateChannel(address, grpc::SslCredentials(ssl)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListDevicesResponse resp;
  return stub->ListDevices(&ctx, v1::ListDevicesRequest(), &resp);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Mutual TLS (--tls-client-ca): a client must present a certificate signed by that CA; without
// one, or with one the CA did not sign, the handshake fails. Certificates made by openssl here.
TEST(DaemonTlsTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  char dir[] = "/tmp/pagepool-mtls-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string d(dir);
  const std::string script =
      "set -e; cd " + d +
      "; openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key "
      "-out ca.pem; "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr; "
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > server.ext; "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile server.ext -out server.pem; "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr; "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-out client.pem; "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rogue -keyout rogue.key "
      "-out rogue.pem";
  if (std::system(("(" + script + ") >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "openssl not available";
  }
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.tls_cert = d + "/server.pem";
  o.tls_key = d + "/server.key";
  o.tls_client_ca = d + "/ca.pem";
  auto daemon = InProcessDaemon::Start(o);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::string& addr = (*daemon)->address();
  const std::string ca = Slurp(d + "/ca.pem");
  grpc::Status with_cert =
      ListDevicesOverTls(addr, ca, Slurp(d + "/client.pem"), Slurp(d + "/client.key"));
  EXPECT_TRUE(with_cert.ok()) << with_cert.error_message();
  EXPECT_EQ(ListDevicesOverTls(addr, ca).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(
      ListDevicesOverTls(addr, ca, Slurp(d + "/rogue.pem"), Slurp(d + "/rogue.key")).error_code(),
      grpc::StatusCode::UNAVAILABLE);
  auto plain = client::Client::Connect(addr);
  EXPECT_FALSE((*plain)->ListDevices().ok());
  // The daemon still serves the good client after the refused handshakes.
  EXPECT_TRUE(
      ListDevicesOverTls(addr, ca, Slurp(d + "/client.pem"), Slurp(d + "/client.key")).ok());
  std::system(("rm -rf " + d).c_str());
}

// GET over a plain socket; returns the whole answer.
std::string HttpGet(uint16_t port, const std::string& path) {
  return testing::AskLoopback(port, "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

TEST_F(ServiceTest, MetricsEndpoint) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.metrics_listen = "127.0.0.1:0";
  d_.reset();
  StartDaemon(o);
  uint64_t pool = NewPool(NewDevice());
  Alloc(pool, 3);
  ASSERT_EQ(c().GetPool(12345).status().code(), absl::StatusCode::kNotFound);
  uint16_t port = d_->daemon().metrics_port();
  ASSERT_NE(port, 0);
  std::string page = HttpGet(port, "/metrics");
  EXPECT_THAT(page, HasSubstr("200 OK"));
  EXPECT_THAT(page, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(page, HasSubstr("# TYPE pagepool_pool_inflight gauge"));
  EXPECT_THAT(page, HasSubstr("# HELP pagepool_domain_mapped_pages"));
  EXPECT_THAT(page, HasSubstr("pagepool_pool_inflight{pool_id=\"" + std::to_string(pool)));
  EXPECT_THAT(page, HasSubstr("pagepool_rpc_finished_total{method=\"Allocate\",code=\"OK\"} 1"));
  EXPECT_THAT(page,
              HasSubstr("pagepool_rpc_finished_total{method=\"GetPool\",code=\"NOT_FOUND\"} 1"));
  EXPECT_THAT(page, HasSubstr("pagepool_domain_violations_total{"));
  EXPECT_THAT(HttpGet(port, "/nope"), HasSubstr("404"));
}

TEST(DaemonStartTest, BadOptionsAreRefused) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.memory_gib = 0;
  EXPECT_EQ(InProcessDaemon::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = InProcessDaemon::DefaultOptions();
  o.tls_cert = "/nonexistent.pem";
  EXPECT_EQ(InProcessDaemon::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = InProcessDaemon::DefaultOptions();
  o.tls_client_ca = "/nonexistent-ca.pem";  // mutual TLS without a server certificate
  EXPECT_EQ(InProcessDaemon::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = InProcessDaemon::DefaultOptions();
  o.auth_token_file = "/nonexistent-token";
  EXPECT_EQ(InProcessDaemon::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = InProcessDaemon::DefaultOptions();
  o.max_watch_queue = 0;
  EXPECT_EQ(InProcessDaemon::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = InProcessDaemon::DefaultOptions();
  o.metrics_listen = "not-an-address";
  EXPECT_EQ(InProcessDaemon::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pagepool
