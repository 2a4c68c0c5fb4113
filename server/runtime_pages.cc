// File: server/runtime_pages.cc
//
// Runtime: the page calls (Allocate, Recycle, Return) and the Traffic batch built from them.
#include <algorithm>
#include <atomic>
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

// The give-back a pool would refuse for `h`, or OK; the same checks, in the same order and with
// the same words, as the pool's handle claim, without claiming anything.
absl::Status CheckHandle(const pool::PhysMemory& memory, uint64_t pool_id,
                         const v1::PageHandle& h) {
  if (h.frame() >= memory.frames()) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame ", h.frame(), " is beyond memory (", memory.frames(), " frames)"));
  }
  if ((h.generation() & 1) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("frame ", h.frame(), " generation ", h.generation(),
                     " was never handed out (handed-out generations are odd)"));
  }
  const uint64_t og = memory.record(h.frame()).owner_gen.load(std::memory_order_acquire);
  const uint32_t owner = pool::PageRecord::OwnerOf(og);
  const uint32_t gen = pool::PageRecord::GenerationOf(og);
  if (owner == static_cast<uint32_t>(pool_id) && gen == h.generation()) return absl::OkStatus();
  if (owner == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "frame ", h.frame(),
        " is not in flight from a page pool (freed or never allocated; double return?)"));
  }
  if (owner != static_cast<uint32_t>(pool_id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("frame ", h.frame(), " belongs to pool ", owner, ", not pool ", pool_id));
  }
  if (gen == h.generation() + 1) {
    return absl::FailedPreconditionError(absl::StrCat("frame ", h.frame(), " generation ",
                                                      h.generation(),
                                                      " was already given back (double return)"));
  }
  return absl::FailedPreconditionError(absl::StrCat("stale handle: frame ", h.frame(),
                                                    " generation ", h.generation(),
                                                    ", the frame is at generation ", gen));
}

// The index of the first page that names a frame an earlier page of the call named, or -1.
int FirstRepeatedFrame(const RepeatedPtrField<v1::PageHandle>& pages) {
  thread_local std::vector<uint64_t> frames;
  frames.clear();
  for (const v1::PageHandle& h : pages) frames.push_back(h.frame());
  std::sort(frames.begin(), frames.end());
  auto dup = std::adjacent_find(frames.begin(), frames.end());
  if (dup == frames.end()) return -1;
  bool seen = false;
  for (int i = 0; i < pages.size(); ++i) {
    if (pages[i].frame() != *dup) continue;
    if (seen) return i;
    seen = true;
  }
  return -1;
}

// The all-or-nothing check of a unary Recycle or Return (`what`: "Recycle", `done`: "recycled"):
// OK when every page may be given back; else the status of the first bad page, naming its index
// and saying that nothing was done.
absl::Status CheckGiveBack(const pool::PhysMemory& memory, uint64_t pool_id,
                           const RepeatedPtrField<v1::PageHandle>& pages, const char* what,
                           const char* done) {
  auto refuse = [&](const absl::Status& s, int index) {
    return absl::Status(
        s.code(), absl::StrCat(what, " on pool ", pool_id, ": page #", index, ": ", s.message(),
                               "; no page was ", done, " (", what, " is all-or-nothing)"));
  };
  for (int i = 0; i < pages.size(); ++i) {
    if (absl::Status s = CheckHandle(memory, pool_id, pages[i]); !s.ok()) return refuse(s, i);
  }
  if (int i = FirstRepeatedFrame(pages); i >= 0) {
    return refuse(absl::InvalidArgumentError(
                      absl::StrCat("frame ", pages[i].frame(), " is named twice in the call")),
                  i);
  }
  return absl::OkStatus();
}

// The status of a unary give-back whose check passed but some of whose pages another call gave
// back meanwhile: the first refusal, with how many pages this call did.
absl::Status RaceResult(const GiveBackTally& t, int pages, uint64_t done, const char* verb) {
  if (t.refused == 0) return absl::OkStatus();
  return absl::Status(t.first_error.code(),
                      absl::StrCat(t.first_error.message(), " (given back by another call after ",
                                   "this call checked it); ", done, " of ", pages, " pages were ",
                                   verb, ", the other ", t.refused, " were not"));
}

}  // namespace

absl::Status Runtime::CheckPageLimit(uint64_t n, std::string_view call, std::string_view before,
                                     std::string_view after) const {
  if (n <= options_.max_pages_per_call) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat(base::AbslView(call), ": ", base::AbslView(before), n, base::AbslView(after),
                   " is above the limit ", options_.max_pages_per_call, " (--max-pages-per-call)"));
}

absl::Status Runtime::CheckHeld(const TrafficCache& cache, uint32_t count) {
  if (cache.max_held_ == 0 || cache.held_ + count <= cache.max_held_) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "Traffic: this stream holds ", cache.held_, " pages; ", count, " more would pass the limit ",
      cache.max_held_, " (--max-held-per-stream): give pages back first, or use more streams"));
}

absl::Status Runtime::AllocateFrom(const PoolRef& ref, uint32_t count,
                                   RepeatedPtrField<v1::Page>* out) {
  pool::NicPool& p = *ref.pool;
  std::vector<pool::PoolPage>& pages = ScratchPages();
  absl::Status s;
  {
    base::MutexLock napi(&p.napi_mu());
    if (p.napi_stopped()) {
      if (p.pool().destroyed()) {
        return absl::FailedPreconditionError(
            absl::StrCat("Allocate: pool ", p.id(), " is destroyed"));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "Allocate: pool ", p.id(), "'s queue is stopped (its driver destroyed it, or the queue ",
          "was restarted); the pool lives on only for its ", p.xdp_rxqs(),
          " xdp_rxq registration(s)"));
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
  if (absl::Status s = CheckGiveBack(*memory_, pool_id, pages, "Recycle", "recycled"); !s.ok()) {
    return s;
  }
  GiveBackTally t;
  RecycleBatch(*found->pool, pages, napi_local, &t);
  out->set_cached(t.cached);
  out->set_ring(t.ring);
  out->set_released(t.released);
  return RaceResult(t, pages.size(), t.cached + t.ring + t.released, "recycled");
}

absl::Status Runtime::Return(uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                             v1::ReturnResponse* out) {
  if (pages.empty()) return absl::InvalidArgumentError("Return: no pages given");
  if (absl::Status s = CheckPageLimit(pages.size(), "Return", "", " pages"); !s.ok()) return s;
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Return");
  if (absl::Status s = CheckGiveBack(*memory_, pool_id, pages, "Return", "returned"); !s.ok()) {
    return s;
  }
  GiveBackTally t;
  ReturnBatch(*found->pool, pages, &t);
  out->set_returned(t.returned);
  out->set_unmapped(t.unmapped);
  return RaceResult(t, pages.size(), t.returned, "returned");
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
  const uint64_t given_back = t.cached + t.ring + t.released + t.returned;
  ops += given_back;
  cache->Forget(given_back);
  if (t.refused > 0) fail(t.Result(), static_cast<uint32_t>(t.refused));
  if (req.allocate() > 0) {
    absl::Status s = CheckHeld(*cache, req.allocate());
    if (s.ok()) s = AllocateFrom(ref, req.allocate(), out->mutable_allocated());
    if (s.ok()) {
      ops += req.allocate();
      cache->held_ += req.allocate();
    } else {
      fail(s, 1);
    }
  }
  return ops;
}

}  // namespace pagepool::server
