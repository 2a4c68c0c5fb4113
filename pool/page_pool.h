// File: pool/page_pool.h
//
// PagePool: the kernel's page_pool (net/core/page_pool.c) over simulated physical memory and the
// dma/ Device facade, with the three destroy strategies this project compares.
//
// Faithful to the kernel:
//   * an alloc cache of 128 pages (PP_ALLOC_CACHE_SIZE) refilled 64 at a time
//   (PP_ALLOC_CACHE_REFILL)
//     from a ptr_ring (1024 entries, or min(pool_size, 16384) when pool_size is set);
//   * the slow path allocates a bulk of 64 order-0 pages (one page for order > 0) and, page by page
//     (page_pool_dma_map), DMA-maps it (PP_FLAG_DMA_MAP), tracks it in the in-flight index (XARRAY
//     strategy: one index allocation, one index lock, per page) and syncs max_len for the device;
//   * PP_FLAG_DMA_SYNC_DEV syncs min(dma_sync_size, max_len) bytes at `offset` on recycle
//     (page_pool_put_page; a full-page put syncs max_len), and only on a device that needs syncing
//     (dma::Device::need_sync(), the kernel's dma_dev_need_sync(), from the device's coherence);
//   * page_pool_init's checks: PP_FLAG_DMA_MAP needs dma_dir FROM_DEVICE or BIDIRECTIONAL, and
//     PP_FLAG_DMA_SYNC_DEV needs PP_FLAG_DMA_MAP and a non-zero max_len;
//   * SetNid (page_pool_nid_changed) flushes the alloc cache when the node changes;
//   * direct recycling into the cache only from the pool's NAPI context (allow_direct /
//   napi_local),
//     otherwise into the ring; a full ring, or a page whose refcount is not 1, releases the page
//     (DMA unmap unless someone else already did, then free to PhysMemory);
//   * inflight = hold_cnt - release_cnt in u32 serial-number arithmetic;
//   * stats with the kernel's names (PagePoolStats), each moving when, and only when, the kernel's
//     would.
//
// Destroy strategies (DestroyStrategy, chosen at creation):
//   kXarray (upstream since 2025, page_pool_scrub): empty the alloc cache, stop DMA sync (with an
//     RCU grace period, the kernel's synchronize_net(), only when the device needs syncing and
//     pages are tracked), walk the in-flight index and claim (CompareExchange) and unmap every
//     tracked page, one unmap per page; wait a grace period so no return path is still inside its
//     unmap (this model's guarantee that no DMA-API call follows Destroy); empty the ring. Later
//     returns free pages without any DMA-API call.
//   kScan (seed 002's RFC v4): empty the alloc cache and the ring; only if pages are still in
//     flight, wait a grace period and walk the frames of PhysMemory under the pool's destroy lock,
//     claiming (dma_addr exchange) the pages this pool owns and stopping as soon as every in-flight
//     page is found (inflight == unmapped); the claimed pages are unmapped after the lock is
//     dropped. Returns that find a destroy running serialise with the walk on that lock, which
//     they take outside their RCU read section.
//   kNone (before the fix): nothing is unmapped at destroy; ReleaseRetry() (every 1 s) warns every
//     60 s "stalled pool shutdown: id N, M inflight S sec" for a pool not linked to a netdev
//     (ifindex 0); a late return DMA-unmaps on a device that may be unbound, which the Device
//     refuses and counts as a violation.
// Every strategy unmaps through the same call (one Device::UnmapPage per page), so the mapping
// checker costs each the same. Exactly-once teardown: the party that unmaps a page claims it first
// (index CompareExchange for kXarray, dma_addr exchange for kScan), so a page is never unmapped
// twice and, with kXarray/kScan, no DMA-API call happens after Destroy() returns.
//
// Users (user_cnt): the creator holds one; each xdp_rxq registration (UseXdpMem, the kernel's
// page_pool_use_xdp_mem) adds one. Destroy is page_pool_destroy: it drops one user, and only the
// call that drops the last one destroys (the others return at once, users_left > 0, the pool still
// live). A driver that destroys its pool before xdp_rxq_info_unreg (mlx5e_free_rq's order) leaves
// the pool to be destroyed by that unregistration.
//
// Detach (page_pool_detached): a Destroy that leaves pages in flight sets detach_time (boot-time
// seconds, the netlink field), detach_time_ns and the warning clock (the pool's clock), and only
// then publishes the pool as detached; ReleaseRetry() and info() never see a half-destroyed pool
// (while a Destroy runs, ReleaseRetry() only answers "still waiting"). A Destroy that leaves
// nothing in flight releases the pool at once and sets no detach time.
//
// RCU and locks: no path of the pool waits for a lock inside an RCU read section whose holder may
// wait for a grace period. Under a read lock the pool takes only leaf locks (the in-flight index's
// writer lock, the ptr_ring's, PhysMemory's allocator lock, the dma/ layer's own), none of which
// is ever held across rcu::Synchronize; the destroy lock is never taken under a read lock.
//
// Deliberate difference from the kernel: after Destroy() the ptr_ring is closed, so a page recycled
// to a destroyed pool is released at once (no stat moves for it; the kernel parks it in the ring
// until the release worker's next pass). The pool object lives as long as any shared_ptr to it (the
// owner, typically Nic, keeps it until inflight reaches 0).
//
// Fragments (page_pool_alloc_frag; PP_FLAG_PAGE_FRAG is always allowed, as in current kernels):
// AllocFrag carves ALIGN(size, kFragAlign) bytes out of the pool's current frag page (frag_page,
// frag_offset, frag_users). A fresh frag page gets pp_ref_count = kPpFragBias
// (page_pool_fragment_netmem with BIAS_MAX); each fragment handed out is one of those references,
// and every put of a fragment drops one (page_pool_unref_netmem). When the next fragment does not
// fit, page_pool_drain_frag drops the bias the pool did not hand out (kPpFragBias - frag_users);
// Destroy (page_pool_free_frag) and ~PagePool do the same for the last frag page. Whoever drops the
// last reference recycles or releases the page, exactly once; RefFrag adds a reference
// (page_pool_ref_netmem, as an skb sharing the fragment would). A frag page is handed out under
// owner id | kFragOwnerBit, so whole-page calls (Recycle, Return, GetPage of a PageHandle) refuse
// it; it stays in flight (inflight, the in-flight index) until its last reference is dropped.
// PutFrag is Recycle for a fragment, ReturnFrag is Return.
// Deliberate differences: pp_ref_count is 16 bits here, so the bias is 0x7fff (not LONG_MAX >> 1)
// and a page carries at most kPpFragBias - 1 fragments; the count never goes below zero: a put
// beyond the page's references is refused (FAILED_PRECONDITION) and counted (frag_put_refused).
// The count is per page, not per fragment (as in the kernel): a fragment put twice while other
// fragments of its page are still held takes one of theirs, and the put that then finds no
// reference left is the one refused. A put beyond the references that races the page's reuse as a
// new frag page may take a reference of that next life (the handle check and the count are two
// words); a put that takes such a page's count to zero loses the owner CAS and is refused.
//
// Pages given to users carry a PageHandle (frame, generation). The generation is bumped on every
// hand-out and every give-back; a give-back claims the handle with one CAS on (owner pool,
// generation), so a double return, a stale handle or a handle of another pool is refused with
// FAILED_PRECONDITION exactly once, even when callers race.
//
// Thread safety ("Context:" on each method):
//   * Allocate*, AllocPage, direct recycling (napi_local / allow_direct = true) and SetNid: the
//   pool's
//     NAPI context only, one thread at a time. The caller provides that exclusion (the server holds
//     a per-pool NAPI mutex around these calls).
//   * Recycle/PutFullPage with napi_local = false, Return, ReleasePage, GetPage, info(), stats(),
//     ForEachInflight: any thread.
//   * AllocFrag: the pool's NAPI context only; PutFrag with napi_local = false, ReturnFrag,
//     RefFrag, PpRefCount: any thread.
//   * Destroy, WaitForDestroy: any thread not holding an RCU read lock; Destroy may race with
//     returns and ring recycles on other threads.
//     REQUIRES: the NAPI context no longer allocates or recycles directly (the driver stops NAPI
//     before page_pool_destroy()).
#ifndef PAGEPOOL_POOL_PAGE_POOL_H_
#define PAGEPOOL_POOL_PAGE_POOL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/clock.h"
#include "base/mutex.h"
#include "dma/device.h"
#include "dma/iommu_domain.h"
#include "dma/types.h"
#include "pool/inflight_index.h"
#include "pool/phys_memory.h"

