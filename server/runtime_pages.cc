// File: server/runtime_pages.cc
//
// Runtime: the page calls (Allocate, Recycle, Return) and the Traffic batch built from them, for
// whole pages and for fragments (each fragment give-back checked against the pool's FragLedger
// before the pool sees it).
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
std::vector<pool::PoolFrag>& ScratchFrags() {
  thread_local std::vector<pool::PoolFrag> frags;
  frags.clear();
  return frags;
}

// Counts of a batch of give-backs.
struct GiveBackTally {
  uint64_t cached = 0, ring = 0, released = 0, returned = 0, unmapped = 0;
  uint64_t frags_recycled = 0, frags_returned = 0, pages_from_frags = 0;
  uint64_t refused = 0;
  absl::Status first_error;

  void Refuse(const absl::Status& s, int index, const char* what, uint64_t pool_id,
              const char* item = "page") {
    if (refused++ == 0) {
      first_error = absl::Status(s.code(), absl::StrCat(what, " on pool ", pool_id, ": ", item,
                                                        " #", index, ": ", s.message()));
    }
  }
  void Count(pool::RecycleResult r) {
    switch (r) {
      case pool::RecycleResult::kCached: ++cached; break;
      case pool::RecycleResult::kRing: ++ring; break;
      case pool::RecycleResult::kReleased: ++released; break;
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
      t->Count(*r);
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

// Gives fragments back to the pool (`release`: Return, else Recycle), each one checked against
// the ledger first unless `taken` (the unary calls took them all at once). Recycle puts go direct
// when napi_local and the NAPI context still runs.
void FragBatch(pool::NicPool& p, FragLedger* ledger, const RepeatedPtrField<v1::FragHandle>& frags,
               bool release, bool napi_local, bool taken, GiveBackTally* t) {
  const char* what = release ? "Return" : "Recycle";
  auto all = [&](bool direct) {
    for (int i = 0; i < frags.size(); ++i) {
      const pool::FragHandle f = FromWire(frags[i]);
      if (!taken && ledger != nullptr) {
        if (absl::Status s = ledger->Take(f); !s.ok()) {
          t->Refuse(s, i, what, p.id(), "fragment");
          continue;
        }
      }
      auto r = release ? p.pool().ReturnFrag(f) : p.pool().PutFrag(f, direct);
      if (!r.ok()) {
        t->Refuse(r.status(), i, what, p.id(), "fragment");
        continue;
      }
      ++(release ? t->frags_returned : t->frags_recycled);
      if (r->refs_left != 0) continue;  // other references keep the page in flight
      ++t->pages_from_frags;
      if (release) {
        ++t->returned;
        if (r->unmapped) ++t->unmapped;
      } else {
        t->Count(r->result);
      }
    }
  };
  if (release || !napi_local) {
    all(false);
    return;
  }
  base::MutexLock napi(&p.napi_mu());
  all(!p.napi_stopped());
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
  // A page split into fragments is handed out under its pool's id with kFragOwnerBit set.
  const uint32_t owner = pool::PageRecord::OwnerOf(og) & ~pool::kFragOwnerBit;
  const bool fragmented = (pool::PageRecord::OwnerOf(og) & pool::kFragOwnerBit) != 0;
  const uint32_t gen = pool::PageRecord::GenerationOf(og);
  if (owner == static_cast<uint32_t>(pool_id) && gen == h.generation() && !fragmented) {
    return absl::OkStatus();
  }
  if (owner == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "frame ", h.frame(),
        " is not in flight from a page pool (freed or never allocated; double return?)"));
  }
  if (owner != static_cast<uint32_t>(pool_id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("frame ", h.frame(), " belongs to pool ", owner, ", not pool ", pool_id));
  }
  if (fragmented && gen == h.generation()) {
    return absl::FailedPreconditionError(
        absl::StrCat("frame ", h.frame(),
                     " is split into fragments: give its fragments back one by one (frags)"));
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

// What a fragment give-back would be refused for by the pool's own checks (the ledger's come
// after), or OK: a frame within memory, a 64-byte aligned offset and a size inside the page, the
// page split into fragments by this pool at that generation.
absl::Status CheckFragHandle(const pool::PhysMemory& memory, uint64_t pool_id, uint64_t page_bytes,
                             const v1::FragHandle& f) {
  const v1::PageHandle& h = f.page();
  if (h.frame() >= memory.frames()) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame ", h.frame(), " is beyond memory (", memory.frames(), " frames)"));
  }
  if (f.size() == 0 || uint64_t{f.offset()} + f.size() > page_bytes ||
      f.offset() % pool::kFragAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a fragment at offset ", f.offset(), " of ", f.size(), " bytes is not inside a page of ",
        page_bytes, " bytes at a multiple of ", pool::kFragAlign));
  }
  const uint64_t og = memory.record(h.frame()).owner_gen.load(std::memory_order_acquire);
  const uint32_t raw_owner = pool::PageRecord::OwnerOf(og);
  const uint32_t owner = raw_owner & ~pool::kFragOwnerBit;
  const uint32_t gen = pool::PageRecord::GenerationOf(og);
  if (raw_owner == (static_cast<uint32_t>(pool_id) | pool::kFragOwnerBit) &&
      gen == h.generation()) {
    return absl::OkStatus();
  }
  if (owner == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("frame ", h.frame(),
                     " is not in flight from a page pool (its last fragment was given back, or "
                     "it was never allocated; double return?)"));
  }
  if (owner != static_cast<uint32_t>(pool_id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("frame ", h.frame(), " belongs to pool ", owner, ", not pool ", pool_id));
  }
  if (raw_owner == owner && gen == h.generation()) {
    return absl::FailedPreconditionError(
        absl::StrCat("frame ", h.frame(), " generation ", h.generation(),
                     " is a whole page, not split into fragments: give it back in `pages`"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "frame ", h.frame(), " generation ", h.generation(),
      " is not split into fragments at that generation (the frame is at generation ", gen,
      "): its last fragment was given back already (double return?) or the handle is stale"));
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
// OK when every page and fragment may be given back, the fragments' references then taken from
// `ledger` all at once; else the status of the first bad page or fragment, naming its index and
// saying that nothing was done (and no reference is taken).
absl::Status CheckGiveBack(const pool::PhysMemory& memory, const internal::PoolRef& ref,
                           uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                           const RepeatedPtrField<v1::FragHandle>& frags, const char* what,
                           const char* done) {
  auto refuse = [&](const absl::Status& s, int index, const char* item) {
    return absl::Status(s.code(), absl::StrCat(what, " on pool ", pool_id, ": ", item, " #", index,
                                               ": ", s.message(), "; no page was ", done, " (",
                                               what, " is all-or-nothing)"));
  };
  for (int i = 0; i < pages.size(); ++i) {
    if (absl::Status s = CheckHandle(memory, pool_id, pages[i]); !s.ok()) {
      return refuse(s, i, "page");
    }
  }
  if (int i = FirstRepeatedFrame(pages); i >= 0) {
    return refuse(absl::InvalidArgumentError(
                      absl::StrCat("frame ", pages[i].frame(), " is named twice in the call")),
                  i, "page");
  }
  if (frags.empty()) return absl::OkStatus();
  const uint64_t page_bytes = ref.pool->pool().page_bytes();
  for (int i = 0; i < frags.size(); ++i) {
    if (absl::Status s = CheckFragHandle(memory, pool_id, page_bytes, frags[i]); !s.ok()) {
      if (ref.frags != nullptr) ref.frags->CountRefusal();
      return refuse(s, i, "fragment");
    }
  }
  if (ref.frags == nullptr) return absl::OkStatus();  // a pool being forgotten: nothing is held
  thread_local std::vector<pool::FragHandle> handles;
  handles.clear();
  for (const v1::FragHandle& f : frags) handles.push_back(FromWire(f));
  int bad = -1;
  if (absl::Status s = ref.frags->TakeAll(handles, &bad); !s.ok()) {
    return refuse(s, bad, "fragment");
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

// A device that models its translation caches receives a packet into every buffer it is given:
// its DMA write walks the IOMMU (IOTLB, walk caches, accessed and dirty bits) as hardware does.
// Called in the pool's NAPI context, so no destroy can unmap the buffer meanwhile. A fault is
// counted by the domain (GetDomain.faults) and does not fail the allocation.
void Runtime::DeviceReceives(const PoolRef& ref, dma::DmaAddr addr, uint64_t len) {
  if (addr == 0 || len == 0) return;  // a pool that does not DMA-map: the driver maps on its own
  (void)ref.device->nic->device().DmaWrite(addr, len);
}

absl::Status Runtime::AllocateFrom(const PoolRef& ref, uint32_t count, uint32_t frag_size,
                                   RepeatedPtrField<v1::Page>* out) {
  pool::NicPool& p = *ref.pool;
  if (frag_size != 0) {
    const uint64_t page_bytes = p.pool().page_bytes();
    if (frag_size > page_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("Allocate: frag_size ", frag_size, " is above the page size of pool ",
                       p.id(), " (", page_bytes, " bytes: 4096 << order ", p.pool().params().order,
                       "); page_pool_alloc_frag refuses it (0 asks for whole pages)"));
    }
    std::vector<pool::PoolFrag>& frags = ScratchFrags();
    absl::Status s;
    {
      base::MutexLock napi(&p.napi_mu());
      if (p.napi_stopped()) {
        return absl::FailedPreconditionError(
            absl::StrCat("Allocate: pool ", p.id(), " is destroyed"));
      }
      frags.reserve(count);
      for (uint32_t i = 0; i < count; ++i) {
        absl::StatusOr<pool::PoolFrag> f = p.pool().AllocFrag(frag_size);
        if (!f.ok()) {
          s = f.status();
          break;
        }
        frags.push_back(*f);
      }
      if (s.ok() && ref.device->spec.model_iotlb) {
        for (const pool::PoolFrag& f : frags) DeviceReceives(ref, f.dma_addr, f.handle.size);
      }
      if (!s.ok()) {
        // All or nothing: the fragments this call took go back, as a driver would (direct).
        for (const pool::PoolFrag& f : frags) (void)p.pool().PutFrag(f.handle, true);
      }
    }
    if (!s.ok()) {
      return base::Annotate(s, absl::StrCat("Allocate ", count, " fragments of ", frag_size,
                                            " bytes from pool ", p.id()));
    }
    if (ref.frags != nullptr) ref.frags->Add(frags);
    out->Reserve(static_cast<int>(frags.size()));
    for (const pool::PoolFrag& f : frags) FillFrag(f, out->Add());
    return absl::OkStatus();
  }
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
    if (s.ok() && ref.device->spec.model_iotlb) {
      const pool::PagePoolParams& params = p.pool().params();
      const uint64_t len =
          params.max_len != 0 ? params.max_len : p.pool().page_bytes() - params.offset;
      for (const pool::PoolPage& pg : pages) {
        if (pg.dma_addr != 0) DeviceReceives(ref, pg.dma_addr + params.offset, len);
      }
    }
  }
  if (!s.ok()) {
    return base::Annotate(s, absl::StrCat("Allocate ", count, " pages from pool ", p.id()));
  }
  out->Reserve(static_cast<int>(pages.size()));
  for (const pool::PoolPage& pg : pages) FillPage(pg, out->Add());
  return absl::OkStatus();
}

absl::Status Runtime::Allocate(uint64_t pool_id, uint32_t count, uint32_t frag_size,
                               RepeatedPtrField<v1::Page>* out) {
  if (count == 0) return absl::InvalidArgumentError("Allocate: count is 0, must be at least 1");
  if (absl::Status s = CheckPageLimit(count, "Allocate", "count ", ""); !s.ok()) return s;
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Allocate");
  return AllocateFrom(*found, count, frag_size, out);
}

absl::StatusOr<internal::PoolRef> Runtime::FindPoolToGiveBack(
    uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
    const RepeatedPtrField<v1::FragHandle>& frags, const char* call, const char* done) {
  if (pages.empty() && frags.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(call, ": no pages or fragments given"));
  }
  const uint64_t n = uint64_t(pages.size()) + uint64_t(frags.size());
  if (absl::Status s =
          CheckPageLimit(n, call, "", frags.empty() ? " pages" : " pages and fragments");
      !s.ok()) {
    return s;
  }
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), call);
  if (absl::Status s = CheckGiveBack(*memory_, *found, pool_id, pages, frags, call, done);
      !s.ok()) {
    return s;
  }
  return found;
}

