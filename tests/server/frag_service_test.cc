// Service tests of page fragments over the wire (page_pool_alloc_frag and pp_ref_count): Allocate
// with frag_size, fragments given back one by one (the page leaves flight only with its last),
// Recycle of fragments, double returns, wrong offsets and sizes refused with nothing changed, bad
// frag sizes, ListInflight's pp_ref_count, a pool destroyed while the fragments of one page are
// split between the client and the pool, the Traffic stream's fragment mode and ppctl traffic
// --frag-size, against an in-process pagepoold.
#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "client/format.h"
#include "client/traffic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pool/page_pool.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/daemon_harness.h"

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;

class FragServiceTest : public testing::DaemonTest {
 protected:
  void SetUp() override { StartDaemon(); }

  using DaemonTest::NewPool;
  uint64_t NewPool(uint64_t device, v1::Strategy s, uint32_t order) {
    v1::CreatePoolRequest req;
    req.set_device_id(device);
    req.set_strategy(s);
    req.set_order(order);
    return NewPool(req);
  }
  std::vector<v1::FragHandle> AllocFrags(uint64_t pool, uint32_t n, uint32_t size) {
    auto r = c().Allocate(pool, n, size);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<v1::FragHandle> out;
    if (!r.ok()) return out;
    for (const v1::Page& p : r->pages()) {
      EXPECT_TRUE(p.has_frag());
      out.push_back(p.frag());
    }
    return out;
  }
  absl::StatusOr<v1::ReturnResponse> ReturnFrags(uint64_t pool,
                                                 const std::vector<v1::FragHandle>& frags,
                                                 const std::vector<v1::PageHandle>& pages = {}) {
    v1::ReturnRequest req;
    req.set_pool_id(pool);
    for (const auto& f : frags) *req.add_frags() = f;
    for (const auto& h : pages) *req.add_pages() = h;
    return c().Return(req);
  }
  v1::Pool GetPool(uint64_t pool) {
    auto r = c().GetPool(pool);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->pool() : v1::Pool();
  }
  // ListInflight's entries by frame.
  std::map<uint64_t, v1::InflightPage> Inflight(uint64_t pool) {
    auto r = c().ListInflight(pool);
    EXPECT_TRUE(r.ok()) << r.status();
    std::map<uint64_t, v1::InflightPage> out;
    if (r.ok()) {
      for (const v1::InflightPage& p : r->pages()) out[p.handle().frame()] = p;
    }
    return out;
  }
};

