#include "pool/page_pool.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/clock.h"
#include "base/rcu.h"
#include "pool/internal/ptr_ring.h"

namespace pagepool::pool {
namespace {

std::atomic<uint32_t> g_next_pool_id{1};

// Why the last slow path came back empty.
enum AllocError : int { kAllocOk = 0, kNoMemory, kMapFailed, kIovaFull, kIndexFull, kDestroyed };

// A counter with one writer (the NAPI context): a plain load+store, no locked instruction.
inline void BumpSingle(std::atomic<uint64_t>& c) {
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}
inline void BumpShared(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

// ktime_get_boottime_seconds(): the netlink detach_time.
int64_t BoottimeSeconds() {
  timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t(ts.tv_sec);
}

// The status for an allocation that came back empty, by its AllocError. `device` (null when the
// pool does not DMA-map) names the DMA mask the IOVA space is under.
absl::Status AllocErrorStatus(int err, uint64_t pool_id, const dma::Device* device) {
  switch (err) {
    case kDestroyed:
      return absl::FailedPreconditionError(absl::StrCat("pool ", pool_id, " is destroyed"));
    case kIovaFull:
      return absl::ResourceExhaustedError(
          absl::StrCat("pool ", pool_id, ": IOVA space exhausted",
                       device == nullptr ? std::string()
                                         : absl::StrCat(" below the ", device->dma_mask_bits(),
                                                        "-bit DMA mask of device ", device->name()),
                       " (dma_map failed)"));
    case kMapFailed:
      return absl::FailedPreconditionError(
          absl::StrCat("pool ", pool_id, ": dma_map failed (device unbound?)"));
    case kIndexFull:
      return absl::ResourceExhaustedError(
          absl::StrCat("pool ", pool_id, ": in-flight index ID space exhausted"));
    default:
      return absl::ResourceExhaustedError(
          absl::StrCat("pool ", pool_id, ": out of simulated memory"));
  }
}

}  // namespace

std::string_view DestroyStrategyName(DestroyStrategy strategy) {
  switch (strategy) {
    case DestroyStrategy::kXarray: return "xarray";
    case DestroyStrategy::kScan: return "scan";
    case DestroyStrategy::kNone: return "none";
  }
  return "unknown";
}

absl::StatusOr<std::shared_ptr<PagePool>> PagePool::Create(std::shared_ptr<PhysMemory> memory,
                                                           std::shared_ptr<dma::Device> device,
                                                           const PagePoolParams& params) {
  if (memory == nullptr) return absl::InvalidArgumentError("page pool needs a PhysMemory");
  if (params.order > PhysMemory::kMaxOrder) {
    return absl::InvalidArgumentError(
        absl::StrCat("order ", params.order, " above ", PhysMemory::kMaxOrder));
  }
  const bool dma_map = (params.flags & kPpFlagDmaMap) != 0;
  if ((params.flags & ~(kPpFlagDmaMap | kPpFlagDmaSyncDev)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown pool flags ", params.flags));
  }
  // page_pool_init's checks.
  if (dma_map && params.dma_dir != dma::DmaDirection::kFromDevice &&
      params.dma_dir != dma::DmaDirection::kBidirectional) {
    return absl::InvalidArgumentError(
        "PP_FLAG_DMA_MAP needs dma_dir DMA_FROM_DEVICE or DMA_BIDIRECTIONAL");
  }
  if ((params.flags & kPpFlagDmaSyncDev) && !dma_map) {
    return absl::InvalidArgumentError("PP_FLAG_DMA_SYNC_DEV needs PP_FLAG_DMA_MAP");
  }
  if ((params.flags & kPpFlagDmaSyncDev) && params.max_len == 0) {
    return absl::InvalidArgumentError("PP_FLAG_DMA_SYNC_DEV needs max_len");
  }
  const uint64_t page_bytes = dma::kPageSize << params.order;
  const uint64_t max_len = params.max_len == 0 ? page_bytes : params.max_len;
  if (uint64_t{params.offset} + max_len > page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("offset ", params.offset, " + max_len ", max_len,
                                                   " beyond the page (", page_bytes, " bytes)"));
  }
  if (dma_map && device == nullptr) {
    return absl::InvalidArgumentError("PP_FLAG_DMA_MAP needs a device");
  }
  if (device != nullptr && !device->bound()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", device->name(), " is unbound: no new pools"));
  }
  if (params.dma_index_limit == 0) {
    return absl::InvalidArgumentError("dma_index_limit must be at least 1");
  }
  const uint32_t id = g_next_pool_id.fetch_add(1, std::memory_order_relaxed);
  if (id == 0 || id >= kFragOwnerBit) return absl::ResourceExhaustedError("pool ids exhausted");
  return std::shared_ptr<PagePool>(new PagePool(std::move(memory), std::move(device), params, id));
}

PagePool::PagePool(std::shared_ptr<PhysMemory> memory, std::shared_ptr<dma::Device> device,
                   const PagePoolParams& params, uint32_t id)
    : id_(id),
      params_(params),
      memory_(std::move(memory)),
      device_(std::move(device)),
      clock_(params.clock != nullptr ? params.clock : base::Clock::Real()),
      dma_map_((params.flags & kPpFlagDmaMap) != 0),
      dma_sync_max_len_(params.max_len == 0 ? uint32_t(dma::kPageSize << params.order)
                                            : params.max_len),
      dma_sync_((params.flags & kPpFlagDmaSyncDev) != 0 && params.dma_need_sync &&
                device_ != nullptr && device_->need_sync()) {
  netdev_linked_.store(params_.ifindex != 0, std::memory_order_relaxed);
  if (params_.strategy == DestroyStrategy::kXarray && dma_map_) {
    index_ = std::make_unique<InflightIndex>(params_.dma_index_limit);
  }
  const uint32_t ring_size =
      params_.pool_size == 0 ? kPpDefaultRingSize : std::min(params_.pool_size, kPpMaxRingSize);
  ring_ = std::make_unique<internal::PtrRing>(ring_size);
  pref_nid_ = params_.nid < 0 ? 0 : uint32_t(params_.nid);
}

PagePool::~PagePool() {
  if (!destroyed()) {
    // A pool dropped without Destroy: give back what it holds itself (user-held pages stay
    // allocated and can no longer be given back).
    ring_->Close();
    FreeFrag();
    EmptyAllocCache();
    EmptyRing();
  }
}

// ---------------------------------------------------------------------------------------------------
// Allocation (NAPI context)

PageRecord* PagePool::AllocPage() {
  // __page_pool_get_cached
  if (CacheCount() > 0) [[likely]] {
    PageRecord* page = CachePop();
    BumpSingle(stats_.alloc_fast);
    return page;
  }
  PageRecord* page = RefillAllocCache();
  if (page != nullptr) return page;
  return AllocSlow();
}

PageRecord* PagePool::RefillAllocCache() {
  // Quicker fallback, avoid locks when ring is empty.
  if (ring_->Empty()) {
    BumpSingle(stats_.alloc_empty);
    return nullptr;
  }
  PageRecord* page = nullptr;
  ring_->WithConsumerLock([&] {
    do {
      PageRecord* p = ring_->ConsumeLocked();
      if (p == nullptr) break;
      if (memory_->FrameNid(memory_->FrameOf(p)) == pref_nid_) [[likely]] {
        CachePush(p);
      } else {
        // NUMA mismatch: release one page and fall through to the page allocator.
        ReleasePage(p);
        BumpSingle(stats_.alloc_waive);
        break;
      }
    } while (CacheCount() < kPpAllocCacheRefill);
  });
  if (CacheCount() > 0) [[likely]] {
    page = CachePop();
    BumpSingle(stats_.alloc_refill);
  }
  return page;
}

void PagePool::SetPpInfo(PageRecord* page) {
  // page_pool_set_pp_info: OR the signature in (the DMA index bits may already be set).
  // The pool owns the page here: no RMW needed.
  page->pp_magic.store(page->pp_magic.load(std::memory_order_relaxed) | kPpSignature,
                       std::memory_order_relaxed);
  page->pp_ref_count.store(1, std::memory_order_relaxed);
  page->SetOwnerKeepGeneration(id_, std::memory_order_release);
}

bool PagePool::DmaMapOnly(PageRecord* page) {
  const dma::PhysAddr phys = PhysMemory::PhysOf(memory_->FrameOf(page));
  absl::StatusOr<dma::DmaAddr> dma = device_->MapPage(phys, page_bytes(), params_.dma_dir);
  if (!dma.ok()) [[unlikely]] {
    map_failures_.fetch_add(1, std::memory_order_relaxed);
    last_alloc_error_.store(
        dma.status().code() == absl::StatusCode::kResourceExhausted ? kIovaFull : kMapFailed,
        std::memory_order_relaxed);
    return false;
  }
  page->dma_addr.store(*dma, std::memory_order_release);
  return true;
}

bool PagePool::DmaMap(PageRecord* page) {
  // page_pool_dma_map for one page (the high-order path): map, track, sync.
  if (!DmaMapOnly(page)) return false;
  if (index_ != nullptr) {
    // page_pool_register_dma_index
    absl::StatusOr<uint32_t> id = index_->Alloc(page);
    if (!id.ok()) {
      UnmapUntrackable(page);
      return false;
    }
    page->pp_magic.store(uint64_t{*id} << kPpDmaIndexShift, std::memory_order_release);
  }
  DmaSyncForDevice(page, dma_sync_max_len_);
  return true;
}

void PagePool::UnmapClaimed(dma::DmaAddr dma) {
  // With kNone on an unbound device the Device refuses and counts this: the seed-002 crash.
  (void)device_->UnmapPage(dma, page_bytes(), params_.dma_dir);
}

void PagePool::UnmapClaimedPages(absl::Span<const dma::DmaAddr> claimed) {
  constexpr size_t kUnmapAhead = 8;
  for (size_t i = 0; i < std::min(kUnmapAhead, claimed.size()); ++i) {
    device_->PrefetchUnmap(claimed[i]);
  }
  for (size_t i = 0; i < claimed.size(); ++i) {
    if (i + kUnmapAhead < claimed.size()) device_->PrefetchUnmap(claimed[i + kUnmapAhead]);
    UnmapClaimed(claimed[i]);
  }
}

void PagePool::UnmapUntrackable(PageRecord* page) {
  UnmapClaimed(page->dma_addr.exchange(0, std::memory_order_relaxed));
  index_exhausted_.fetch_add(1, std::memory_order_relaxed);
  last_alloc_error_.store(kIndexFull, std::memory_order_relaxed);
}

PageRecord* PagePool::AllocPageOrder() {
  absl::StatusOr<FrameNumber> frame = memory_->AllocPages(params_.order);
  if (!frame.ok()) {
    last_alloc_error_.store(kNoMemory, std::memory_order_relaxed);
    return nullptr;
  }
  PageRecord* page = &memory_->record(*frame);
  if (dma_map_ && !DmaMap(page)) [[unlikely]] {
    memory_->PutPage(*frame);
    return nullptr;
  }
  if (dma_map_ && index_ == nullptr) dma_mapped_.fetch_add(1, std::memory_order_relaxed);
  BumpSingle(stats_.alloc_slow_high_order);
  SetPpInfo(page);
  hold_cnt_.store(hold_cnt_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  return page;
}

PageRecord* PagePool::AllocSlow() {
  if (destroyed_.load(std::memory_order_relaxed)) {
    last_alloc_error_.store(kDestroyed, std::memory_order_relaxed);
    return nullptr;
  }
  if (params_.order != 0) [[unlikely]]
    return AllocPageOrder();
  if (CacheCount() > 0) [[unlikely]]
    return CachePop();

  FrameNumber frames[kPpAllocCacheRefill];
  const size_t nr_pages = memory_->AllocBulk(absl::MakeSpan(frames, kPpAllocCacheRefill));
  if (nr_pages == 0) [[unlikely]] {
    last_alloc_error_.store(kNoMemory, std::memory_order_relaxed);
    return nullptr;
  }
  // __page_pool_alloc_pages_slow: page_pool_dma_map page by page (map, one index allocation,
  // sync), as upstream does.
  size_t n = 0;
  for (size_t i = 0; i < nr_pages; ++i) {
    PageRecord* page = &memory_->record(frames[i]);
    if (dma_map_ && !DmaMap(page)) [[unlikely]] {
      memory_->PutPage(frames[i]);
      continue;
    }
    SetPpInfo(page);
    CachePush(page);
    ++n;
  }
  if (dma_map_ && index_ == nullptr) dma_mapped_.fetch_add(n, std::memory_order_relaxed);
  // pages_state_hold_cnt
  hold_cnt_.store(hold_cnt_.load(std::memory_order_relaxed) + uint32_t(n),
                  std::memory_order_release);
  if (CacheCount() > 0) [[likely]] {
    BumpSingle(stats_.alloc_slow);
    return CachePop();
  }
  return nullptr;
}

void PagePool::SetNid(int nid) {
  const uint32_t new_nid = nid < 0 ? 0 : uint32_t(nid);
  if (new_nid == pref_nid_) return;
  // page_pool_update_nid: flush the alloc cache, as refill checks the node.
  pref_nid_ = new_nid;
  EmptyAllocCache();
}

// ---------------------------------------------------------------------------------------------------
// Recycling and release

void PagePool::DmaSyncForDevice(PageRecord* page, uint32_t dma_sync_size) {
  // page_pool_dma_sync_for_device: re-checked under the RCU read lock so Destroy's grace period
  // after clearing dma_sync_ waits for every sync that saw it set.
  if (!dma_sync_.load(std::memory_order_relaxed)) return;
  base::rcu::ReadLock rcu;
  if (!dma_sync_.load(std::memory_order_acquire)) return;
  const uint32_t len = std::min(dma_sync_size, dma_sync_max_len_);
  (void)device_->SyncForDevice(page->dma_addr.load(std::memory_order_relaxed), params_.offset, len,
                               params_.dma_dir);
  dma_synced_bytes_.fetch_add(len, std::memory_order_relaxed);
}

RecycleResult PagePool::PutPage(PageRecord* page, uint32_t dma_sync_size, bool allow_direct) {
  // __page_pool_put_page: refcount 1 means the pool owns the page and may recycle it.
  if (page->page_ref.load(std::memory_order_acquire) == 1) [[likely]] {
    if (dma_sync_.load(std::memory_order_relaxed)) [[unlikely]] {
      DmaSyncForDevice(page, dma_sync_size);
    }
    // page_pool_recycle_in_cache. After Destroy the NAPI context is detached: nothing goes into
    // the cache any more.
    if (allow_direct && !destroyed_.load(std::memory_order_relaxed)) {
      if (CacheCount() != kPpAllocCacheSize) [[likely]] {
        CachePush(page);
        BumpSingle(stats_.recycle_cached);
        return RecycleResult::kCached;
      }
      BumpSingle(stats_.recycle_cache_full);
    }
    return RecycleInRingOrRelease(page);
  }
  BumpShared(stats_.recycle_released_refcnt);
  ReleasePage(page);
  return RecycleResult::kReleased;
}

RecycleResult PagePool::RecycleInRingOrRelease(PageRecord* page) {
  switch (ring_->Produce(page)) {
    case internal::PtrRing::ProduceResult::kOk:
      BumpShared(stats_.recycle_ring);
      return RecycleResult::kRing;
    case internal::PtrRing::ProduceResult::kFull: BumpShared(stats_.recycle_ring_full); break;
    case internal::PtrRing::ProduceResult::kClosed:
      break;  // destroyed pool: release at once (see the header)
  }
  ReleasePage(page);
  return RecycleResult::kReleased;
}

bool PagePool::ReleasePageDma(PageRecord* page) {
  // __page_pool_release_netmem_dma: the caller owns the page; claim its mapping exactly once.
  if (!dma_map_) return false;
  dma::DmaAddr dma;
  if (index_ != nullptr) {
    // page_pool_release_dma_index
    const uint32_t id = page->DmaIndex();
    if (id == 0) return false;
    dma = page->dma_addr.load(std::memory_order_acquire);
    if (!index_->CompareExchange(id, page, nullptr)) return false;  // the destroy path has it
    // We own the page and its mapping now. Its pp_magic (index bits included) is cleared by the
    // only caller, ReturnPageLocked, right after this.
    page->dma_addr.store(0, std::memory_order_relaxed);
  } else {
    dma = page->dma_addr.exchange(0, std::memory_order_acq_rel);
    if (dma == 0) return false;
    // Untracked pages only: a tracked page left dma_mapped (the index's count) at its claim, so
    // the tracked release path has no shared counter to bump.
    dma_mapped_.fetch_sub(1, std::memory_order_relaxed);
  }
  UnmapClaimed(dma);
  return true;
}

bool PagePool::ReturnPageLocked(PageRecord* page) {
  // __page_pool_return_page
  const bool unmapped = ReleasePageDma(page);
  // page_pool_clear_pp_info; keep the generation.
  page->pp_magic.store(0, std::memory_order_relaxed);
  page->pp_ref_count.store(0, std::memory_order_relaxed);
  page->SetOwnerKeepGeneration(0, std::memory_order_release);
  release_cnt_.fetch_add(1, std::memory_order_acq_rel);
  memory_->PutPage(memory_->FrameOf(page));
  return unmapped;
}

bool PagePool::ReleasePage(PageRecord* page) {
  switch (params_.strategy) {
    case DestroyStrategy::kXarray: {
      // Inside a read-side section so Destroy's last grace period waits for an unmap in progress.
      base::rcu::ReadLock rcu;
      return ReturnPageLocked(page);
    }
    case DestroyStrategy::kScan: {
      // RFC v4: a return that sees no destroy runs inside the read section the destroy's grace
      // period waits for.
      {
        base::rcu::ReadLock rcu;
        if (destroy_cnt_.load(std::memory_order_acquire) == 0) [[likely]] {
          return ReturnPageLocked(page);
        }
      }
      // A destroy runs: serialise with its frame walk on destroy_lock_, taken outside the read
      // section, so a grace period never waits for a return that waits for the lock.
      base::MutexLock l(&destroy_lock_);
      return ReturnPageLocked(page);
    }
    case DestroyStrategy::kNone: break;
  }
  return ReturnPageLocked(page);
}

// ---------------------------------------------------------------------------------------------------
// Handle API

void PagePool::HandOut(PageRecord* page, PoolPage* out) {
  // The pool owns the page here: a plain store bumps the generation (even -> odd).
  const uint32_t gen =
      PageRecord::GenerationOf(page->owner_gen.load(std::memory_order_relaxed)) + 1;
  page->owner_gen.store(PageRecord::MakeOwnerGen(id_, gen), std::memory_order_release);
  const FrameNumber frame = memory_->FrameOf(page);
  out->handle = PageHandle{frame, gen};
  out->dma_addr = page->dma_addr.load(std::memory_order_relaxed);
  out->phys = PhysMemory::PhysOf(frame);
}

absl::StatusOr<PageRecord*> PagePool::ClaimHandle(PageHandle handle, const char* what) {
  if (handle.frame >= memory_->frames()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": frame ", handle.frame, " is beyond memory (", memory_->frames(), " frames)"));
  }
  if ((handle.generation & 1) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": frame ", handle.frame, " generation ", handle.generation,
                     " was never handed out (handed-out generations are odd)"));
  }
  PageRecord* page = &memory_->record(handle.frame);
  uint64_t expected = PageRecord::MakeOwnerGen(id_, handle.generation);
  if (page->owner_gen.compare_exchange_strong(
          expected, PageRecord::MakeOwnerGen(id_, handle.generation + 1), std::memory_order_acq_rel,
          std::memory_order_acquire)) [[likely]] {
    return page;
  }
  const uint32_t owner = PageRecord::OwnerOf(expected);
  const uint32_t gen = PageRecord::GenerationOf(expected);
  if (owner == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": frame ", handle.frame,
                     " is not in flight from a page pool (freed or never "
                     "allocated; double return?)"));
  }
  if (owner == (id_ | kFragOwnerBit)) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": frame ", handle.frame,
                     " is split into fragments: give its fragments back one by one"));
  }
  if (owner != id_) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": frame ", handle.frame, " belongs to pool ", owner, ", not pool ", id_));
  }
  if (gen == handle.generation + 1) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": frame ", handle.frame,
                                                      " generation ", handle.generation,
                                                      " was already given back (double return)"));
  }
  return absl::FailedPreconditionError(absl::StrCat(what, ": stale handle: frame ", handle.frame,
                                                    " generation ", handle.generation,
                                                    ", the frame is at generation ", gen));
}