absl::Status Runtime::Recycle(uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                              const RepeatedPtrField<v1::FragHandle>& frags, bool napi_local,
                              v1::RecycleResponse* out) {
  auto found = FindPoolToGiveBack(pool_id, pages, frags, "Recycle", "recycled");
  if (!found.ok()) return found.status();
  const uint64_t n = uint64_t(pages.size()) + uint64_t(frags.size());
  GiveBackTally t;
  if (!pages.empty()) RecycleBatch(*found->pool, pages, napi_local, &t);
  if (!frags.empty()) {
    FragBatch(*found->pool, found->frags.get(), frags, /*release=*/false, napi_local,
              /*taken=*/true, &t);
  }
  out->set_cached(t.cached);
  out->set_ring(t.ring);
  out->set_released(t.released);
  out->set_frags(t.frags_recycled);
  out->set_pages_from_frags(t.pages_from_frags);
  return RaceResult(t, static_cast<int>(n),
                    t.cached + t.ring + t.released - t.pages_from_frags + t.frags_recycled,
                    "recycled");
}

absl::Status Runtime::Return(uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                             const RepeatedPtrField<v1::FragHandle>& frags,
                             v1::ReturnResponse* out) {
  auto found = FindPoolToGiveBack(pool_id, pages, frags, "Return", "returned");
  if (!found.ok()) return found.status();
  const uint64_t n = uint64_t(pages.size()) + uint64_t(frags.size());
  GiveBackTally t;
  if (!pages.empty()) ReturnBatch(*found->pool, pages, &t);
  if (!frags.empty()) {
    FragBatch(*found->pool, found->frags.get(), frags, /*release=*/true, false, /*taken=*/true, &t);
  }
  out->set_returned(t.returned);
  out->set_unmapped(t.unmapped);
  out->set_frags(t.frags_returned);
  out->set_pages_from_frags(t.pages_from_frags);
  return RaceResult(t, static_cast<int>(n), t.returned - t.pages_from_frags + t.frags_returned,
                    "returned");
}