namespace pagepool::pool {

namespace internal {
class PtrRing;
}  // namespace internal

enum class DestroyStrategy : uint8_t { kXarray = 0, kScan = 1, kNone = 2 };
std::string_view DestroyStrategyName(DestroyStrategy strategy);  // "xarray", "scan", "none"

// PP_FLAG_*.
inline constexpr uint32_t kPpFlagDmaMap = 1u << 0;  // PP_FLAG_DMA_MAP
inline constexpr uint32_t kPpFlagDmaSyncDev = 1u
                                              << 1;  // PP_FLAG_DMA_SYNC_DEV (needs kPpFlagDmaMap)

inline constexpr unsigned kPpAllocCacheSize = 128;   // PP_ALLOC_CACHE_SIZE
inline constexpr unsigned kPpAllocCacheRefill = 64;  // PP_ALLOC_CACHE_REFILL
inline constexpr uint32_t kPpDefaultRingSize = 1024;
inline constexpr uint32_t kPpMaxRingSize = 16384;
inline constexpr uint64_t kDeferTimeNs = 1'000'000'000ull;  // DEFER_TIME = HZ
inline constexpr uint64_t kDeferWarnIntervalNs =
    60'000'000'000ull;  // DEFER_WARN_INTERVAL = 60 * HZ
// dma_sync_size of page_pool_put_full_page (-1): the sync covers max_len.
inline constexpr uint32_t kDmaSyncFullPage = 0xffffffffu;
// Fragments: sizes are rounded up to dma_get_cache_alignment() (64 on x86_64).
inline constexpr uint32_t kFragAlign = 64;
// BIAS_MAX for a 16-bit pp_ref_count: half the range, the other half for extra references.
inline constexpr uint16_t kPpFragBias = 0x7fff;
// Owner-id bit of a page split into fragments (PageRecord::owner_gen).
inline constexpr uint32_t kFragOwnerBit = 1u << 31;

// Receives warnings such as "stalled pool shutdown: ...". Empty: write the line to stderr.
using WarnSink = std::function<void(std::string_view line)>;

// struct page_pool_params, plus this model's choices.
struct PagePoolParams {
  uint32_t flags = kPpFlagDmaMap;
  unsigned order = 0;      // 0 .. PhysMemory::kMaxOrder
  uint32_t pool_size = 0;  // ptr_ring size; 0: 1024; capped at 16384
  int nid = 0;             // NUMA node; -1 (NUMA_NO_NODE) means 0
  uint32_t max_len = 0;    // bytes synced for the device; required with DMA_SYNC_DEV
  uint32_t offset = 0;     // where the device writes in the page
  // FROM_DEVICE or BIDIRECTIONAL with PP_FLAG_DMA_MAP (page_pool_init refuses TO_DEVICE).
  dma::DmaDirection dma_dir = dma::DmaDirection::kFromDevice;
  // dma_dev_need_sync() is the device's (dma::Device::need_sync(), from its DmaCoherence): on a
  // device that needs no syncing (coherent, no bounce buffering) no sync for the device is ever
  // made, and Destroy waits no grace period to stop syncs; on a non-coherent or swiotlb one both
  // happen. false here treats the device as not needing syncs whatever it is (the pool syncs only
  // when both say so); true, the default, leaves it to the device.
  bool dma_need_sync = true;
  uint32_t napi_id = 0;
  uint32_t ifindex = 0;  // 0: not linked to a netdev (the stall warning is printed)
  DestroyStrategy strategy = DestroyStrategy::kXarray;
  uint32_t dma_index_limit = InflightIndex::kDefaultLimit;  // highest in-flight index id (kXarray)
  base::Clock* clock = nullptr;  // nullptr: base::Clock::Real(); detach_time, ReleaseRetry
  WarnSink warn;                 // empty: stderr
};

// A page as a user holds it: frame and generation at hand-out.
struct PageHandle {
  FrameNumber frame = 0;
  uint32_t generation = 0;
  friend bool operator==(const PageHandle&, const PageHandle&) = default;
};

// A page handed out by Allocate.
struct PoolPage {
  PageHandle handle;
  dma::DmaAddr dma_addr = 0;  // 0 when the pool does not DMA-map
  dma::PhysAddr phys = 0;
};

// A fragment as a user holds it: its page's handle (the generation the frag page was handed out
// at, shared by every fragment of that page) and where in the page it lies.
struct FragHandle {
  PageHandle page;
  uint32_t offset = 0;  // frag_offset: bytes from the start of the page
  uint32_t size = 0;    // the aligned size carved out
  friend bool operator==(const FragHandle&, const FragHandle&) = default;
};

// A fragment handed out by AllocFrag.
struct PoolFrag {
  FragHandle handle;
  dma::DmaAddr dma_addr = 0;  // the page's dma_addr + offset; 0 when the pool does not DMA-map
  dma::PhysAddr phys = 0;     // the page's physical address + offset
};

// One page's pp_ref_count as PpRefCount sees it (a snapshot; other threads may be putting).
struct PpRefInfo {
  bool frag_page = false;     // the page is split into fragments and in flight from this pool
  bool current = false;       // it is the pool's frag_page (the bias is still on it)
  uint32_t pp_ref_count = 0;  // the raw count (bias included for the current frag page)
  int64_t user_refs = 0;      // references held outside the pool (fragments + extra references)
};

// struct page_pool_alloc_stats + struct page_pool_recycle_stats.
struct PagePoolStats {
  uint64_t alloc_fast = 0;
  uint64_t alloc_slow = 0;
  uint64_t alloc_slow_high_order = 0;
  uint64_t alloc_empty = 0;
  uint64_t alloc_refill = 0;
  uint64_t alloc_waive = 0;
  uint64_t recycle_cached = 0;
  uint64_t recycle_cache_full = 0;
  uint64_t recycle_ring = 0;
  uint64_t recycle_ring_full = 0;
  uint64_t recycle_released_refcnt = 0;
};

// The netlink page-pool fields and this model's extras.
struct PagePoolInfo {
  uint64_t id = 0;
  uint32_t ifindex = 0;
  uint32_t napi_id = 0;
  int64_t inflight = 0;       // (s32)(hold_cnt - release_cnt)
  uint64_t inflight_mem = 0;  // inflight * (PAGE_SIZE << order), 0 if inflight <= 0
  // Set once a Destroy has finished with pages in flight (page_pool_detached); 0 otherwise.
  uint64_t detach_time_ns = 0;  // the pool's clock at the detach
  int64_t detach_time = 0;      // boot-time seconds at the detach (the netlink field)
  bool destroyed = false;       // Destroy has started
  bool released = false;        // Destroy has finished and inflight is 0 (the kernel frees it)
  // Pages of this pool currently DMA-mapped by it. With the in-flight index (kXarray + DMA_MAP)
  // this is the index's entry count: a page leaves it at its claim, just before its unmap.
  uint64_t dma_mapped = 0;
  uint32_t hold_cnt = 0;     // pages_state_hold_cnt
  uint32_t release_cnt = 0;  // pages_state_release_cnt
  uint64_t unmapped_at_destroy = 0;
  uint64_t index_exhausted = 0;    // slow-path pages dropped because the in-flight index was full
  uint64_t map_failures = 0;       // slow-path pages dropped because dma_map failed
  uint64_t dma_synced_bytes = 0;   // sum of the sizes of every sync for the device
  uint64_t alloc_cache_count = 0;  // pages in the alloc cache now
  uint64_t ring_count = 0;         // pages in the ptr_ring now
  uint32_t ring_size = 0;
  DestroyStrategy strategy = DestroyStrategy::kXarray;
  InflightIndexStats index;  // all zero unless kXarray with DMA mapping
  PagePoolStats stats;
  // Fragments.
  uint64_t frag_pages = 0;        // pages split into fragments and still in flight
  uint64_t frag_refs = 0;         // fragment references held by users (RefFrag's included)
  uint64_t frag_put_refused = 0;  // puts of a fragment refused: no reference left on its page
  // user_cnt: the creator's reference plus one per xdp_rxq registration (UseXdpMem) not yet
  // dropped; the Destroy that drops the last one destroys the pool. 0 once destroyed.
  uint32_t users = 0;
};

// Where Recycle put a page.
enum class RecycleResult : uint8_t {
  kCached = 0,    // into the alloc cache (direct recycling)
  kRing = 1,      // into the ptr_ring
  kReleased = 2,  // released: ring full, refcount not 1, or destroyed pool
};

// What a put of a fragment did.
struct FragPutResult {
  uint32_t refs_left = 0;  // pp_ref_count after the put (0: this put dropped the last reference)
  // Where the page went when refs_left is 0 (Recycle of a fragment); for Return, kReleased.
  RecycleResult result = RecycleResult::kReleased;
  // ReturnFrag that dropped the last reference: this call DMA-unmapped the page (as Return's
  // answer; false when the destroy path had unmapped it, or the pool does not DMA-map).
  bool unmapped = false;
};

struct DestroyResult {
  uint64_t pool_id = 0;
  // page_pool_put found other users of the pool (an xdp_rxq registration, or the driver's own
  // reference): this call only dropped its user, nothing was destroyed, every other field but
  // pool_id and strategy is zero. 0: this call dropped the last user and destroyed the pool.
  uint32_t users_left = 0;
  int64_t inflight_at_destroy = 0;  // user-held pages when the destroy finished its scrub
  uint64_t pages_unmapped = 0;      // in-flight pages the destroy path unmapped (0 for kNone)
  uint64_t duration_ns = 0;         // wall time of Destroy() (steady clock)
  uint64_t frames_scanned = 0;  // kScan only: frames walked before every in-flight page was found
  uint32_t grace_periods = 0;   // RCU grace periods the destroy waited for
  bool released = false;        // inflight was 0: the pool is released at once
  DestroyStrategy strategy = DestroyStrategy::kXarray;
};

class PagePool {
 public:
  // page_pool_create. INVALID_ARGUMENT for an order above PhysMemory::kMaxOrder, DMA_SYNC_DEV
  // without DMA_MAP or without max_len, DMA_MAP with a dma_dir other than FROM_DEVICE or
  // BIDIRECTIONAL, offset + max_len beyond the page, or kPpFlagDmaMap without a device;
  // FAILED_PRECONDITION if the device is unbound. `device` may be null when flags lack DMA_MAP.
  static absl::StatusOr<std::shared_ptr<PagePool>> Create(std::shared_ptr<PhysMemory> memory,
                                                          std::shared_ptr<dma::Device> device,
                                                          const PagePoolParams& params);
  // Releases whatever the pool still holds in its cache and ring (as Destroy would). Pages still
  // held by users keep their owner id and can no longer be given back.
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // ---- Handle API (the server's) ----