absl::StatusOr<PoolPage> PagePool::Allocate() {
  if (destroyed()) return AllocErrorStatus(kDestroyed, id_, device_.get());
  last_alloc_error_.store(kAllocOk, std::memory_order_relaxed);
  PageRecord* page = AllocPage();
  if (page == nullptr) return AllocErrorStatus(last_alloc_error_.load(), id_, device_.get());
  PoolPage out;
  HandOut(page, &out);
  return out;
}

absl::Status PagePool::AllocateBulk(size_t count, std::vector<PoolPage>* out) {
  if (destroyed()) return AllocErrorStatus(kDestroyed, id_, device_.get());
  const size_t start = out->size();
  out->reserve(start + count);
  for (size_t i = 0; i < count; ++i) {
    last_alloc_error_.store(kAllocOk, std::memory_order_relaxed);
    PageRecord* page = AllocPage();
    if (page == nullptr) {
      const absl::Status status = AllocErrorStatus(last_alloc_error_.load(), id_, device_.get());
      // All or nothing: give back what this call took, as a driver would (direct recycle).
      for (size_t j = start; j < out->size(); ++j) {
        PageRecord* p = &memory_->record((*out)[j].handle.frame);
        p->owner_gen.store(PageRecord::MakeOwnerGen(id_, (*out)[j].handle.generation + 1),
                           std::memory_order_release);
        PutFullPage(p, /*allow_direct=*/true);
      }
      out->resize(start);
      return status;
    }
    PoolPage pp;
    HandOut(page, &pp);
    out->push_back(pp);
  }
  return absl::OkStatus();
}

