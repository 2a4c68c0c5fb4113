// File: tests/server/runtime_test.cc
//
// server::Runtime driven directly, without gRPC: devices and pools, pages allocated, recycled and
// returned, a pool destroyed with pages in flight, unbind, the limits, the events each call
// publishes, the release-retry tick, and the shutdown report.
#include "server/runtime.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/test_env.h"

namespace pagepool::server {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using Handles = google::protobuf::RepeatedPtrField<v1::PageHandle>;
using Pages = google::protobuf::RepeatedPtrField<v1::Page>;

// Collects events (the hub calls it under its mutex; the test reads after the calls return).
class Recorder final : public EventSink {
 public:
  void OnEvent(const v1::Event& e) override { events.push_back(e); }
  void OnClose() override { closed = true; }
  std::vector<v1::EventType> Types() const {
    std::vector<v1::EventType> t;
    for (const v1::Event& e : events) t.push_back(e.type());
    return t;
  }
  std::vector<v1::Event> events;
  bool closed = false;
};

class RuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(RuntimeOptions{uint64_t{64} << 20, 4, 3, 1000}); }
  void TearDown() override {
    if (rt_ != nullptr) rt_->Unsubscribe(&events_);
  }

  void Start(const RuntimeOptions& o) {
    if (rt_ != nullptr) rt_->Unsubscribe(&events_);
    auto rt = Runtime::Create(o);
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    events_ = Recorder();
    ASSERT_TRUE(rt_->Subscribe(&events_, false));
  }

  uint64_t NewDevice() {
    v1::Device d;
    EXPECT_TRUE(rt_->CreateDevice(v1::CreateDeviceRequest(), &d).ok());
    return d.id();
  }
  absl::StatusOr<uint64_t> TryNewPool(uint64_t device, v1::Strategy s = v1::STRATEGY_XARRAY) {
    v1::CreatePoolRequest req;
    req.set_device_id(device);
    req.set_strategy(s);
    v1::Pool p;
    absl::Status st = rt_->CreatePool(req, &p);
    if (!st.ok()) return st;
    return p.id();
  }
  uint64_t NewPool(uint64_t device, v1::Strategy s = v1::STRATEGY_XARRAY) {
    absl::StatusOr<uint64_t> id = TryNewPool(device, s);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : 0;
  }
  Handles Alloc(uint64_t pool, uint32_t n) {
    Pages pages;
    absl::Status s = rt_->Allocate(pool, n, &pages);
    EXPECT_TRUE(s.ok()) << s;
    Handles out;
    for (const v1::Page& p : pages) *out.Add() = p.handle();
    return out;
  }
  absl::Status ReturnAll(uint64_t pool, const Handles& pages) {
    v1::ReturnResponse r;
    return rt_->Return(pool, pages, &r);
  }
  // ReturnAll in calls of at most 1000 pages (the fixture's max_pages_per_call).
  absl::Status ReturnInBatches(uint64_t pool, const Handles& pages) {
    for (int i = 0; i < pages.size(); i += 1000) {
      Handles batch(pages.begin() + i, pages.begin() + std::min(pages.size(), i + 1000));
      if (absl::Status s = ReturnAll(pool, batch); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  std::unique_ptr<Runtime> rt_;
  Recorder events_;
};

TEST_F(RuntimeTest, DevicePoolAndPageCalls) {
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  v1::Pool got;
  ASSERT_TRUE(rt_->GetPool(pool, &got).ok());
  EXPECT_EQ(got.device_id(), dev);
  EXPECT_EQ(got.ifindex(), dev);
  EXPECT_TRUE(got.flags().has_dma_map());
  EXPECT_TRUE(got.flags().dma_map());
  EXPECT_EQ(got.strategy(), v1::STRATEGY_XARRAY);

  Handles pages = Alloc(pool, 4);
  ASSERT_EQ(pages.size(), 4);
  v1::RecycleResponse rec;
  Handles two(pages.begin(), pages.begin() + 2);
  ASSERT_TRUE(rt_->Recycle(pool, two, /*napi_local=*/true, &rec).ok());
  EXPECT_EQ(rec.cached(), 2u);
  Handles rest(pages.begin() + 2, pages.end());
  v1::ReturnResponse ret;
  ASSERT_TRUE(rt_->Return(pool, rest, &ret).ok());
  EXPECT_EQ(ret.returned(), 2u);
  EXPECT_EQ(ret.unmapped(), 2u);
  // A double return names the first bad page and the pool, and returns nothing (all-or-nothing).
  v1::ReturnResponse none;
  absl::Status twice = rt_->Return(pool, rest, &none);
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(twice.message()),
              HasSubstr("Return on pool " + std::to_string(pool) + ": page #0"));
  EXPECT_THAT(std::string(twice.message()), HasSubstr("no page was returned"));
  EXPECT_EQ(none.returned(), 0u);

  v1::Device d;
  ASSERT_TRUE(rt_->GetDevice(dev, &d).ok());
  ASSERT_EQ(d.pool_ids_size(), 1);
  EXPECT_EQ(d.pool_ids(0), pool);
  v1::ListPoolsResponse list;
  ASSERT_TRUE(rt_->ListPools(0, &list).ok());
  EXPECT_EQ(list.pools_size(), 1);
  ASSERT_TRUE(rt_->GetPool(pool, &got).ok());
  std::vector<InflightRecord> inflight;
  Runtime::InflightCursor all;
  ASSERT_TRUE(rt_->ListInflight(pool, &all, 0, &inflight).ok());
  EXPECT_EQ(inflight.size(), got.dma_mapped());
  EXPECT_TRUE(all.done());
  Runtime::InflightCursor five;
  ASSERT_TRUE(rt_->ListInflight(pool, &five, 5, &inflight).ok());
  EXPECT_EQ(inflight.size(), 5u);
  EXPECT_FALSE(five.done());
  EXPECT_EQ(events_.Types(),
            (std::vector<v1::EventType>{v1::EVENT_TYPE_DEVICE_ADD, v1::EVENT_TYPE_POOL_ADD}));
}

// Every chunk of a walk, from `cursor` until it is done, appended to *out; returns the chunks read.
size_t ListAll(Runtime& rt, uint64_t pool, Runtime::InflightCursor* cursor,
               std::vector<InflightRecord>* out, size_t max = 0) {
  size_t chunks = 0;
  std::vector<InflightRecord> chunk;
  while (!cursor->done()) {
    absl::Status s = rt.ListInflight(pool, cursor, max, &chunk);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) break;
    EXPECT_LE(chunk.size(), Runtime::kInflightChunk);
    out->insert(out->end(), chunk.begin(), chunk.end());
    ++chunks;
  }
  return chunks;
}

