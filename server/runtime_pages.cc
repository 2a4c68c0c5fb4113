// File: server/runtime_pages.cc
//
// Runtime: the page calls (Allocate, Recycle, Return) and the Traffic batch built from them.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/strings.h"
#include "server/runtime.h"

namespace pagepool::server {
namespace v1 = ::pagepool::v1;
using google::protobuf::RepeatedPtrField;
using internal::PoolRef;

namespace {

// Scratch space for a batch, kept per gRPC thread so that batches do not allocate.
std::vector<pool::PoolPage>& ScratchPages() {
  thread_local std::vector<pool::PoolPage> pages;
  pages.clear();
  return pages;
}

// Counts of a batch of give-backs.
struct GiveBackTally {
  uint64_t cached = 0, ring = 0, released = 0, returned = 0, unmapped = 0;
  uint64_t refused = 0;
  absl::Status first_error;

  void Refuse(const absl::Status& s, int index, const char* what, uint64_t pool_id) {
    if (refused++ == 0) {
      first_error = absl::Status(
          s.code(), absl::StrCat(what, " on pool ", pool_id, ": page #", index, ": ", s.message()));
    }
  }
  absl::Status Result() const {
    if (refused == 0) return absl::OkStatus();
    if (refused == 1) return first_error;
    return absl::Status(first_error.code(), absl::StrCat(first_error.message(), " (", refused,
                                                         " pages refused in all)"));
  }
};

// Recycles `pages` into the pool; direct (in the NAPI context) when napi_local and the context
// still runs, else the ring way.
void RecycleBatch(pool::NicPool& p, const RepeatedPtrField<v1::PageHandle>& pages, bool napi_local,
                  GiveBackTally* t) {
  auto all = [&](bool direct) {
    for (int i = 0; i < pages.size(); ++i) {
      auto r = p.pool().Recycle(FromWire(pages[i]), direct);
      if (!r.ok()) {
        t->Refuse(r.status(), i, "Recycle", p.id());
        continue;
      }
      switch (*r) {
        case pool::RecycleResult::kCached: ++t->cached; break;
        case pool::RecycleResult::kRing: ++t->ring; break;
        case pool::RecycleResult::kReleased: ++t->released; break;
      }
    }
  };
  if (!napi_local) {
    all(false);
    return;
  }
  base::MutexLock napi(&p.napi_mu());
  all(!p.napi_stopped());  // a destroyed pool has no NAPI context any more
}

void ReturnBatch(pool::NicPool& p, const RepeatedPtrField<v1::PageHandle>& pages,
                 GiveBackTally* t) {
  for (int i = 0; i < pages.size(); ++i) {
    auto r = p.pool().Return(FromWire(pages[i]));
    if (!r.ok()) {
      t->Refuse(r.status(), i, "Return", p.id());
      continue;
    }
    ++t->returned;
    if (*r) ++t->unmapped;
  }
}

}  // namespace

absl::Status Runtime::CheckPageLimit(uint64_t n, std::string_view call, std::string_view before,
                                     std::string_view after) const {
  if (n <= options_.max_pages_per_call) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat(base::AbslView(call), ": ", base::AbslView(before), n, base::AbslView(after),
                   " is above the limit ", options_.max_pages_per_call, " (--max-pages-per-call)"));
}

absl::Status Runtime::AllocateFrom(const PoolRef& ref, uint32_t count,
                                   RepeatedPtrField<v1::Page>* out) {
  pool::NicPool& p = *ref.pool;
  std::vector<pool::PoolPage>& pages = ScratchPages();
  absl::Status s;
  {
    base::MutexLock napi(&p.napi_mu());
    if (p.napi_stopped()) {
      return absl::FailedPreconditionError(
          absl::StrCat("Allocate: pool ", p.id(), " is destroyed"));
    }
    s = p.pool().AllocateBulk(count, &pages);
  }
  if (!s.ok()) {
    return base::Annotate(s, absl::StrCat("Allocate ", count, " pages from pool ", p.id()));
  }
  out->Reserve(static_cast<int>(pages.size()));
  for (const pool::PoolPage& pg : pages) FillPage(pg, out->Add());
  return absl::OkStatus();
}