TEST_F(FragServiceTest, FragmentsComeBackOneByOneAndThePageLeavesWithTheLast) {
  const uint64_t dev = NewDevice();
  const uint64_t pool = NewPool(dev);
  auto a = c().Allocate(pool, 3, 1500);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->pages_size(), 3);
  // 1500 rounds up to 1536: two fit in page A (0, 1536), the third (3072 + 1536 > 4096) drains A
  // and is carved from page B.
  const v1::Page& a1 = a->pages(0);
  const v1::Page& a2 = a->pages(1);
  const v1::Page& b1 = a->pages(2);
  EXPECT_EQ(a1.frag().offset(), 0u);
  EXPECT_EQ(a2.frag().offset(), 1536u);
  EXPECT_EQ(b1.frag().offset(), 0u);
  for (const v1::Page& p : a->pages()) {
    EXPECT_EQ(p.frag().size(), 1536u);
    EXPECT_EQ(p.handle().frame(), p.frag().page().frame());
    EXPECT_EQ(p.handle().generation(), p.frag().page().generation());
    EXPECT_EQ(p.frag().page().generation() % 2, 1u);
  }
  EXPECT_EQ(a1.frag().page().frame(), a2.frag().page().frame());
  EXPECT_NE(a1.frag().page().frame(), b1.frag().page().frame());
  EXPECT_NE(a1.dma_addr(), 0u);
  EXPECT_EQ(a2.dma_addr(), a1.dma_addr() + 1536);
  EXPECT_EQ(client::FormatResponse(*a).substr(0, client::FormatFrag(a1.frag()).size() + 1),
            client::FormatFrag(a1.frag()) + " ");

  v1::Pool p = GetPool(pool);
  EXPECT_EQ(p.frag_pages(), 2u);
  EXPECT_EQ(p.frag_refs(), 3u);
  EXPECT_EQ(p.frag_put_refused(), 0u);
  const uint64_t inflight = p.inflight();  // the slow path's bulk, frag pages included

  // ListInflight shows each page's pp_ref_count: A drained (its two fragments), B the pool's
  // current frag page (the bias not handed out yet, and one fragment held).
  auto listed = Inflight(pool);
  const uint64_t fa = a1.frag().page().frame(), fb = b1.frag().page().frame();
  ASSERT_TRUE(listed.count(fa));
  ASSERT_TRUE(listed.count(fb));
  EXPECT_TRUE(listed[fa].fragmented());
  EXPECT_EQ(listed[fa].pp_ref_count(), 2u);
  EXPECT_EQ(listed[fa].frag_refs(), 2u);
  EXPECT_TRUE(listed[fb].fragmented());
  EXPECT_EQ(listed[fb].pp_ref_count(), uint32_t(pool::kPpFragBias));
  EXPECT_EQ(listed[fb].frag_refs(), 1u);
  for (const auto& [frame, page] : listed) {
    if (frame == fa || frame == fb) continue;
    EXPECT_FALSE(page.fragmented());
    EXPECT_EQ(page.pp_ref_count(), 1u);
    EXPECT_EQ(page.frag_refs(), 0u);
  }

  // The page's own handle is not a whole page while it is split.
  v1::ReturnRequest whole;
  whole.set_pool_id(pool);
  *whole.add_pages() = a1.handle();
  auto refused = c().Return(whole);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("split into fragments"));

  // The first fragment back: the page stays in flight, listed with one reference.
  auto r = ReturnFrags(pool, {a1.frag()});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->frags(), 1u);
  EXPECT_EQ(r->returned(), 0u);
  EXPECT_EQ(r->pages_from_frags(), 0u);
  EXPECT_EQ(GetPool(pool).inflight(), inflight);
  listed = Inflight(pool);
  ASSERT_TRUE(listed.count(fa));
  EXPECT_EQ(listed[fa].pp_ref_count(), 1u);
  EXPECT_EQ(listed[fa].frag_refs(), 1u);

  // The last one returns the page: unmapped by this call, out of flight and of the listing.
  r = ReturnFrags(pool, {a2.frag()});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->frags(), 1u);
  EXPECT_EQ(r->returned(), 1u);
  EXPECT_EQ(r->unmapped(), 1u);
  EXPECT_EQ(r->pages_from_frags(), 1u);
  EXPECT_EQ(client::FormatResponse(*r),
            "returned: 1 pages, 1 unmapped by this call, 1 fragments (1 pages by their last "
            "fragment)\n");
  p = GetPool(pool);
  EXPECT_EQ(p.inflight(), inflight - 1);
  EXPECT_EQ(p.frag_pages(), 1u);
  EXPECT_EQ(p.frag_refs(), 1u);
  EXPECT_FALSE(Inflight(pool).count(fa));

  // B's only fragment back: B keeps the pool's bias (it is still the frag page) and stays.
  r = ReturnFrags(pool, {b1.frag()});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->returned(), 0u);
  EXPECT_EQ(GetPool(pool).frag_refs(), 0u);
  EXPECT_EQ(Inflight(pool)[fb].frag_refs(), 0u);
  auto dom = c().GetDomain(dev);
  ASSERT_TRUE(dom.ok());
  EXPECT_EQ(dom->domain().violations().total(), 0u);
}