absl::Status Runtime::RefFrag(uint64_t pool_id, const RepeatedPtrField<v1::FragHandle>& frags,
                              v1::RefFragResponse* out) {
  if (frags.empty()) return absl::InvalidArgumentError("RefFrag: no fragments given");
  if (absl::Status s = CheckPageLimit(frags.size(), "RefFrag", "", " fragments"); !s.ok()) {
    return s;
  }
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "RefFrag");
  auto refuse = [&](const absl::Status& s, int index) {
    return absl::Status(s.code(), absl::StrCat("RefFrag on pool ", pool_id, ": fragment #", index,
                                               ": ", s.message(),
                                               "; no reference was added (RefFrag is "
                                               "all-or-nothing)"));
  };
  pool::PagePool& pp = found->pool->pool();
  for (int i = 0; i < frags.size(); ++i) {
    if (absl::Status s = CheckFragHandle(*memory_, pool_id, pp.page_bytes(), frags[i]); !s.ok()) {
      if (found->frags != nullptr) found->frags->CountRefusal();
      return refuse(s, i);
    }
  }
  if (found->frags == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("RefFrag: pool ", pool_id, " holds no fragment any more"));
  }
  std::vector<pool::FragHandle> handles;
  handles.reserve(frags.size());
  for (const v1::FragHandle& f : frags) handles.push_back(FromWire(f));
  int bad = -1;
  absl::Status s = found->frags->RefAll(
      handles, &bad, [&](size_t i) { return pp.RefFrag(handles[i]); },
      // The fragment's own reference is held (the ledger says so): this put never drops the last.
      [&](size_t i) { (void)pp.PutFrag(handles[i], /*napi_local=*/false); });
  if (!s.ok()) return refuse(s, bad);
  out->set_refs(handles.size());
  return absl::OkStatus();
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
  uint64_t total = uint64_t{req.allocate()} + req.recycle_size() + req.return_pages_size() +
                   req.recycle_frags_size() + req.return_frags_size();
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
  if (!req.recycle_frags().empty()) {
    FragBatch(*ref.pool, ref.frags.get(), req.recycle_frags(), /*release=*/false, req.napi_local(),
              /*taken=*/false, &t);
  }
  if (!req.return_pages().empty()) ReturnBatch(*ref.pool, req.return_pages(), &t);
  if (!req.return_frags().empty()) {
    FragBatch(*ref.pool, ref.frags.get(), req.return_frags(), /*release=*/true, false,
              /*taken=*/false, &t);
  }
  out->set_recycled_cached(t.cached);
  out->set_recycled_ring(t.ring);
  out->set_recycled_released(t.released);
  out->set_returned(t.returned);
  out->set_frags_recycled(t.frags_recycled);
  out->set_frags_returned(t.frags_returned);
  out->set_pages_from_frags(t.pages_from_frags);
  // Whole pages and fragments given back (a page freed by its last fragment is that fragment).
  const uint64_t given_back = t.cached + t.ring + t.released + t.returned - t.pages_from_frags +
                              t.frags_recycled + t.frags_returned;
  ops += given_back;
  cache->Forget(given_back);
  if (t.refused > 0) fail(t.Result(), static_cast<uint32_t>(t.refused));
  if (req.allocate() > 0) {
    absl::Status s = CheckHeld(*cache, req.allocate());
    if (s.ok()) s = AllocateFrom(ref, req.allocate(), req.frag_size(), out->mutable_allocated());
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