  // page_pool_alloc_pages, handing the page to a user (generation bumped). RESOURCE_EXHAUSTED when
  // memory, IOVA space or the in-flight index ID space is exhausted (the message says which);
  // FAILED_PRECONDITION after Destroy.
  // Context: NAPI context of the pool only.
  absl::StatusOr<PoolPage> Allocate();

  // `count` pages appended to *out, all or nothing: on error no page is handed out (those already
  // taken go back to the alloc cache or are released) and *out is unchanged.
  // Context: NAPI context of the pool only.
  absl::Status AllocateBulk(size_t count, std::vector<PoolPage>* out);

  // page_pool_put_full_page of a user's page: claims the handle, then recycles directly into the
  // alloc cache when napi_local, else into the ptr_ring; a full ring or page_ref != 1 releases it.
  // FAILED_PRECONDITION (with a message) for a stale handle, a double give-back, or a page of
  // another pool; INVALID_ARGUMENT for a frame beyond memory.
  // Context: napi_local: NAPI context of the pool only; otherwise any thread.
  absl::StatusOr<RecycleResult> Recycle(PageHandle handle, bool napi_local);
  // page_pool_put_page of a user's page: as Recycle, but a sync for the device covers
  // min(dma_sync_size, max_len) bytes (the part the device may have written).
  // Context: as Recycle.
  absl::StatusOr<RecycleResult> Recycle(PageHandle handle, bool napi_local, uint32_t dma_sync_size);