// A pool with more than three chunks of pages in flight: the walk lists every tracked page exactly
// once, in increasing index-id order, a chunk (at most kInflightChunk records) per call.
// A lazy device's queued unmaps wait for the daemon's one flush tick: its domain runs no timer
// thread of its own (one thread per device otherwise), and the tick releases them.
TEST_F(RuntimeTest, LazyDomainsAreFlushedByTheDaemonsTickAlone) {
  v1::CreateDeviceRequest dreq;
  dreq.set_iommu_mode(v1::IOMMU_MODE_LAZY);
  v1::Device dev;
  ASSERT_TRUE(rt_->CreateDevice(dreq, &dev).ok());
  const uint64_t pool = NewPool(dev.id());
  const Handles pages = Alloc(pool, 8);
  ASSERT_TRUE(ReturnAll(pool, pages).ok());
  v1::DestroyPoolResponse destroyed;
  ASSERT_TRUE(rt_->DestroyPool(pool, &destroyed).ok());
  auto domain = [&] {
    v1::DomainInfo d;
    EXPECT_TRUE(rt_->GetDomain(dev.id(), &d).ok());
    return d;
  };
  ASSERT_GT(domain().fq_pending(), 0u);
  // Five times the kernel's 10 ms timeout: a timer of the domain's own would have flushed.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_GT(domain().fq_pending(), 0u);
  rt_->FlushQueueTick();
  EXPECT_EQ(domain().fq_pending(), 0u);
  EXPECT_EQ(domain().iova_allocated_pages(), 0u);
  EXPECT_EQ(domain().violations().total(), 0u);
}