TEST_F(FragServiceTest, RecycledFragmentsRecycleTheirPageWithTheLast) {
  const uint64_t pool = NewPool(NewDevice());
  auto frags = AllocFrags(pool, 2, 4096);  // one page each; the second drains the first
  ASSERT_EQ(frags.size(), 2u);
  v1::RecycleRequest req;
  req.set_pool_id(pool);
  req.set_napi_local(true);
  *req.add_frags() = frags[0];
  auto r = c().Recycle(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->frags(), 1u);
  EXPECT_EQ(r->pages_from_frags(), 1u);
  EXPECT_EQ(r->cached(), 1u);  // the last reference: page_pool_put_page, direct
  EXPECT_EQ(GetPool(pool).stats().recycle_cached(), 1u);
  // Recycled again: that fragment is no longer in flight.
  auto again = c().Recycle(req);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("fragment #0"));
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("no page was recycled"));
  // The current frag page's fragment goes back; the page keeps the pool's bias.
  req.clear_frags();
  *req.add_frags() = frags[1];
  r = c().Recycle(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->frags(), 1u);
  EXPECT_EQ(r->pages_from_frags(), 0u);
  EXPECT_EQ(r->cached() + r->ring() + r->released(), 0u);
  const v1::Pool p = GetPool(pool);
  EXPECT_EQ(p.frag_refs(), 0u);
  EXPECT_EQ(p.frag_put_refused(), 1u);
}

TEST_F(FragServiceTest, DoubleReturnsWrongOffsetsAndSizesAreRefusedWithNothingChanged) {
  const uint64_t pool = NewPool(NewDevice());
  auto frags = AllocFrags(pool, 3, 1024);  // one page: offsets 0, 1024, 2048
  ASSERT_EQ(frags.size(), 3u);
  auto whole = c().Allocate(pool, 1);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const v1::PageHandle page = whole->pages(0).handle();
  const v1::Pool before = GetPool(pool);
  ASSERT_EQ(before.frag_refs(), 3u);

  // Every refusal below leaves every fragment and the whole page in flight: all or nothing.
  auto expect_refused = [&](const std::vector<v1::FragHandle>& bad, absl::StatusCode code,
                            const std::string& words) {
    SCOPED_TRACE(words);
    auto r = ReturnFrags(pool, bad, {page});
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(words));
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("no page was returned"));
    const v1::Pool now = GetPool(pool);
    EXPECT_EQ(now.frag_refs(), 3u);
    EXPECT_EQ(now.inflight(), before.inflight());
  };
  // Named twice in one call, holding one reference.
  expect_refused({frags[0], frags[0]}, absl::StatusCode::kFailedPrecondition,
                 "fragment #1: the fragment at offset 0 of frame");
  // An offset inside the page that no fragment was handed out at.
  v1::FragHandle wrong = frags[1];
  wrong.set_offset(1088);
  expect_refused({frags[1], wrong}, absl::StatusCode::kFailedPrecondition,
                 "fragment #1: no fragment of frame");
  // The right offset with another size.
  wrong = frags[1];
  wrong.set_size(64);
  expect_refused({wrong}, absl::StatusCode::kFailedPrecondition, "is 1024 bytes, not 64");
  // Malformed: an offset that is not a multiple of 64, one beyond the page.
  wrong = frags[1];
  wrong.set_offset(1000);
  expect_refused({wrong}, absl::StatusCode::kInvalidArgument, "fragment #0");
  wrong.set_offset(4096);
  expect_refused({wrong}, absl::StatusCode::kInvalidArgument, "not inside a page of 4096 bytes");
  // A stale generation, and the whole page named as a fragment.
  wrong = frags[1];
  wrong.mutable_page()->set_generation(wrong.page().generation() + 2);
  expect_refused({wrong}, absl::StatusCode::kFailedPrecondition, "not split into fragments");
  v1::FragHandle not_split;
  *not_split.mutable_page() = page;
  not_split.set_size(64);
  expect_refused({not_split}, absl::StatusCode::kFailedPrecondition, "is a whole page");

  // A fragment returned twice while the other fragments of its page are held: the pool alone
  // would take one of theirs (the count is per page); the daemon refuses it.
  auto r = ReturnFrags(pool, {frags[0]});
  ASSERT_TRUE(r.ok()) << r.status();
  r = ReturnFrags(pool, {frags[1], frags[0]}, {page});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      std::string(r.status().message()),
      HasSubstr("fragment #1: no fragment of frame " + std::to_string(frags[0].page().frame())));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("a double return"));
  v1::Pool now = GetPool(pool);
  EXPECT_EQ(now.frag_refs(), 2u);
  EXPECT_EQ(now.inflight(), before.inflight());
  EXPECT_EQ(now.frag_put_refused(), 8u);  // every refusal of this test

  // Fixed, the same call goes through: the page, and the two fragments still held.
  r = ReturnFrags(pool, {frags[1], frags[2]}, {page});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->frags(), 2u);
  EXPECT_EQ(r->returned(), 1u);  // the whole page; the frag page keeps the pool's bias
  now = GetPool(pool);
  EXPECT_EQ(now.frag_refs(), 0u);
  EXPECT_EQ(now.inflight(), before.inflight() - 1);
}