absl::StatusOr<RecycleResult> PagePool::Recycle(PageHandle handle, bool napi_local) {
  return Recycle(handle, napi_local, kDmaSyncFullPage);
}

absl::StatusOr<RecycleResult> PagePool::Recycle(PageHandle handle, bool napi_local,
                                                uint32_t dma_sync_size) {
  absl::StatusOr<PageRecord*> page = ClaimHandle(handle, "recycle");
  if (!page.ok()) return page.status();
  return PutPage(*page, dma_sync_size, napi_local);
}

absl::StatusOr<bool> PagePool::Return(PageHandle handle) {
  absl::StatusOr<PageRecord*> page = ClaimHandle(handle, "return");
  if (!page.ok()) return page.status();
  return ReleasePage(*page);
}

absl::Status PagePool::GetPage(PageHandle handle) {
  if (handle.frame >= memory_->frames()) {
    return absl::InvalidArgumentError(
        absl::StrCat("get_page: frame ", handle.frame, " is beyond memory"));
  }
  PageRecord* page = &memory_->record(handle.frame);
  if ((handle.generation & 1) == 0 || page->owner_gen.load(std::memory_order_acquire) !=
                                          PageRecord::MakeOwnerGen(id_, handle.generation)) {
    return absl::FailedPreconditionError(
        absl::StrCat("get_page: frame ", handle.frame, " generation ", handle.generation,
                     " is not a page of pool ", id_, " held by the caller"));
  }
  page->page_ref.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Fragments

int32_t PagePool::UnrefNetmem(PageRecord* page, uint32_t nr) {
  uint16_t c = page->pp_ref_count.load(std::memory_order_acquire);
  do {
    if (c < nr) return -1;
  } while (!page->pp_ref_count.compare_exchange_weak(c, uint16_t(c - nr), std::memory_order_acq_rel,
                                                     std::memory_order_acquire));
  return int32_t(c - nr);
}

void PagePool::HandOutFrag(PageRecord* page) {
  // page_pool_fragment_netmem(BIAS_MAX), published before the owner word a put checks first.
  page->pp_ref_count.store(kPpFragBias, std::memory_order_relaxed);
  const uint32_t gen =
      PageRecord::GenerationOf(page->owner_gen.load(std::memory_order_relaxed)) + 1;
  page->owner_gen.store(PageRecord::MakeOwnerGen(id_ | kFragOwnerBit, gen),
                        std::memory_order_release);
  frag_pages_.fetch_add(1, std::memory_order_relaxed);
}

bool PagePool::FragPageDone(PageRecord* page, uint32_t generation) {
  // Only the party that took pp_ref_count to 0 at this generation wins; a stale put that took a
  // recycled page's count to 0 loses here.
  uint64_t expected = PageRecord::MakeOwnerGen(id_ | kFragOwnerBit, generation);
  if (!page->owner_gen.compare_exchange_strong(
          expected, PageRecord::MakeOwnerGen(id_, generation + 1), std::memory_order_acq_rel)) {
    return false;
  }
  page->pp_ref_count.store(1, std::memory_order_relaxed);  // an ordinary pool page again
  frag_pages_.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

// Drops the pool's share of the current frag page's references (kPpFragBias - frag_users).
// Returns true when that was the last reference (the page is then the pool's again). Puts beyond a
// page's references that ate into the share are absorbed here (and taken out of frag_refs_ again).
bool PagePool::DropFragBias(PageRecord* page) {
  const uint32_t drain = kPpFragBias - frag_users_.load(std::memory_order_relaxed);
  uint16_t c = page->pp_ref_count.load(std::memory_order_acquire);
  uint32_t n;
  do {
    n = std::min<uint32_t>(c, drain);
  } while (!page->pp_ref_count.compare_exchange_weak(c, uint16_t(c - n), std::memory_order_acq_rel,
                                                     std::memory_order_acquire));
  if (n < drain) frag_refs_.fetch_add(int64_t{drain - n}, std::memory_order_relaxed);
  if (c - n != 0) return false;  // some user still holds a fragment
  const uint32_t gen = PageRecord::GenerationOf(page->owner_gen.load(std::memory_order_acquire));
  return FragPageDone(page, gen);
}

PageRecord* PagePool::DrainFrag(PageRecord* page) {
  // page_pool_drain_frag
  if (!DropFragBias(page)) return nullptr;
  if (page->page_ref.load(std::memory_order_acquire) == 1 &&
      memory_->FrameNid(memory_->FrameOf(page)) == pref_nid_) {
    // __page_pool_page_can_be_recycled: reuse it as the next frag page at once.
    DmaSyncForDevice(page, kDmaSyncFullPage);
    return page;
  }
  ReleasePage(page);
  return nullptr;
}

void PagePool::FreeFrag() {
  // page_pool_free_frag
  PageRecord* page = frag_page_.exchange(nullptr, std::memory_order_relaxed);
  if (page == nullptr) return;
  if (DropFragBias(page)) ReleasePage(page);
}

absl::StatusOr<PoolFrag> PagePool::AllocFrag(uint32_t size) {
  if (destroyed()) return AllocErrorStatus(kDestroyed, id_, device_.get());
  const uint64_t max_size = page_bytes();
  if (size == 0 || size > max_size) {
    return absl::InvalidArgumentError(absl::StrCat("alloc_frag: size ", size, " is not in 1..",
                                                   max_size, " (the pool's page size)"));
  }
  // page_pool_alloc_frag_netmem. max_size is a multiple of kFragAlign: the aligned size fits too.
  size = (size + kFragAlign - 1) & ~(kFragAlign - 1);
  PageRecord* page = frag_page_.load(std::memory_order_relaxed);
  uint32_t offset = frag_offset_.load(std::memory_order_relaxed);
  const uint32_t users = frag_users_.load(std::memory_order_relaxed);
  bool fresh = false;
  if (page != nullptr && (offset + uint64_t{size} > max_size || users + 1 >= kPpFragBias)) {
    page = DrainFrag(page);
    if (page != nullptr) {
      BumpSingle(stats_.alloc_fast);
      HandOutFrag(page);
      fresh = true;
    }
  }
  if (page == nullptr) {
    last_alloc_error_.store(kAllocOk, std::memory_order_relaxed);
    page = AllocPage();
    if (page == nullptr) {
      frag_page_.store(nullptr, std::memory_order_relaxed);
      return AllocErrorStatus(last_alloc_error_.load(), id_, device_.get());
    }
    HandOutFrag(page);
    fresh = true;
  }
  if (fresh) {
    frag_page_.store(page, std::memory_order_relaxed);
    frag_users_.store(1, std::memory_order_relaxed);
    offset = 0;
    frag_offset_.store(size, std::memory_order_relaxed);
  } else {
    frag_users_.store(users + 1, std::memory_order_relaxed);
    frag_offset_.store(offset + size, std::memory_order_relaxed);
    BumpSingle(stats_.alloc_fast);
  }
  frag_refs_.fetch_add(1, std::memory_order_relaxed);
  PoolFrag out;
  const FrameNumber frame = memory_->FrameOf(page);
  out.handle.page =
      PageHandle{frame, PageRecord::GenerationOf(page->owner_gen.load(std::memory_order_relaxed))};
  out.handle.offset = offset;
  out.handle.size = size;
  const dma::DmaAddr dma = page->dma_addr.load(std::memory_order_relaxed);
  out.dma_addr = dma == 0 ? 0 : dma + offset;
  out.phys = PhysMemory::PhysOf(frame) + offset;
  return out;
}

absl::StatusOr<PageRecord*> PagePool::CheckFrag(const FragHandle& frag, const char* what) {
  const FrameNumber frame = frag.page.frame;
  if (frame >= memory_->frames()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": frame ", frame, " is beyond memory (",
                                                   memory_->frames(), " frames)"));
  }
  if (frag.size == 0 || uint64_t{frag.offset} + frag.size > page_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": fragment at ", frag.offset, " of ",
                                                   frag.size, " bytes is not inside the page"));
  }
  PageRecord* page = &memory_->record(frame);
  const uint64_t og = page->owner_gen.load(std::memory_order_acquire);
  if (og != PageRecord::MakeOwnerGen(id_ | kFragOwnerBit, frag.page.generation)) {
    frag_put_refused_.fetch_add(1, std::memory_order_relaxed);
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": frame ", frame, " generation ", frag.page.generation, " is not a page of pool ",
        id_, " split into fragments at that generation (owner ",
        PageRecord::OwnerOf(og) & ~kFragOwnerBit, ", generation ", PageRecord::GenerationOf(og),
        "; double put?)"));
  }
  return page;
}