  // page_pool_return_page of a user's page: claims the handle, unmaps the page unless it was
  // already unmapped (by the destroy path, or never mapped), frees it. Returns true when this call
  // DMA-unmapped the page (or tried to: with kNone on an unbound device the call is refused and
  // counted as a violation, and true is still returned). Errors as Recycle.
  // Context: any thread.
  absl::StatusOr<bool> Return(PageHandle handle);

  // get_page on a user's page (as an skb clone would): the next Recycle of it releases it
  // (recycle_released_refcnt) and leaves the frame allocated until PhysMemory::PutPage drops this
  // extra reference. The handle stays valid. Errors as Recycle.
  // Context: any thread.
  absl::Status GetPage(PageHandle handle);

  // ---- Fragments (handle API) ----

  // page_pool_dev_alloc_frag: `size` bytes rounded up to kFragAlign, carved from the current frag
  // page at its frag_offset, or from a new page (page_pool_drain_frag on the old one first) when
  // they do not fit. INVALID_ARGUMENT for size 0 or above the page size (the kernel's WARN +
  // NULL); otherwise errors as Allocate.
  // Context: NAPI context of the pool only.
  absl::StatusOr<PoolFrag> AllocFrag(uint32_t size);

  // Recycle of a fragment: page_pool_put_page (page_pool_put_netmem: unref, and only the last
  // reference recycles, as Recycle does). FAILED_PRECONDITION for a handle whose page is not this
  // pool's frag page at that generation, or a put beyond the page's references (counted in
  // frag_put_refused); INVALID_ARGUMENT for a frame beyond memory or an offset/size outside the
  // page. The fragment calls have names of their own, not overloads of Recycle/Return: a braced
  // {frame, generation} would be ambiguous between a PageHandle and a FragHandle.
  // Context: napi_local: NAPI context of the pool only; otherwise any thread.
  absl::StatusOr<FragPutResult> PutFrag(const FragHandle& frag, bool napi_local,
                                        uint32_t dma_sync_size = kDmaSyncFullPage);
  // Return of a fragment: drops one reference; the last one releases the page (unmap unless
  // already unmapped, free) instead of recycling it. Errors as PutFrag.
  // Context: any thread.
  absl::StatusOr<FragPutResult> ReturnFrag(const FragHandle& frag);
  // page_pool_ref_netmem: one more reference on the fragment's page, dropped by one more
  // PutFrag/Return of the same handle. RESOURCE_EXHAUSTED when pp_ref_count would overflow; other
  // errors as PutFrag.
  // Context: any thread.
  absl::Status RefFrag(const FragHandle& frag);
  // The pp_ref_count of `frame` (for listing in-flight pages). A page not split into fragments
  // by this pool answers frag_page = false and its raw count.
  // Context: any thread.
  PpRefInfo PpRefCount(FrameNumber frame) const;