absl::Status Runtime::Allocate(uint64_t pool_id, uint32_t count, RepeatedPtrField<v1::Page>* out) {
  if (count == 0) return absl::InvalidArgumentError("Allocate: count is 0, must be at least 1");
  if (absl::Status s = CheckPageLimit(count, "Allocate", "count ", ""); !s.ok()) return s;
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Allocate");
  return AllocateFrom(*found, count, out);
}

absl::Status Runtime::Recycle(uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                              bool napi_local, v1::RecycleResponse* out) {
  if (pages.empty()) return absl::InvalidArgumentError("Recycle: no pages given");
  if (absl::Status s = CheckPageLimit(pages.size(), "Recycle", "", " pages"); !s.ok()) return s;
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Recycle");
  GiveBackTally t;
  RecycleBatch(*found->pool, pages, napi_local, &t);
  out->set_cached(t.cached);
  out->set_ring(t.ring);
  out->set_released(t.released);
  return t.Result();
}

absl::Status Runtime::Return(uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                             v1::ReturnResponse* out) {
  if (pages.empty()) return absl::InvalidArgumentError("Return: no pages given");
  if (absl::Status s = CheckPageLimit(pages.size(), "Return", "", " pages"); !s.ok()) return s;
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Return");
  GiveBackTally t;
  ReturnBatch(*found->pool, pages, &t);
  out->set_returned(t.returned);
  out->set_unmapped(t.unmapped);
  return t.Result();
}

uint64_t Runtime::Traffic(const v1::TrafficRequest& req, v1::TrafficResponse* out,
                          TrafficCache* cache) {
  out->set_seq(req.seq());
  auto fail = [&](const absl::Status& s, uint32_t ops) {
    if (out->errors() == 0) {
      out->set_error_code(static_cast<int>(s.code()));
      out->set_error_message(std::string(s.message()));
    }
    out->set_errors(out->errors() + ops);
  };
  uint64_t total = uint64_t{req.allocate()} + req.recycle_size() + req.return_pages_size();
  if (absl::Status s = CheckPageLimit(total, "Traffic", "batch of ", " page ops"); !s.ok()) {
    fail(s, 1);
    return 0;
  }
  // The stream's pool of the previous batch while it is still registered; else one lookup.
  TrafficCache scratch;
  if (cache == nullptr) cache = &scratch;
  PoolRef& ref = cache->pool_;
  if (ref.pool == nullptr || ref.pool->id() != req.pool_id() || !ref.pool->registered() ||
      shut_down_.load(std::memory_order_relaxed)) {
    ref = {};
    auto found = FindPool(req.pool_id());
    if (!found.ok()) {
      fail(base::Annotate(found.status(), "Traffic"), 1);
      return 0;
    }
    ref = *std::move(found);
  }
  uint64_t ops = 0;
  GiveBackTally t;
  if (!req.recycle().empty()) RecycleBatch(*ref.pool, req.recycle(), req.napi_local(), &t);
  if (!req.return_pages().empty()) ReturnBatch(*ref.pool, req.return_pages(), &t);
  out->set_recycled_cached(t.cached);
  out->set_recycled_ring(t.ring);
  out->set_recycled_released(t.released);
  out->set_returned(t.returned);
  ops += t.cached + t.ring + t.released + t.returned;
  if (t.refused > 0) fail(t.Result(), static_cast<uint32_t>(t.refused));
  if (req.allocate() > 0) {
    absl::Status s = AllocateFrom(ref, req.allocate(), out->mutable_allocated());
    if (s.ok()) {
      ops += req.allocate();
    } else {
      fail(s, 1);
    }
  }
  return ops;
}

}  // namespace pagepool::server