// RefFrag: an skb clone's reference (page_pool_ref_netmem); each is given back by one more
// Return or Recycle of the same fragment, and the page leaves flight only with the last.
TEST_F(FragServiceTest, RefFragAddsAReferenceGivenBackByOneMorePut) {
  const uint64_t pool = NewPool(NewDevice());
  auto frags = AllocFrags(pool, 2, 4096);  // A, then B (A drained, one reference held)
  ASSERT_EQ(frags.size(), 2u);
  const v1::FragHandle a = frags[0], b = frags[1];
  v1::RefFragRequest ref;
  ref.set_pool_id(pool);
  *ref.add_frags() = a;
  auto r = c().RefFrag(ref);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->refs(), 1u);
  EXPECT_EQ(GetPool(pool).frag_refs(), 3u);
  auto listed = Inflight(pool);
  EXPECT_EQ(listed[a.page().frame()].pp_ref_count(), 2u);
  EXPECT_EQ(listed[a.page().frame()].frag_refs(), 2u);

  // All or nothing: B and a stale handle; B gets no reference.
  v1::FragHandle stale = b;
  stale.mutable_page()->set_generation(b.page().generation() + 2);
  ref.clear_frags();
  *ref.add_frags() = b;
  *ref.add_frags() = stale;
  auto refused = c().RefFrag(ref);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("fragment #1"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("no reference was added"));
  EXPECT_EQ(Inflight(pool)[b.page().frame()].frag_refs(), 1u);
  EXPECT_EQ(c().RefFrag(v1::RefFragRequest()).status().code(), absl::StatusCode::kInvalidArgument);

  // A twice in one call: both references; the page goes with the second.
  auto back = ReturnFrags(pool, {a, a});
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->frags(), 2u);
  EXPECT_EQ(back->returned(), 1u);
  EXPECT_EQ(back->pages_from_frags(), 1u);
  EXPECT_FALSE(Inflight(pool).count(a.page().frame()));
  // A third put has no reference left.
  EXPECT_EQ(ReturnFrags(pool, {a}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetPool(pool).frag_refs(), 1u);
}