  // ---- Kernel-level API (benchmarks and in-process users; no handle bookkeeping) ----

  // page_pool_alloc_pages: nullptr when nothing can be allocated (or after Destroy).
  // Context: NAPI context of the pool only.
  PageRecord* AllocPage();
  // page_pool_put_full_page(pool, page, allow_direct).
  // REQUIRES: the caller owns `page` (a page of this pool, from AllocPage).
  // Context: allow_direct: NAPI context of the pool only; otherwise any thread.
  RecycleResult PutFullPage(PageRecord* page, bool allow_direct) {
    return PutPage(page, kDmaSyncFullPage, allow_direct);
  }
  // page_pool_put_page(pool, page, dma_sync_size, allow_direct): syncs min(dma_sync_size, max_len).
  // REQUIRES and Context: as PutFullPage.
  RecycleResult PutPage(PageRecord* page, uint32_t dma_sync_size, bool allow_direct);
  // page_pool_return_page: unmap (if this call wins the claim) and free. Returns true if it
  // unmapped. REQUIRES: as PutFullPage. Context: any thread.
  bool ReleasePage(PageRecord* page);

  // ---- Users and destroy ----

  // page_pool_use_xdp_mem (xdp_rxq_info_reg_mem_model with MEM_TYPE_PAGE_POOL): one more user of
  // the pool (user_cnt), which a later Destroy (xdp_rxq_info_unreg -> xdp_unreg_mem_model ->
  // page_pool_destroy) drops again. FAILED_PRECONDITION once the pool is destroyed (its last user
  // gone). Context: any thread not holding an RCU read lock (waits for a Destroy in progress).
  absl::Status UseXdpMem();
  // user_cnt: 1 (the creator's) plus one per UseXdpMem not yet dropped; 0 once destroyed.
  uint32_t users() const { return users_.load(std::memory_order_acquire); }