absl::StatusOr<FragPutResult> PagePool::UnrefFrag(const FragHandle& frag, bool release,
                                                  bool napi_local, uint32_t dma_sync_size) {
  const char* what = release ? "return fragment" : "put fragment";
  absl::StatusOr<PageRecord*> checked = CheckFrag(frag, what);
  if (!checked.ok()) return checked.status();
  PageRecord* page = *checked;
  // page_pool_unref_netmem(1), refusing to go below zero.
  const int32_t left = UnrefNetmem(page, 1);
  if (left < 0 || (left == 0 && !FragPageDone(page, frag.page.generation))) {
    // No reference left; or this put took the count of a page that was meanwhile given back (and
    // set to 1) to 0: put that one back.
    if (left == 0) page->pp_ref_count.fetch_add(1, std::memory_order_relaxed);
    frag_put_refused_.fetch_add(1, std::memory_order_relaxed);
    return absl::FailedPreconditionError(absl::StrCat(what, ": frame ", frag.page.frame,
                                                      " generation ", frag.page.generation,
                                                      " has no reference left (double put?)"));
  }
  frag_refs_.fetch_sub(1, std::memory_order_relaxed);
  FragPutResult out;
  out.refs_left = uint32_t(left);
  if (left > 0) return out;
  // The last reference: page_pool_put_unrefed_netmem, or page_pool_return_page for Return.
  if (release) {
    out.unmapped = ReleasePage(page);
    out.result = RecycleResult::kReleased;
  } else {
    out.result = PutPage(page, dma_sync_size, napi_local);
  }
  return out;
}