TEST_F(FragServiceTest, BadFragSizesAreRefused) {
  const uint64_t dev = NewDevice();
  const uint64_t pool = NewPool(dev);
  auto r = c().Allocate(pool, 1, 4097);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("frag_size 4097"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("4096 bytes"));
  EXPECT_EQ(GetPool(pool).inflight(), 0u);
  // The whole page size is a fragment too; order 1 pages take up to 8192.
  EXPECT_EQ(AllocFrags(pool, 1, 4096).size(), 1u);
  const uint64_t big = NewPool(dev, v1::STRATEGY_XARRAY, 1);
  auto big_frags = AllocFrags(big, 1, 8192);
  ASSERT_EQ(big_frags.size(), 1u);
  EXPECT_EQ(big_frags[0].size(), 8192u);
  EXPECT_EQ(c().Allocate(big, 1, 8193).status().code(), absl::StatusCode::kInvalidArgument);
  // In a Traffic batch the refusal is reported in the answer.
  grpc::ClientContext ctx;
  auto rw = c().stub()->Traffic(&ctx);
  v1::TrafficRequest req;
  req.set_pool_id(pool);
  req.set_allocate(2);
  req.set_frag_size(5000);
  v1::TrafficResponse resp;
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.errors(), 1u);
  EXPECT_EQ(resp.error_code(), int(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(resp.error_message(), HasSubstr("frag_size 5000"));
  EXPECT_EQ(resp.allocated_size(), 0);
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
}

// A pool destroyed while the fragments of one page are split between the client and the pool
// (the current frag page: one fragment held, the pool's bias on it) and another page's fragments
// are all with the client. The late returns behave as the kernel's: each page is freed by its
// last reference without another unmap, so every mapping is unmapped exactly once and no DMA-API
// call follows the unbind.
TEST_F(FragServiceTest, DestroyWhileFragmentsAreSplitBetweenClientAndPool) {
  for (v1::Strategy strategy : {v1::STRATEGY_XARRAY, v1::STRATEGY_SCAN}) {
    SCOPED_TRACE(v1::Strategy_Name(strategy));
    const uint64_t dev = NewDevice();
    const uint64_t pool = NewPool(dev, strategy);
    auto a = AllocFrags(pool, 2, 2048);  // page A, full
    auto b = AllocFrags(pool, 2, 1024);  // page B, the frag page at destroy
    ASSERT_EQ(a.size() + b.size(), 4u);
    ASSERT_NE(a[0].page().frame(), b[0].page().frame());
    ASSERT_TRUE(ReturnFrags(pool, {b[1]}).ok());  // B: one fragment with the client

    auto d = c().DestroyPool(pool);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->inflight_at_destroy(), 2u);  // A and B: page_pool_free_frag dropped B's bias
    EXPECT_EQ(d->pages_unmapped(), 2u);
    v1::Pool p = GetPool(pool);
    EXPECT_TRUE(p.destroyed());
    EXPECT_EQ(p.frag_pages(), 2u);
    EXPECT_EQ(p.frag_refs(), 3u);
    auto dom = c().GetDomain(dev);
    ASSERT_TRUE(dom.ok());
    const uint64_t unmaps = dom->domain().unmap_calls();
    EXPECT_EQ(dom->domain().live_mappings(), 0u);

    // After the unbind too, the client's fragments come back without any DMA-API call.
    ASSERT_TRUE(c().UnbindDevice(dev).ok());
    auto r = ReturnFrags(pool, {a[0], b[0]});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->frags(), 2u);
    EXPECT_EQ(r->returned(), 1u);  // B: its last reference
    EXPECT_EQ(r->unmapped(), 0u);  // unmapped by the destroy already
    // A double return after the destroy is refused as before it.
    EXPECT_EQ(ReturnFrags(pool, {a[0]}).status().code(), absl::StatusCode::kFailedPrecondition);
    r = ReturnFrags(pool, {a[1]});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->returned(), 1u);
    EXPECT_EQ(r->unmapped(), 0u);

    dom = c().GetDomain(dev);
    ASSERT_TRUE(dom.ok());
    EXPECT_EQ(dom->domain().violations().total(), 0u);
    EXPECT_EQ(dom->domain().unmap_calls(), unmaps);
    EXPECT_EQ(dom->domain().unmap_calls(), dom->domain().map_calls());
    EXPECT_EQ(dom->domain().live_mappings(), 0u);
    // The pool's last page came back: the release-retry tick forgets it (NOT_FOUND).
    absl::StatusCode code = absl::StatusCode::kOk;
    for (int i = 0; i < 60 && code != absl::StatusCode::kNotFound; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      code = c().GetPool(pool).status().code();
    }
    EXPECT_EQ(code, absl::StatusCode::kNotFound);
  }
}