// A device that models its translation caches receives a packet into every buffer it is handed:
// its DMA write walks the page table (filling the walk caches) the first time and hits its IOTLB
// when the pool hands the same, still-mapped page out again. Other devices translate nothing.
TEST_F(RuntimeTest, AModelIotlbDeviceWritesEveryBufferItIsGiven) {
  v1::CreateDeviceRequest dreq;
  dreq.set_model_iotlb(true);
  v1::Device dev;
  ASSERT_TRUE(rt_->CreateDevice(dreq, &dev).ok());
  const uint64_t plain = NewDevice();
  auto domain = [&](uint64_t id) {
    v1::DomainInfo d;
    EXPECT_TRUE(rt_->GetDomain(id, &d).ok());
    return d;
  };
  for (uint64_t id : {dev.id(), plain}) {
    const uint64_t pool = NewPool(id);
    const Handles first = Alloc(pool, 16);
    ASSERT_EQ(first.size(), 16);
    const v1::DomainInfo filled = domain(id);
    v1::RecycleResponse rec;
    ASSERT_TRUE(rt_->Recycle(pool, first, /*napi_local=*/true, &rec).ok());
    const Handles again = Alloc(pool, 16);  // the same pages, from the pool's cache
    ASSERT_EQ(again.size(), 16);
    const v1::DomainInfo hit = domain(id);
    if (id == dev.id()) {
      EXPECT_GT(filled.walk_cache_entries(), 0u);
      EXPECT_GE(hit.iotlb_hits() - filled.iotlb_hits(), 16u);
    } else {
      EXPECT_EQ(hit.walk_cache_entries(), 0u);
      EXPECT_EQ(hit.iotlb_hits(), 0u);
    }
    EXPECT_EQ(hit.faults(), 0u);
    ASSERT_TRUE(ReturnAll(pool, again).ok());
    v1::DestroyPoolResponse destroyed;
    ASSERT_TRUE(rt_->DestroyPool(pool, &destroyed).ok());
    EXPECT_EQ(domain(id).walk_cache_stale_walks(), 0u);
    EXPECT_EQ(domain(id).violations().total(), 0u);
  }
  // A pool that does not DMA-map (its buffers have no IOVA) with a headroom offset: the device
  // translates nothing for it, and nothing faults.
  v1::CreatePoolRequest preq;
  preq.set_device_id(dev.id());
  preq.mutable_flags()->set_dma_map(false);
  preq.mutable_flags()->set_offset(256);
  preq.mutable_flags()->set_max_len(2048);
  v1::Pool unmapped;
  absl::Status created = rt_->CreatePool(preq, &unmapped);
  ASSERT_TRUE(created.ok()) << created;
  const v1::DomainInfo before = domain(dev.id());
  const Handles pages = Alloc(unmapped.id(), 8);
  ASSERT_EQ(pages.size(), 8);
  const v1::DomainInfo after = domain(dev.id());
  EXPECT_EQ(after.faults(), 0u);
  EXPECT_EQ(after.iotlb_hits(), before.iotlb_hits());
  EXPECT_EQ(after.walk_cache_hits(), before.walk_cache_hits());
  ASSERT_TRUE(ReturnAll(unmapped.id(), pages).ok());
}

TEST_F(RuntimeTest, ListInflightInChunksListsEveryPageOnceInOrder) {
  uint64_t pool = NewPool(NewDevice());
  Handles held;
  for (int i = 0; i < 13; ++i) held.MergeFrom(Alloc(pool, 1000));  // 13000 > 3 * 4096
  ASSERT_EQ(held.size(), 13000);
  v1::Pool got;
  ASSERT_TRUE(rt_->GetPool(pool, &got).ok());
  Runtime::InflightCursor cursor;
  std::vector<InflightRecord> all;
  const size_t chunks = ListAll(*rt_, pool, &cursor, &all);
  EXPECT_EQ(chunks, (got.dma_mapped() + Runtime::kInflightChunk - 1) / Runtime::kInflightChunk);
  EXPECT_GE(chunks, 4u);
  ASSERT_EQ(all.size(), got.dma_mapped());  // the held pages and those in the alloc cache
  std::map<uint64_t, uint32_t> frames;      // frame -> generation listed
  for (size_t i = 0; i < all.size(); ++i) {
    if (i > 0) {
      ASSERT_LT(all[i - 1].index_id, all[i].index_id);
    }
    EXPECT_NE(all[i].dma_addr, 0u);
    ASSERT_TRUE(frames.emplace(all[i].frame, all[i].generation).second) << all[i].frame;
  }
  for (const v1::PageHandle& h : held) {
    auto it = frames.find(h.frame());
    ASSERT_NE(it, frames.end()) << h.frame();
    EXPECT_EQ(it->second, h.generation());
  }
  // The same walk in small chunks, and resumed from an index id.
  Runtime::InflightCursor small;
  std::vector<InflightRecord> again;
  EXPECT_EQ(ListAll(*rt_, pool, &small, &again, 1000), (all.size() + 999) / 1000);
  ASSERT_EQ(again.size(), all.size());
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(again[i].index_id, all[i].index_id);
  const uint32_t from = all[5000].index_id;
  Runtime::InflightCursor resumed(from);
  std::vector<InflightRecord> tail;
  ListAll(*rt_, pool, &resumed, &tail);
  ASSERT_EQ(tail.size(), all.size() - 5000);
  EXPECT_EQ(tail.front().index_id, from);
  EXPECT_EQ(tail.back().index_id, all.back().index_id);
  ASSERT_TRUE(ReturnInBatches(pool, held).ok());
}