  // page_pool_destroy: drops one user (page_pool_put). While other users remain it returns at
  // once with result.users_left > 0 and changes nothing else: the pool stays live. The call that
  // drops the last user destroys the pool with its strategy. FAILED_PRECONDITION if already
  // destroyed (a second Destroy racing the last one waits for it, then fails).
  // Context: any thread not holding an RCU read lock; may block for RCU grace periods.
  // REQUIRES: for the last user, the NAPI context no longer allocates or recycles directly.
  absl::StatusOr<DestroyResult> Destroy();

  // Returns once no Destroy of this pool is running: at once if none has started, else when the
  // one that started has returned (its unmaps done). For an owner that must not let anything
  // follow a destroy in progress, e.g. a driver unbind that finds a pool destroyed() by another
  // thread.
  // Context: any thread not holding an RCU read lock; may block for the whole of a Destroy.
  void WaitForDestroy() const;

  // page_pool_unreg_netdev: the netdev the pool was linked to (params.ifindex) is gone, so from now
  // on the pool counts as not linked to one (the stall warning of ReleaseRetry is printed).
  // Context: any thread.
  void UnlinkNetdev() { netdev_linked_.store(false, std::memory_order_relaxed); }

  // page_pool_release_retry, driven by the caller every kDeferTimeNs (an Asio timer in the server):
  // after Destroy, rechecks inflight and, for a pool not linked to a netdev (ifindex 0), at most
  // every kDeferWarnIntervalNs since the detach writes "stalled pool shutdown: id N, M inflight
  // S sec" to the warn sink. Returns true while the pool still waits for pages (detached and
  // inflight > 0) or while a Destroy is still running (which decides); false when there is
  // nothing to wait for (live, or destroyed and inflight <= 0).
  // `now_ns` is read from the pool's clock (params.clock, or base::Clock::Real()).
  // Context: any thread.
  bool ReleaseRetry(uint64_t now_ns);

  // page_pool_nid_changed: when `nid` differs from the pool's node, page_pool_update_nid: the new
  // node is recorded and the alloc cache is flushed (its pages released), so the next allocation
  // refills from the ring, where pages of another node are waived.
  // Context: NAPI context of the pool only.
  void SetNid(int nid);