absl::StatusOr<FragPutResult> PagePool::PutFrag(const FragHandle& frag, bool napi_local,
                                                uint32_t dma_sync_size) {
  return UnrefFrag(frag, /*release=*/false, napi_local, dma_sync_size);
}

absl::StatusOr<FragPutResult> PagePool::ReturnFrag(const FragHandle& frag) {
  return UnrefFrag(frag, /*release=*/true, /*napi_local=*/false, kDmaSyncFullPage);
}

absl::Status PagePool::RefFrag(const FragHandle& frag) {
  absl::StatusOr<PageRecord*> checked = CheckFrag(frag, "ref fragment");
  if (!checked.ok()) return checked.status();
  PageRecord* page = *checked;
  // page_pool_ref_netmem, refusing a page with no reference left or a count about to overflow.
  uint16_t c = page->pp_ref_count.load(std::memory_order_acquire);
  do {
    if (c == 0) {
      return absl::FailedPreconditionError(absl::StrCat("ref fragment: frame ", frag.page.frame,
                                                        " has no reference left to add one to"));
    }
    if (c == UINT16_MAX) {
      return absl::ResourceExhaustedError(
          absl::StrCat("ref fragment: frame ", frag.page.frame, " pp_ref_count would overflow"));
    }
  } while (!page->pp_ref_count.compare_exchange_weak(c, uint16_t(c + 1), std::memory_order_acq_rel,
                                                     std::memory_order_acquire));
  frag_refs_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

PpRefInfo PagePool::PpRefCount(FrameNumber frame) const {
  PpRefInfo out;
  if (frame >= memory_->frames()) return out;
  const PageRecord* page = &memory_->record(frame);
  out.pp_ref_count = page->pp_ref_count.load(std::memory_order_acquire);
  out.frag_page =
      PageRecord::OwnerOf(page->owner_gen.load(std::memory_order_acquire)) == (id_ | kFragOwnerBit);
  out.current = out.frag_page && frag_page_.load(std::memory_order_relaxed) == page;
  out.user_refs = out.current ? int64_t(out.pp_ref_count) -
                                    (kPpFragBias - frag_users_.load(std::memory_order_relaxed))
                  : out.frag_page ? int64_t(out.pp_ref_count)
                                  : 0;
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Destroy

void PagePool::EmptyAllocCache() {
  while (CacheCount() > 0) ReleasePage(CachePop());
}

void PagePool::EmptyRing() {
  while (PageRecord* page = ring_->Consume()) ReleasePage(page);
}

uint64_t PagePool::ScrubTracked(DestroyResult* result) {
  if (dma_sync_.load(std::memory_order_relaxed)) {
    // Disable page_pool_dma_sync_for_device(); returns that may have seen it set finish first.
    // dma_sync_ is only ever set on a device that needs syncing (dma_dev_need_sync).
    dma_sync_.store(false, std::memory_order_release);
    if (!index_->empty()) {
      base::rcu::Synchronize();  // synchronize_net()
      ++result->grace_periods;
    }
  }
  const uint64_t unmapped = UnmapAllTracked();
  // A return that won its claim before the walk got there may still be inside its unmap: it runs
  // under the RCU read lock, so one grace period covers it.
  base::rcu::Synchronize();
  ++result->grace_periods;
  return unmapped;
}

uint64_t PagePool::UnmapAllTracked() {
  // xa_for_each + __page_pool_release_netmem_dma: claim each page, then one unmap per page. The
  // walk goes a piece of the index at a time (each piece its own read section), so the claims
  // and unmaps of a piece can be pipelined: the piece's page records are prefetched as the walk
  // finds them, and each unmap prefetches the checker entry of an unmap a few pages later.
  constexpr size_t kPiece = 64;
  uint32_t ids[kPiece];
  PageRecord* pages[kPiece];
  dma::DmaAddr dmas[kPiece];
  uint64_t unmapped = 0;
  uint32_t next = 1;
  do {
    size_t n = 0;
    next = index_->ForEachFrom(next, kPiece, [&](uint32_t id, PageRecord* page) {
      __builtin_prefetch(page);
      ids[n] = id;
      pages[n] = page;
      ++n;
      return true;
    });
    // Read each address before its claim: a won claim proves the page was still tracked (mapped
    // by us) when it was read, since no page joins the index of a destroyed pool again. The walk
    // never writes a record: its owner may be freeing it.
    for (size_t i = 0; i < n; ++i) dmas[i] = pages[i]->dma_addr.load(std::memory_order_acquire);
    size_t claimed = 0;
    for (size_t i = 0; i < n; ++i) {
      if (index_->CompareExchange(ids[i], pages[i], nullptr)) dmas[claimed++] = dmas[i];
    }
    UnmapClaimedPages(absl::MakeConstSpan(dmas, claimed));
    unmapped += claimed;
  } while (next != 0);
  return unmapped;  // dma_mapped is the index's count: each claim already took its page out
}

uint64_t PagePool::UnmapInflightScanned(DestroyResult* result) {
  // Returns that did not see destroy_cnt_ (and syncs that saw dma_sync_) finish first.
  base::rcu::Synchronize();
  ++result->grace_periods;
  std::vector<dma::DmaAddr> claimed;
  {
    // Under the lock inflight is stable: the NAPI context allocates no more, and every return
    // either finished in the grace period above or waits for this lock.
    base::MutexLock l(&destroy_lock_);
    const int64_t want = inflight();
    if (want <= 0) return 0;
    claimed.reserve(size_t(want));
    result->frames_scanned = memory_->ScanAllFramesUntil([&](FrameNumber, PageRecord& rec) {
      if (int64_t(claimed.size()) >= want) return false;  // inflight == unmapped: stop
      if (rec.page_ref.load(std::memory_order_relaxed) == 0 || !rec.IsPagePool() ||
          (PageRecord::OwnerOf(rec.owner_gen.load(std::memory_order_acquire)) & ~kFragOwnerBit) !=
              id_) {
        return true;
      }
      const dma::DmaAddr dma = rec.dma_addr.exchange(0, std::memory_order_acq_rel);
      if (dma != 0) claimed.push_back(dma);
      return int64_t(claimed.size()) < want;
    });
  }
  // The claims are ours alone: unmap without the lock, so returns never wait behind an unmap
  // (nor behind the grace period an unmap may wait for).
  UnmapClaimedPages(claimed);
  dma_mapped_.fetch_sub(claimed.size(), std::memory_order_relaxed);
  return claimed.size();
}

absl::Status PagePool::UseXdpMem() {
  base::MutexLock l(&destroy_mu_);
  const uint32_t users = users_.load(std::memory_order_relaxed);
  if (users == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("pool ", id_, " is destroyed: no xdp_rxq can use it"));
  }
  users_.store(users + 1, std::memory_order_release);  // refcount_inc(&pool->user_cnt)
  return absl::OkStatus();
}

absl::StatusOr<DestroyResult> PagePool::Destroy() {
  base::MutexLock destroying(&destroy_mu_);
  DestroyResult result;
  result.pool_id = id_;
  result.strategy = params_.strategy;
  // page_pool_put: refcount_dec_and_test(&pool->user_cnt).
  const uint32_t users = users_.load(std::memory_order_relaxed);
  if (users == 0) {
    return absl::FailedPreconditionError(absl::StrCat("pool ", id_, " is already destroyed"));
  }
  users_.store(users - 1, std::memory_order_release);
  if (users > 1) {
    result.users_left = users - 1;  // another user still holds the pool: nothing more to do
    return result;
  }
  destroyed_.exchange(true, std::memory_order_acq_rel);
  const uint64_t start = base::MonotonicNanos();

  // Close the ring first: from now on a recycled page is released, never stranded.
  ring_->Close();
  // page_pool_free_frag: the bias the pool did not hand out goes; a frag page whose fragments
  // are all back is released here, one with fragments still held stays in flight.
  FreeFrag();
  // page_pool_scrub: page_pool_empty_alloc_cache_once, the index walk (kXarray), empty the ring.
  EmptyAllocCache();
  uint64_t unmapped = 0;
  if (dma_map_ && params_.strategy == DestroyStrategy::kXarray) {
    unmapped = ScrubTracked(&result);
  } else if (dma_map_ && params_.strategy == DestroyStrategy::kScan) {
    destroy_cnt_.store(1, std::memory_order_seq_cst);
    dma_sync_.store(false, std::memory_order_release);
  }
  EmptyRing();
  const int64_t inflight_now = inflight();
  // RFC v4: page_pool_inflight_unmap only when page_pool_release found pages in flight.
  if (dma_map_ && params_.strategy == DestroyStrategy::kScan && inflight_now > 0) {
    unmapped = UnmapInflightScanned(&result);
  }
  FinishDestroy(inflight_now, unmapped);

  result.inflight_at_destroy = inflight_now;
  result.pages_unmapped = unmapped;
  result.released = inflight_now <= 0;
  result.duration_ns = base::MonotonicNanos() - start;
  return result;
}

void PagePool::FinishDestroy(int64_t inflight_now, uint64_t unmapped) {
  // Read while the destroy is still running: a ReleaseRetry landing here (or inside the clock)
  // sees no detached state yet.
  const uint64_t now = clock_->NowNanos();
  if (inflight_now > 0) {
    // page_pool_detached, then defer_start / defer_warn.
    detach_time_ns_.store(now == 0 ? 1 : now, std::memory_order_relaxed);
    detach_time_.store(BoottimeSeconds(), std::memory_order_relaxed);
    defer_warn_ns_.store(now + kDeferWarnIntervalNs, std::memory_order_relaxed);
  }
  unmapped_at_destroy_.store(unmapped, std::memory_order_relaxed);
  destroy_done_.store(true, std::memory_order_release);
}

void PagePool::WaitForDestroy() const {
  if (!destroyed()) return;
  // destroyed_ is set only under destroy_mu_, which the destroy holds until it returns.
  base::MutexLock l(&destroy_mu_);
}

bool PagePool::detached() const {
  return destroy_done_.load(std::memory_order_acquire) &&
         detach_time_ns_.load(std::memory_order_relaxed) != 0;
}

bool PagePool::ReleaseRetry(uint64_t now_ns) {
  if (!destroyed()) return false;
  // A Destroy still running decides whether the pool detaches or is released.
  if (!destroy_done_.load(std::memory_order_acquire)) return true;
  const int64_t n = inflight();
  if (n <= 0) return false;
  // Periodic warning for pools the user can't see (no netdev), as page_pool_release_retry.
  if (netdev_linked_.load(std::memory_order_relaxed)) return true;
  uint64_t warn_at = defer_warn_ns_.load(std::memory_order_relaxed);
  if (now_ns >= warn_at && defer_warn_ns_.compare_exchange_strong(
                               warn_at, now_ns + kDeferWarnIntervalNs, std::memory_order_relaxed)) {
    const uint64_t detach = detach_time_ns_.load(std::memory_order_relaxed);
    const int64_t sec = now_ns > detach ? int64_t((now_ns - detach) / 1'000'000'000ull) : 0;
    Warn(absl::StrFormat(
        "page_pool_release_retry() stalled pool shutdown: id %u, %d inflight %d sec", id_, n, sec));
  }
  return true;
}

void PagePool::Warn(std::string_view line) const {
  if (params_.warn) {
    params_.warn(line);
  } else {
    std::fprintf(stderr, "%.*s\n", int(line.size()), line.data());
  }
}

// ---------------------------------------------------------------------------------------------------
// Queries

int64_t PagePool::inflight() const {
  // page_pool_inflight: read release_cnt first, then hold_cnt; serial-number distance.
  const uint32_t release = release_cnt_.load(std::memory_order_acquire);
  const uint32_t hold = hold_cnt_.load(std::memory_order_acquire);
  return int32_t(hold - release);
}

void PagePool::ForEachInflight(
    absl::FunctionRef<bool(uint32_t id, PageHandle handle, dma::DmaAddr dma_addr)> fn) const {
  if (index_ == nullptr) return;
  index_->ForEach([&](uint32_t id, PageRecord* page) {
    const uint32_t gen = PageRecord::GenerationOf(page->owner_gen.load(std::memory_order_acquire));
    return fn(id, PageHandle{memory_->FrameOf(page), gen},
              page->dma_addr.load(std::memory_order_relaxed));
  });
}

uint32_t PagePool::ForEachInflightFrom(
    uint32_t first_id, size_t max,
    absl::FunctionRef<bool(uint32_t id, PageHandle handle, dma::DmaAddr dma_addr)> fn) const {
  if (index_ == nullptr) return 0;  // nothing tracked: nothing to walk
  return index_->ForEachFrom(first_id, max, [&](uint32_t id, PageRecord* page) {
    const uint32_t gen = PageRecord::GenerationOf(page->owner_gen.load(std::memory_order_acquire));
    return fn(id, PageHandle{memory_->FrameOf(page), gen},
              page->dma_addr.load(std::memory_order_relaxed));
  });
}

PagePoolStats PagePool::stats() const {
  PagePoolStats s;
  auto ld = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  s.alloc_fast = ld(stats_.alloc_fast);
  s.alloc_slow = ld(stats_.alloc_slow);
  s.alloc_slow_high_order = ld(stats_.alloc_slow_high_order);
  s.alloc_empty = ld(stats_.alloc_empty);
  s.alloc_refill = ld(stats_.alloc_refill);
  s.alloc_waive = ld(stats_.alloc_waive);
  s.recycle_cached = ld(stats_.recycle_cached);
  s.recycle_cache_full = ld(stats_.recycle_cache_full);
  s.recycle_ring = ld(stats_.recycle_ring);
  s.recycle_ring_full = ld(stats_.recycle_ring_full);
  s.recycle_released_refcnt = ld(stats_.recycle_released_refcnt);
  return s;
}

PagePoolInfo PagePool::info() const {
  PagePoolInfo i;
  i.id = id_;
  i.ifindex = params_.ifindex;
  i.napi_id = params_.napi_id;
  i.inflight = inflight();
  i.inflight_mem = i.inflight > 0 ? uint64_t(i.inflight) * page_bytes() : 0;
  i.destroyed = destroyed();
  const bool done = destroy_done_.load(std::memory_order_acquire);
  if (done) {
    i.detach_time_ns = detach_time_ns_.load(std::memory_order_relaxed);
    i.detach_time = detach_time_.load(std::memory_order_relaxed);
  }
  i.released = done && i.inflight <= 0;
  i.dma_mapped = index_ != nullptr ? index_->size() : dma_mapped_.load(std::memory_order_relaxed);
  i.hold_cnt = hold_cnt_.load(std::memory_order_relaxed);
  i.release_cnt = release_cnt_.load(std::memory_order_relaxed);
  i.unmapped_at_destroy = unmapped_at_destroy_.load(std::memory_order_relaxed);
  i.index_exhausted = index_exhausted_.load(std::memory_order_relaxed);
  i.map_failures = map_failures_.load(std::memory_order_relaxed);
  i.dma_synced_bytes = dma_synced_bytes_.load(std::memory_order_relaxed);
  i.alloc_cache_count = CacheCount();
  i.ring_count = ring_->Count();
  i.ring_size = ring_->size();
  i.strategy = params_.strategy;
  if (index_ != nullptr) i.index = index_->stats();
  i.stats = stats();
  i.frag_pages = frag_pages_.load(std::memory_order_relaxed);
  i.frag_refs = uint64_t(std::max<int64_t>(0, frag_refs_.load(std::memory_order_relaxed)));
  i.frag_put_refused = frag_put_refused_.load(std::memory_order_relaxed);
  i.users = users();
  return i;
}

}  // namespace pagepool::pool