// Whatever the caller asks, one call hands back at most one chunk: the memory a listing holds is
// bounded by the chunk, not by the pool.
TEST_F(RuntimeTest, ListInflightReturnsAtMostOneChunkPerCall) {
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  Handles held;
  for (int i = 0; i < 5; ++i) held.MergeFrom(Alloc(pool, 1000));
  std::vector<InflightRecord> chunk;
  for (size_t max : {size_t{0}, Runtime::kInflightChunk + 1, size_t{1} << 30}) {
    Runtime::InflightCursor cursor;
    ASSERT_TRUE(rt_->ListInflight(pool, &cursor, max, &chunk).ok());
    EXPECT_EQ(chunk.size(), Runtime::kInflightChunk) << max;
    EXPECT_FALSE(cursor.done());
    EXPECT_EQ(cursor.next_index_id(), chunk.back().index_id + 1);
    EXPECT_LE(chunk.capacity(), Runtime::kInflightChunk) << max;
  }
  Runtime::InflightCursor one;
  ASSERT_TRUE(rt_->ListInflight(pool, &one, 1, &chunk).ok());
  ASSERT_EQ(chunk.size(), 1u);
  EXPECT_EQ(chunk[0].index_id, 1u);
  EXPECT_EQ(one.next_index_id(), 2u);
  // Past the last id: nothing, done at once.
  Runtime::InflightCursor beyond(1u << 30);
  ASSERT_TRUE(rt_->ListInflight(pool, &beyond, 0, &chunk).ok());
  EXPECT_TRUE(chunk.empty());
  EXPECT_TRUE(beyond.done());
  ASSERT_TRUE(rt_->ListInflight(pool, &beyond, 0, &chunk).ok());  // a done cursor stays done
  EXPECT_TRUE(chunk.empty());
  // Unknown pool: NOT_FOUND, nothing listed. Pools without an index list nothing.
  Runtime::InflightCursor unknown;
  chunk.resize(3);
  absl::Status nf = rt_->ListInflight(999, &unknown, 0, &chunk);
  EXPECT_EQ(nf.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(chunk.empty());
  uint64_t scan = NewPool(dev, v1::STRATEGY_SCAN);
  Handles scan_held = Alloc(scan, 10);
  Runtime::InflightCursor untracked;
  ASSERT_TRUE(rt_->ListInflight(scan, &untracked, 0, &chunk).ok());
  EXPECT_TRUE(chunk.empty());
  EXPECT_TRUE(untracked.done());
  ASSERT_TRUE(ReturnAll(scan, scan_held).ok());
  ASSERT_TRUE(ReturnInBatches(pool, held).ok());
}

// Pages given back and allocated between chunks, as with xa_for_each: those in flight for the
// whole walk are listed exactly once; new pages may take freed ids behind the walk and not appear.
TEST_F(RuntimeTest, ListInflightChunksToleratePagesComingAndGoing) {
  uint64_t pool = NewPool(NewDevice());
  Handles first = Alloc(pool, 1000);
  Handles second;
  for (int i = 0; i < 9; ++i) second.MergeFrom(Alloc(pool, 1000));
  Runtime::InflightCursor cursor;
  std::vector<InflightRecord> chunk;
  std::vector<InflightRecord> all;
  ASSERT_TRUE(rt_->ListInflight(pool, &cursor, 0, &chunk).ok());
  all.insert(all.end(), chunk.begin(), chunk.end());
  ASSERT_TRUE(ReturnAll(pool, first).ok());  // ids of the first chunk come free
  Handles newer = Alloc(pool, 1000);         // and are taken again, behind the walk
  ListAll(*rt_, pool, &cursor, &all);
  std::map<uint64_t, int> seen;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i > 0) {
      ASSERT_LT(all[i - 1].index_id, all[i].index_id);
    }
    ++seen[all[i].frame];
  }
  for (const v1::PageHandle& h : second) EXPECT_EQ(seen[h.frame()], 1) << h.frame();
  ASSERT_TRUE(ReturnInBatches(pool, second).ok());
  ASSERT_TRUE(ReturnAll(pool, newer).ok());
}