  // The pool's tracked pages (kXarray with DMA mapping): an RCU walk of the in-flight index in id
  // order; fn(index id, handle of the page as it is now, dma_addr). Returning false stops the walk.
  // Other strategies track nothing and call fn never.
  // Context: any thread; fn runs under the RCU read lock and must not block.
  void ForEachInflight(
      absl::FunctionRef<bool(uint32_t id, PageHandle handle, dma::DmaAddr dma_addr)> fn) const;
  // ForEachInflight a bounded piece at a time (InflightIndex::ForEachFrom): the tracked pages with
  // index id >= first_id, at most `max` (0: no limit), in one RCU read section. Returns the index
  // id to resume at, or 0 when the walk is done; a pool without an index returns 0 at once.
  // Context: as ForEachInflight.
  uint32_t ForEachInflightFrom(
      uint32_t first_id, size_t max,
      absl::FunctionRef<bool(uint32_t id, PageHandle handle, dma::DmaAddr dma_addr)> fn) const;

  // ---- Queries ----
  uint64_t id() const { return id_; }
  const PagePoolParams& params() const { return params_; }
  DestroyStrategy strategy() const { return params_.strategy; }
  uint64_t page_bytes() const { return dma::kPageSize << params_.order; }
  bool destroyed() const { return destroyed_.load(std::memory_order_acquire); }
  // Destroy has finished and left pages in flight (page_pool_detached ran); stays true after the
  // last page comes back.
  bool detached() const;
  int64_t inflight() const;  // page_pool_inflight()
  PagePoolStats stats() const;
  PagePoolInfo info() const;
  const InflightIndex* index() const { return index_.get(); }  // null unless tracking

 private:
  PagePool(std::shared_ptr<PhysMemory> memory, std::shared_ptr<dma::Device> device,
           const PagePoolParams& params, uint32_t id);

  PageRecord* RefillAllocCache();
  PageRecord* AllocSlow();
  PageRecord* AllocPageOrder();
  // page_pool_dma_map of one page: map, track (kXarray: one index allocation), sync. Does not
  // count the page in dma_mapped_ (callers add their pages at once).
  bool DmaMap(PageRecord* page);
  bool DmaMapOnly(PageRecord* page);  // dma_map_page and record the address
  // The one unmap call of every path (return, destroy walk, scan, untrackable page).
  // REQUIRES: the caller has claimed the mapping.
  void UnmapClaimed(dma::DmaAddr dma);
  // UnmapClaimed for each of `claimed` in order, one unmap per page, the checker's entry of the
  // page a few places ahead prefetched first (Device::PrefetchUnmap), so the destroy walks
  // overlap the cache misses of their unmaps. REQUIRES: the caller has claimed every mapping.
  void UnmapClaimedPages(absl::Span<const dma::DmaAddr> claimed);
  // The in-flight index is full: unmap the page and count it (upstream fails the page).
  void UnmapUntrackable(PageRecord* page);
  void SetPpInfo(PageRecord* page);
  void DmaSyncForDevice(PageRecord* page, uint32_t dma_sync_size);
  [[gnu::noinline]] RecycleResult RecycleInRingOrRelease(PageRecord* page);
  bool ReleasePageDma(PageRecord* page);
  bool ReturnPageLocked(PageRecord* page);
  absl::StatusOr<PageRecord*> ClaimHandle(PageHandle handle, const char* what);
  void HandOut(PageRecord* page, PoolPage* out);
  void EmptyAllocCache();
  void EmptyRing();
  // kXarray's part of page_pool_scrub: stop syncs, claim and unmap every tracked page.
  uint64_t ScrubTracked(DestroyResult* result);
  uint64_t UnmapAllTracked();
  // kScan (RFC v4 page_pool_inflight_unmap): claims under destroy_lock_, unmaps after.
  uint64_t UnmapInflightScanned(DestroyResult* result);
  // Sets the detach fields when pages are in flight, then publishes the destroy as finished.
  void FinishDestroy(int64_t inflight_now, uint64_t unmapped);
  void Warn(std::string_view line) const;
  // Fragments.
  // The handle names a page of this pool split into fragments at that generation; a refusal is
  // counted in frag_put_refused.
  absl::StatusOr<PageRecord*> CheckFrag(const FragHandle& frag, const char* what);
  // page_pool_unref_netmem that refuses to go below zero: the count left, or -1 when the page
  // has fewer than `nr` references.
  static int32_t UnrefNetmem(PageRecord* page, uint32_t nr);
  // A page becomes the frag page: pp_ref_count = kPpFragBias, owner id | kFragOwnerBit, next
  // generation. REQUIRES: the pool owns the page. Context: NAPI context of the pool only.
  void HandOutFrag(PageRecord* page);
  // The last reference of the frag page at `generation` is dropped: claims it back for the pool
  // (next generation, pp_ref_count 1). False when the page is no longer at that generation.
  bool FragPageDone(PageRecord* page, uint32_t generation);
  bool DropFragBias(PageRecord* page);
  PageRecord* DrainFrag(PageRecord* page);  // page_pool_drain_frag
  void FreeFrag();                          // page_pool_free_frag
  absl::StatusOr<FragPutResult> UnrefFrag(const FragHandle& frag, bool release, bool napi_local,
                                          uint32_t dma_sync_size);