TEST_F(FragServiceTest, TrafficFragmentMode) {
  const uint64_t pool = NewPool(NewDevice());
  grpc::ClientContext ctx;
  auto rw = c().stub()->Traffic(&ctx);
  v1::TrafficRequest req;
  v1::TrafficResponse resp;
  std::vector<v1::FragHandle> prev;
  uint64_t pages_freed = 0, recycled = 0;
  for (int i = 0; i < 50; ++i) {
    req.Clear();
    req.set_pool_id(pool);
    req.set_seq(i);
    req.set_allocate(16);
    req.set_frag_size(500);  // 512: 8 a page
    req.set_napi_local(true);
    for (const auto& f : prev) *req.add_recycle_frags() = f;
    prev.clear();
    ASSERT_TRUE(rw->Write(req));
    ASSERT_TRUE(rw->Read(&resp));
    EXPECT_EQ(resp.errors(), 0u) << resp.error_message();
    ASSERT_EQ(resp.allocated_size(), 16);
    EXPECT_EQ(resp.frags_recycled(), i == 0 ? 0u : 16u);
    recycled += resp.frags_recycled();
    pages_freed += resp.pages_from_frags();
    EXPECT_EQ(resp.recycled_cached() + resp.recycled_ring() + resp.recycled_released(),
              resp.pages_from_frags());
    for (const v1::Page& p : resp.allocated()) {
      ASSERT_TRUE(p.has_frag());
      EXPECT_EQ(p.frag().size(), 512u);
      prev.push_back(p.frag());
    }
  }
  EXPECT_EQ(recycled, 49u * 16);
  // Each batch after the first frees the page it drained (its 8 fragments back); the pool's
  // current frag page, whose fragments come back too, is reused at once by the next allocation's
  // drain instead.
  EXPECT_EQ(pages_freed, 49u);
  // A fragment given back twice in a batch: the second is refused, the others are done.
  req.Clear();
  req.set_pool_id(pool);
  *req.add_return_frags() = prev[0];
  *req.add_return_frags() = prev[0];
  for (size_t i = 1; i < prev.size(); ++i) *req.add_return_frags() = prev[i];
  ASSERT_TRUE(rw->Write(req));
  ASSERT_TRUE(rw->Read(&resp));
  EXPECT_EQ(resp.frags_returned(), 16u);
  EXPECT_EQ(resp.errors(), 1u);
  EXPECT_EQ(resp.error_code(), int(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_THAT(resp.error_message(), HasSubstr("fragment #1"));
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
  const v1::Pool p = GetPool(pool);
  EXPECT_EQ(p.frag_refs(), 0u);
  EXPECT_EQ(p.frag_put_refused(), 1u);
}

TEST_F(FragServiceTest, PpctlTrafficFragmentMode) {
  for (const char* pattern : {"steady", "hold", "unary"}) {
    SCOPED_TRACE(pattern);
    client::TrafficOptions o;
    o.pattern = pattern;
    o.duration_s = 0.3;
    o.streams = 2;
    o.batch = 32;
    o.hold_s = 0.05;
    o.frag_size = 700;
    auto r = client::RunTraffic(c(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->errors, 0u) << r->first_error;
    EXPECT_EQ(r->violations, 0u);
    EXPECT_EQ(r->frag_size, 700u);
    EXPECT_GT(r->frag_ops, 0u);
    EXPECT_EQ(r->frag_ops, r->page_ops);  // every operation is a fragment's
    EXPECT_GT(r->pages_from_frags, 0u);
    EXPECT_EQ(r->frag_refs, 0u);  // everything given back
    EXPECT_THAT(r->Summary(), HasSubstr("  fragments:  700 bytes each: "));
    EXPECT_THAT(r->ToJson(), HasSubstr("\"frag_size\": 700,"));
  }
}

}  // namespace
}  // namespace pagepool