TEST_F(RuntimeTest, DmaMaskIsCheckedShownAndCapsTheIovaSpace) {
  for (uint32_t bits : {1u, 12u, 49u, 64u}) {
    v1::CreateDeviceRequest req;
    req.set_dma_mask_bits(bits);
    v1::Device d;
    absl::Status s = rt_->CreateDevice(req, &d);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bits;
    EXPECT_THAT(std::string(s.message()),
                HasSubstr("dma_mask_bits " + std::to_string(bits) + " is outside 13 .. 48"));
  }
  v1::CreateDeviceRequest narrow;
  narrow.set_address_width(39);
  narrow.set_dma_mask_bits(40);
  v1::Device d;
  EXPECT_EQ(rt_->CreateDevice(narrow, &d).code(), absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(rt_->CreateDevice(v1::CreateDeviceRequest(), &d).ok());
  EXPECT_EQ(d.dma_mask_bits(), 48u);
  v1::CreateDeviceRequest small;
  small.set_dma_mask_bits(20);  // IOVA pfns 1..255
  ASSERT_TRUE(rt_->CreateDevice(small, &d).ok());
  EXPECT_EQ(d.dma_mask_bits(), 20u);
  ASSERT_TRUE(rt_->GetDevice(d.id(), &d).ok());
  EXPECT_EQ(d.dma_mask_bits(), 20u);
  EXPECT_EQ(d.address_width(), 48u);

  // An order-8 page needs 13 + 8 = 21 bits.
  v1::CreatePoolRequest big;
  big.set_device_id(d.id());
  big.set_order(8);
  v1::Pool p;
  absl::Status s = rt_->CreatePool(big, &p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("need a DMA mask of at least 21 bits"));
  big.set_order(7);
  ASSERT_TRUE(rt_->CreatePool(big, &p).ok());
  v1::DestroyPoolResponse destroyed;
  ASSERT_TRUE(rt_->DestroyPool(p.id(), &destroyed).ok());

  uint64_t pool = NewPool(d.id());
  Handles held = Alloc(pool, 255);
  ASSERT_EQ(held.size(), 255);
  Pages none;
  absl::Status full = rt_->Allocate(pool, 1, &none);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()),
              HasSubstr("IOVA space exhausted below the 20-bit DMA mask"));
  EXPECT_EQ(none.size(), 0);
  ASSERT_TRUE(ReturnAll(pool, held).ok());
  EXPECT_EQ(Alloc(pool, 200).size(), 200);
}

// Two Returns of the same pages at once: each checks every page, then gives them back; a page the
// other call took between the check and the give-back is the one refusal all-or-nothing allows.
// Every page is returned exactly once, and a refused call either returned nothing (its check saw
// the other's work) or says how many of its pages it returned.
TEST_F(RuntimeTest, ConcurrentReturnsOfTheSamePagesReturnEachOnce) {
  uint64_t pool = NewPool(NewDevice());
  for (int round = 0; round < 20; ++round) {
    Handles pages = Alloc(pool, 900);
    ASSERT_EQ(pages.size(), 900);
    v1::ReturnResponse a, b;
    absl::Status sa, sb;
    std::thread other([&] { sb = rt_->Return(pool, pages, &b); });
    sa = rt_->Return(pool, pages, &a);
    other.join();
    EXPECT_EQ(a.returned() + b.returned(), 900u) << sa << " / " << sb;
    for (const absl::Status& s : {sa, sb}) {
      if (s.ok()) continue;
      EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
      const std::string m(s.message());
      EXPECT_TRUE(m.find("no page was returned") != std::string::npos ||
                  m.find("given back by another call after this call checked it") !=
                      std::string::npos)
          << m;
    }
  }
}