  const uint32_t id_;
  const PagePoolParams params_;
  const std::shared_ptr<PhysMemory> memory_;
  const std::shared_ptr<dma::Device> device_;
  base::Clock* const clock_;
  const bool dma_map_;
  const uint32_t dma_sync_max_len_;
  std::unique_ptr<InflightIndex> index_;  // kXarray with DMA_MAP only

  // NAPI-context state (the kernel's pool->alloc).
  // `count` is written by the NAPI context only; an atomic (relaxed, plain moves on x86) so info()
  // may read it from any thread.
  struct AllocCache {
    std::atomic<uint32_t> count{0};
    PageRecord* cache[kPpAllocCacheSize];
  } alloc_;
  PageRecord* CachePop() {
    const uint32_t n = alloc_.count.load(std::memory_order_relaxed) - 1;
    alloc_.count.store(n, std::memory_order_relaxed);
    return alloc_.cache[n];
  }
  void CachePush(PageRecord* page) {
    const uint32_t n = alloc_.count.load(std::memory_order_relaxed);
    alloc_.cache[n] = page;
    alloc_.count.store(n + 1, std::memory_order_relaxed);
  }
  uint32_t CacheCount() const { return alloc_.count.load(std::memory_order_relaxed); }
  uint32_t pref_nid_ = 0;
  std::atomic<uint32_t> hold_cnt_{0};     // pages_state_hold_cnt (NAPI writes, anyone reads)
  std::atomic<uint32_t> release_cnt_{0};  // pages_state_release_cnt

  std::unique_ptr<internal::PtrRing> ring_;

  // PP_FLAG_DMA_SYNC_DEV on a device that needs syncing; cleared by Destroy before unmapping.
  std::atomic<bool> dma_sync_;
  std::atomic<bool> destroyed_{false};      // a Destroy has started
  std::atomic<bool> destroy_done_{false};   // it has finished (detach fields set before)
  std::atomic<bool> netdev_linked_{false};  // params.ifindex != 0 until UnlinkNetdev
  // Held for the whole of Destroy (WaitForDestroy waits on it). Taken before every other lock of
  // the pool, never under an RCU read lock.
  mutable base::Mutex destroy_mu_;
  // user_cnt: written under destroy_mu_ only (Destroy, UseXdpMem); read by anyone.
  std::atomic<uint32_t> users_{1};
  std::atomic<uint32_t> destroy_cnt_{0};  // kScan: returns take destroy_lock_ while non-zero
  // kScan: serialises returns with the destroy's frame walk. Never taken under an RCU read lock.
  base::Mutex destroy_lock_;

  std::atomic<uint64_t> dma_mapped_{0};  // untracked pages only (the index counts tracked ones)
  std::atomic<uint64_t> unmapped_at_destroy_{0};
  std::atomic<uint64_t> index_exhausted_{0};
  std::atomic<uint64_t> map_failures_{0};
  std::atomic<uint64_t> dma_synced_bytes_{0};
  std::atomic<uint64_t> detach_time_ns_{0};
  std::atomic<int64_t> detach_time_{0};
  std::atomic<uint64_t> defer_warn_ns_{0};
  std::atomic<int> last_alloc_error_{0};  // why the last slow path came back empty

  // The kernel's frag_page, frag_offset, frag_users: written by the NAPI context (and Destroy);
  // atomics (relaxed) so PpRefCount may read them from any thread.
  std::atomic<PageRecord*> frag_page_{nullptr};
  std::atomic<uint32_t> frag_offset_{0};
  std::atomic<uint32_t> frag_users_{0};
  std::atomic<uint64_t> frag_pages_{0};  // frag pages in flight
  // User references on them; signed: puts beyond a page's references may take it below zero
  // until the drain absorbs them (info() reports max(0, n)).
  std::atomic<int64_t> frag_refs_{0};
  std::atomic<uint64_t> frag_put_refused_{0};

  // Stats: single-writer counters are bumped with load+store, shared ones with fetch_add.
  struct Stats {
    std::atomic<uint64_t> alloc_fast{0}, alloc_slow{0}, alloc_slow_high_order{0}, alloc_empty{0},
        alloc_refill{0}, alloc_waive{0}, recycle_cached{0}, recycle_cache_full{0};
    std::atomic<uint64_t> recycle_ring{0}, recycle_ring_full{0}, recycle_released_refcnt{0};
  } stats_;
};

}  // namespace pagepool::pool

#endif  // PAGEPOOL_POOL_PAGE_POOL_H_