TEST_F(RuntimeTest, DestroyWithPagesInFlightDetachesAndTheTickDeletes) {
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  Handles held = Alloc(pool, 3);
  v1::DestroyPoolResponse d;
  ASSERT_TRUE(rt_->DestroyPool(pool, &d).ok());
  EXPECT_EQ(d.inflight_at_destroy(), 3u);
  EXPECT_EQ(d.strategy(), v1::STRATEGY_XARRAY);
  v1::Pool got;
  ASSERT_TRUE(rt_->GetPool(pool, &got).ok());  // detached, still listed
  EXPECT_TRUE(got.destroyed());
  v1::DestroyPoolResponse again;
  absl::Status s = rt_->DestroyPool(pool, &again);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "DestroyPool: pool " + std::to_string(pool) + " is already destroyed");
  Pages none;
  s = rt_->Allocate(pool, 1, &none);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "Allocate: pool " + std::to_string(pool) + " is destroyed");

  rt_->ReleaseRetryTick();  // still waiting: one CHANGE with the inflight
  rt_->ReleaseRetryTick();  // nothing changed: no event
  ASSERT_TRUE(ReturnAll(pool, held).ok());
  rt_->ReleaseRetryTick();  // the last page came back: DELETE
  rt_->ReleaseRetryTick();  // and only once
  EXPECT_EQ(events_.Types(),
            (std::vector<v1::EventType>{v1::EVENT_TYPE_DEVICE_ADD, v1::EVENT_TYPE_POOL_ADD,
                                        v1::EVENT_TYPE_POOL_DETACH, v1::EVENT_TYPE_POOL_CHANGE,
                                        v1::EVENT_TYPE_POOL_DELETE}));
  EXPECT_EQ(events_.events[3].pool().inflight(), 3u);
  EXPECT_EQ(rt_->GetPool(pool, &got).code(), absl::StatusCode::kNotFound);
  for (size_t i = 1; i < events_.events.size(); ++i) {
    EXPECT_EQ(events_.events[i].seq(), events_.events[i - 1].seq() + 1);
  }
}

TEST_F(RuntimeTest, DestroyWithNothingInFlightDeletesAtOnce) {
  uint64_t pool = NewPool(NewDevice());
  v1::DestroyPoolResponse d;
  ASSERT_TRUE(rt_->DestroyPool(pool, &d).ok());
  EXPECT_EQ(events_.Types().back(), v1::EVENT_TYPE_POOL_DELETE);
  v1::Pool got;
  EXPECT_EQ(rt_->GetPool(pool, &got).code(), absl::StatusCode::kNotFound);
}

TEST_F(RuntimeTest, UnbindDestroysThePoolsOnceAndAnnouncesThem) {
  uint64_t dev = NewDevice();
  uint64_t held_pool = NewPool(dev);
  uint64_t empty_pool = NewPool(dev);
  uint64_t detached = NewPool(dev);
  Handles held = Alloc(held_pool, 5);
  Handles kept = Alloc(detached, 1);
  v1::DestroyPoolResponse dr;
  ASSERT_TRUE(rt_->DestroyPool(detached, &dr).ok());
  events_.events.clear();
  v1::UnbindDeviceResponse u;
  ASSERT_TRUE(rt_->UnbindDevice(dev, &u).ok());
  EXPECT_EQ(u.pools_destroyed(), 2u);  // the one destroyed before is not destroyed again
  EXPECT_EQ(u.inflight_at_destroy(), 5u);
  EXPECT_EQ(u.pages_unmapped(), 5u);
  EXPECT_EQ(u.device().state(), v1::DEVICE_STATE_UNBOUND);
  // Pools still waiting for pages stay on the device.
  EXPECT_THAT(std::vector<uint64_t>(u.device().pool_ids().begin(), u.device().pool_ids().end()),
              ::testing::ElementsAre(held_pool, detached));
  ASSERT_EQ(events_.events.size(), 3u);
  EXPECT_EQ(events_.events[0].type(), v1::EVENT_TYPE_POOL_DETACH);
  EXPECT_EQ(events_.events[0].pool().id(), held_pool);
  EXPECT_EQ(events_.events[1].type(), v1::EVENT_TYPE_POOL_DELETE);
  EXPECT_EQ(events_.events[1].pool().id(), empty_pool);
  EXPECT_EQ(events_.events[2].type(), v1::EVENT_TYPE_DEVICE_CHANGE);

  v1::UnbindDeviceResponse twice;
  absl::Status s = rt_->UnbindDevice(dev, &twice);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "UnbindDevice: device " + std::to_string(dev) + " is already unbound");
  s = TryNewPool(dev).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "CreatePool: device " + std::to_string(dev) + " is unbound");
  // Held pages come back with no DMA-API call after the unbind.
  ASSERT_TRUE(ReturnAll(held_pool, held).ok());
  ASSERT_TRUE(ReturnAll(detached, kept).ok());
  v1::DomainInfo dom;
  ASSERT_TRUE(rt_->GetDomain(dev, &dom).ok());
  EXPECT_EQ(dom.violations().total(), 0u);
}

// DeleteDevice: only an unbound device none of whose pools is listed; it then leaves the registry
// (its id unknown, its slot under --max-devices free) and its violations stay in the totals.
TEST_F(RuntimeTest, DeleteDeviceTakesAnUnboundDeviceWithoutPoolsAndKeepsItsViolations) {
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev, v1::STRATEGY_NONE);
  Handles held = Alloc(pool, 2);
  v1::Device out;
  absl::Status s = rt_->DeleteDevice(dev, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), absl::StrCat("DeleteDevice: device ", dev, " is bound: unbind it first"));
  EXPECT_EQ(rt_->DeleteDevice(999, &out).code(), absl::StatusCode::kNotFound);

  // NONE does not unmap at unbind: 2 live mappings at unbind, then 2 unmaps after it.
  v1::UnbindDeviceResponse u;
  ASSERT_TRUE(rt_->UnbindDevice(dev, &u).ok());
  s = rt_->DeleteDevice(dev, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("still has 1 detached pool(s) with pages in flight"));
  ASSERT_TRUE(ReturnAll(pool, held).ok());
  rt_->ReleaseRetryTick();
  rt_->ReleaseRetryTick();  // the pool is forgotten
  v1::Pool p;
  ASSERT_EQ(rt_->GetPool(pool, &p).code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(rt_->DeleteDevice(dev, &out).ok());
  EXPECT_EQ(out.id(), dev);
  EXPECT_EQ(out.state(), v1::DEVICE_STATE_UNBOUND);
  EXPECT_EQ(events_.Types().back(), v1::EVENT_TYPE_DEVICE_DELETE);
  EXPECT_EQ(events_.events.back().device().id(), dev);
  EXPECT_EQ(rt_->GetDevice(dev, &out).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(rt_->DeleteDevice(dev, &out).code(), absl::StatusCode::kNotFound);
  v1::ListDevicesResponse list;
  rt_->ListDevices(&list);
  EXPECT_EQ(list.devices_size(), 0);
  std::string metrics;
  rt_->AppendMetrics(&metrics);
  EXPECT_THAT(metrics, HasSubstr("pagepool_devices_deleted_total 1\n"));
  EXPECT_THAT(metrics, HasSubstr("pagepool_deleted_device_violations_total 4\n"));

  // The fixture's --max-devices is 4, and the deleted device no longer counts.
  for (int i = 0; i < 4; ++i) NewDevice();
  EXPECT_EQ(rt_->CreateDevice(v1::CreateDeviceRequest(), &out).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(rt_->Shutdown().violations, 4u);
}

TEST_F(RuntimeTest, LimitsAnswerResourceExhaustedNamingTheFlag) {
  uint64_t dev = NewDevice();
  // max_pools 3 counts live and detached pools.
  uint64_t a = NewPool(dev);
  uint64_t pool = NewPool(dev);
  Handles held = Alloc(a, 1);
  v1::DestroyPoolResponse d;
  ASSERT_TRUE(rt_->DestroyPool(a, &d).ok());  // detached: still counts
  NewPool(dev);
  absl::Status s = TryNewPool(dev).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "CreatePool: pool limit reached (3 pools exist, --max-pools)");
  ASSERT_TRUE(ReturnAll(a, held).ok());
  rt_->ReleaseRetryTick();  // a is deleted: room for one more
  EXPECT_TRUE(TryNewPool(dev).ok());

  for (int i = 0; i < 3; ++i) NewDevice();
  v1::Device extra;
  s = rt_->CreateDevice(v1::CreateDeviceRequest(), &extra);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "CreateDevice: device limit reached (4, --max-devices)");

  Pages pages;
  s = rt_->Allocate(pool, 1001, &pages);
  EXPECT_EQ(s.message(), "Allocate: count 1001 is above the limit 1000 (--max-pages-per-call)");
  Handles many;
  for (int i = 0; i < 1001; ++i) many.Add();
  v1::RecycleResponse rec;
  s = rt_->Recycle(pool, many, false, &rec);
  EXPECT_EQ(s.message(), "Recycle: 1001 pages is above the limit 1000 (--max-pages-per-call)");
  v1::ReturnResponse ret;
  s = rt_->Return(pool, many, &ret);
  EXPECT_EQ(s.message(), "Return: 1001 pages is above the limit 1000 (--max-pages-per-call)");
  v1::TrafficRequest req;
  req.set_pool_id(pool);
  req.set_allocate(1001);
  v1::TrafficResponse resp;
  EXPECT_EQ(rt_->Traffic(req, &resp), 0u);
  EXPECT_EQ(resp.error_code(), int(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(resp.error_message(),
            "Traffic: batch of 1001 page ops is above the limit 1000 (--max-pages-per-call)");
}

TEST_F(RuntimeTest, TrafficBatchesReuseTheirPoolUntilItIsDeleted) {
  uint64_t pool = NewPool(NewDevice());
  Runtime::TrafficCache cache;
  v1::TrafficRequest req;
  v1::TrafficResponse resp;
  req.set_pool_id(pool);
  req.set_allocate(16);
  req.set_napi_local(true);
  ASSERT_EQ(rt_->Traffic(req, &resp, &cache), 16u) << resp.error_message();
  Handles prev;
  for (const v1::Page& p : resp.allocated()) *prev.Add() = p.handle();
  req.set_seq(2);
  *req.mutable_recycle() = prev;
  resp.Clear();
  EXPECT_EQ(rt_->Traffic(req, &resp, &cache), 32u);
  EXPECT_EQ(resp.seq(), 2u);
  EXPECT_EQ(resp.recycled_cached(), 16u);
  // Give everything back and delete the pool: the next batch no longer finds it.
  req.Clear();
  req.set_pool_id(pool);
  for (const v1::Page& p : resp.allocated()) *req.add_return_pages() = p.handle();
  resp.Clear();
  EXPECT_EQ(rt_->Traffic(req, &resp, &cache), 16u);
  v1::DestroyPoolResponse d;
  ASSERT_TRUE(rt_->DestroyPool(pool, &d).ok());
  req.Clear();
  req.set_pool_id(pool);
  req.set_allocate(1);
  resp.Clear();
  EXPECT_EQ(rt_->Traffic(req, &resp, &cache), 0u);
  EXPECT_EQ(resp.error_code(), int(absl::StatusCode::kNotFound));
  EXPECT_THAT(resp.error_message(), HasSubstr("Traffic: pool " + std::to_string(pool)));
}

TEST_F(RuntimeTest, SubscribeReplaysWhatExistsInIdOrder) {
  uint64_t d1 = NewDevice();
  uint64_t d2 = NewDevice();
  uint64_t p1 = NewPool(d1);
  uint64_t p2 = NewPool(d2);
  uint64_t p3 = NewPool(d1);
  Recorder late;
  ASSERT_TRUE(rt_->Subscribe(&late, /*include_existing=*/true));
  ASSERT_EQ(late.events.size(), 5u);
  EXPECT_EQ(late.events[0].device().id(), d1);
  EXPECT_EQ(late.events[1].device().id(), d2);
  EXPECT_EQ(late.events[2].pool().id(), p1);
  EXPECT_EQ(late.events[3].pool().id(), p2);
  EXPECT_EQ(late.events[4].pool().id(), p3);
  for (const v1::Event& e : late.events) EXPECT_EQ(e.seq(), 0u);
  v1::ListPoolsResponse all;
  ASSERT_TRUE(rt_->ListPools(0, &all).ok());
  ASSERT_EQ(all.pools_size(), 3);
  EXPECT_EQ(all.pools(1).id(), p2);
  rt_->Unsubscribe(&late);
}

TEST_F(RuntimeTest, ShutdownDestroysLivePoolsReportsAndRefusesCalls) {
  uint64_t dev = NewDevice();
  uint64_t a = NewPool(dev);
  uint64_t b = NewPool(dev, v1::STRATEGY_SCAN);
  Alloc(a, 7);
  Alloc(b, 2);
  ShutdownReport r = rt_->Shutdown();
  EXPECT_TRUE(events_.closed);
  EXPECT_EQ(r.devices, 1u);
  EXPECT_EQ(r.pools_created, 2u);
  EXPECT_EQ(r.pools, 2u);
  EXPECT_EQ(r.inflight_at_destroy, 9u);
  EXPECT_GE(r.pages_unmapped, 9u);  // SCAN may unmap more than the pages users hold
  EXPECT_EQ(r.violations, 0u);
  v1::Pool got;
  absl::Status s = rt_->GetPool(a, &got);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  v1::Device d;
  s = rt_->CreateDevice(v1::CreateDeviceRequest(), &d);
  EXPECT_EQ(s.message(), "CreateDevice: the daemon is shutting down");
  Recorder late;
  EXPECT_FALSE(rt_->Subscribe(&late, false));
}

}  // namespace
}  // namespace pagepool::server
