// File: server/runtime.h
//
// The daemon's backend: the simulated devices (one pool::Nic each) with ids and limits, the event
// hub behind WatchEvents, the release-retry and flush-queue ticks, and the shutdown teardown. The
// gRPC service classes (server/service.h) are adapters over this class; tests drive it directly.
//
// Pools have one registry, pool/'s: each device's Nic lists its live and detached pools and owns
// each pool's NAPI context (pool/nic.h). The runtime keeps devices only and finds a pool by asking
// the Nics; it announces a pool's POOL_DELETE when, and only when, a Nic says it forgot the pool.
//
// Requests and answers are the wire messages of pagepool.v1 (this is the server layer); every error
// is an absl::Status whose code is the one DESIGN.md prescribes and whose message names what was
// wrong:
//   NOT_FOUND            unknown device or pool id;
//   INVALID_ARGUMENT     count 0, empty page list, enum out of range, unsupported order / width;
//   FAILED_PRECONDITION  page not in flight in that pool, destroyed pool, unbound device;
//   RESOURCE_EXHAUSTED   simulated memory, IOVA, ID space, or a limit of RuntimeOptions;
//   UNAVAILABLE          after Shutdown.
//
// NAPI context: Allocate and napi_local Recycle run holding the pool's NAPI mutex, so however many
// gRPC threads and clients work on one pool, at most one is "in NAPI" at a time, exactly as the
// pool's fast path requires. Recycle without napi_local and Return run outside it, from any thread,
// like put_page from another CPU (the ptr_ring has its own lock in pool/). DestroyPool,
// UnbindDevice and Shutdown destroy through the Nic, which stops the NAPI context first.
//
// Thread safety: every public method may be called from any thread concurrently. The device map,
// the event publication and the tick's memory are guarded by `mu_`; lock order: a pool's NAPI
// mutex (a queue restart announces its new pool holding the old pool's), then mu_, then a Nic's
// registry mutex; nothing takes a NAPI mutex under mu_. Events are published under mu_, so
// Subscribe's replay sees no event half-done.
#ifndef PAGEPOOL_SERVER_RUNTIME_H_
#define PAGEPOOL_SERVER_RUNTIME_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "google/protobuf/repeated_field.h"
#include "pagepool/v1/pagepool.pb.h"
#include "pool/nic.h"
#include "pool/phys_memory.h"
#include "server/event_hub.h"
#include "server/frag_ledger.h"
#include "server/wire_convert.h"

namespace pagepool::server {

struct RuntimeOptions {
  uint64_t memory_bytes = uint64_t{4} << 30;  // simulated physical memory
  uint32_t max_devices = 64;            // devices that exist (unbound ones count until deleted)
  uint32_t max_pools = 1024;            // pools not yet deleted (live or detached)
  uint32_t max_pages_per_call = 65536;  // pages in one Allocate/Recycle/Return/Traffic batch
};

// What the shutdown teardown did (printed in the daemon's summary).
struct ShutdownReport {
  uint64_t devices = 0;              // devices that existed
  uint64_t pools_created = 0;        // pools ever created
  uint64_t pools = 0;                // pools destroyed by the teardown
  uint64_t inflight_at_destroy = 0;  // pages still in flight in those pools
  uint64_t pages_unmapped = 0;       // pages the destroy paths unmapped
  uint64_t violations = 0;           // mapping-checker violations over all devices, ever
};

// One page of a pool's in-flight index (ListInflight), with its pp_ref_count
// (PagePool::PpRefCount).
struct InflightRecord {
  uint32_t index_id = 0;
  uint32_t generation = 0;
  uint64_t frame = 0;
  uint64_t dma_addr = 0;
  uint16_t pp_ref_count = 0;  // 16 bits in this model (pool/page_pool.h)
  uint16_t frag_refs = 0;     // references clients hold on a page split into fragments
  bool fragmented = false;    // the page is split into fragments
};

namespace internal {

// A device: what CreateDevice settled, and its Nic (the registry of its pools).
struct DeviceEntry {
  DeviceSpec spec;
  std::unique_ptr<pool::Nic> nic;
  // Set under Runtime::mu_ when UnbindDevice starts: no pool may be created from then on.
  bool unbinding = false;
  // Set under Runtime::mu_ once UnbindDevice has announced the unbind (DeleteDevice waits for it).
  bool unbind_done = false;
};

// A pool found by id, with its device and the fragments clients hold of it.
struct PoolRef {
  std::shared_ptr<DeviceEntry> device;
  std::shared_ptr<pool::NicPool> pool;
  std::shared_ptr<FragLedger> frags;
};

}  // namespace internal

class Runtime {
 public:
  // Records at most one ListInflight call hands back.
  static constexpr size_t kInflightChunk = 4096;

  // Where a ListInflight walk is: its pool (found by the first chunk and held until the walk
  // ends) and the index id the next chunk starts at. Context: one walk at a time.
  class InflightCursor {
   public:
    // A walk of the pages with index id >= start_index_id (0 or 1: every page).
    explicit InflightCursor(uint32_t start_index_id = 0)
        : next_index_id_(start_index_id == 0 ? 1 : start_index_id) {}
    bool done() const { return done_; }
    // Where the next chunk starts (meaningless once done()).
    uint32_t next_index_id() const { return next_index_id_; }

   private:
    friend class Runtime;
    internal::PoolRef pool_;
    uint32_t next_index_id_ = 1;
    bool done_ = false;
  };

  // What one Traffic stream remembers between its batches: the pool its last batch used, so that
  // a batch on the same pool, still registered, needs no lookup; and the pages the stream holds
  // (allocated through it, less the pages given back through it, never below 0), so that it may
  // hold at most `max_held` (0: no limit). Context: one stream at a time.
  class TrafficCache {
   public:
    explicit TrafficCache(uint64_t max_held = 0) : max_held_(max_held) {}
    uint64_t held() const { return held_; }
    // `pages` the stream allocated went back by another way (an answer too big to send).
    void Forget(uint64_t pages) { held_ -= std::min(held_, pages); }

   private:
    friend class Runtime;
    internal::PoolRef pool_;
    uint64_t max_held_ = 0;
    uint64_t held_ = 0;
  };

  // INVALID_ARGUMENT if memory_bytes is below one page; RESOURCE_EXHAUSTED if it cannot be had.
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(const RuntimeOptions& options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Devices. Context: any thread.
  absl::Status CreateDevice(const pagepool::v1::CreateDeviceRequest& req,
                            pagepool::v1::Device* out);
  absl::Status GetDevice(uint64_t device_id, pagepool::v1::Device* out);
  void ListDevices(pagepool::v1::ListDevicesResponse* out);
  // Destroys the device's pools (with in-flight unmap per their strategy), then unbinds it.
  // FAILED_PRECONDITION if already unbound.
  absl::Status UnbindDevice(uint64_t device_id, pagepool::v1::UnbindDeviceResponse* out);
  // Removes an unbound device none of whose pools is listed any more, and frees it (its domain, its
  // checker, everything it kept); `out` gets its last figures. FAILED_PRECONDITION while it is
  // bound or being unbound, or while a pool of it is still listed; NOT_FOUND for an unknown id.
  // Its violations stay in the daemon's totals.
  absl::Status DeleteDevice(uint64_t device_id, pagepool::v1::Device* out);
  absl::Status GetDomain(uint64_t device_id, pagepool::v1::DomainInfo* out);
  // Present leaves in [start, end) (end 0: whole space), at most `limit` (0: no limit).
  absl::Status DumpPageTable(uint64_t device_id, uint64_t start, uint64_t end, uint64_t limit,
                             std::vector<pagepool::v1::PageTableEntry>* out);
  // Every valid walk-cache entry of the device (none unless it models its IOTLB, or in
  // passthrough). Lockless, concurrent with maps, unmaps and device walks.
  absl::Status DumpWalkCache(uint64_t device_id, std::vector<pagepool::v1::WalkCacheEntry>* out);

  // Pools. Context: any thread.
  // With req.replaces_pool_id, a queue restart (pool::Nic::RestartQueue): the new pool is created
  // and announced (POOL_ADD) before the old queue stops; `replaced` (may be null) gets what the
  // restart did to the old pool, whose POOL_DETACH or POOL_DELETE follows if it was destroyed.
  absl::Status CreatePool(const pagepool::v1::CreatePoolRequest& req, pagepool::v1::Pool* out,
                          pagepool::v1::DestroyPoolResponse* replaced = nullptr);
  absl::Status GetPool(uint64_t pool_id, pagepool::v1::Pool* out);
  // Pools of one device (0: of all devices), in id order. NOT_FOUND for an unknown device id
  // (an unbound device is known: its detached pools are listed).
  absl::Status ListPools(uint64_t device_id, pagepool::v1::ListPoolsResponse* out);
  // The driver's page_pool_destroy of the pool, or with `xdp_rxq_unreg` the xdp_rxq_info_unreg of
  // one xdp_rxq registered on it; either drops one user and the last drop destroys the pool
  // (out->destroyed(); POOL_DETACH or POOL_DELETE then).
  absl::Status DestroyPool(uint64_t pool_id, pagepool::v1::DestroyPoolResponse* out,
                           bool xdp_rxq_unreg = false);
  // One chunk of a ListInflight walk: replaces *out with the next tracked pages of the pool's
  // in-flight index at or above cursor->next_index_id(), in increasing index-id order, at most
  // `max` of them and never more than kInflightChunk (max 0: kInflightChunk), as compact records
  // (32 bytes a page; a pool may track a million pages, so a walk is read a chunk at a time), and
  // advances the cursor (done() once nothing is left). Each record carries the page's
  // pp_ref_count and, for a page split into fragments, the references clients hold on it. The
  // first call finds the pool (NOT_FOUND
  // for an unknown id, with *out empty) and the cursor keeps it for the rest of the walk, so a
  // pool destroyed meanwhile is still walked (its index emptied by the destroy). Each chunk is one
  // RCU read section of the index (xa_for_each_start): pages allocated or given back between or
  // during chunks may or may not appear; a page in flight for the whole walk appears exactly once.
  // Pools without an index (STRATEGY_SCAN, STRATEGY_NONE, no DMA mapping) list nothing.
  // Context: any thread; one cursor is used by one thread at a time.
  absl::Status ListInflight(uint64_t pool_id, InflightCursor* cursor, size_t max,
                            std::vector<InflightRecord>* out);

  // Pages. Allocate runs in the pool's NAPI context; on any error no page is handed out.
  // frag_size 0: whole pages; otherwise `count` fragments of frag_size bytes (AllocFrag), each
  // recorded in the pool's fragment ledger; INVALID_ARGUMENT for a frag_size above the pool's page
  // size. Context: any thread.
  absl::Status Allocate(uint64_t pool_id, uint32_t count, uint32_t frag_size,
                        google::protobuf::RepeatedPtrField<pagepool::v1::Page>* out);
  absl::Status Allocate(uint64_t pool_id, uint32_t count,
                        google::protobuf::RepeatedPtrField<pagepool::v1::Page>* out) {
    return Allocate(pool_id, count, 0, out);
  }
  // Recycle and Return are all-or-nothing: every page is checked first (a frame within memory, an
  // odd generation, in flight from this pool at exactly that generation, not named twice in the
  // call); if one is bad, nothing is done and the status (INVALID_ARGUMENT for a frame beyond
  // memory or a page named twice, FAILED_PRECONDITION otherwise) names the first bad page's index
  // ("page #i") and says that no page was recycled/returned. The one exception is a race: a page
  // that another call gives back between the check and the give-back is refused then; the others
  // are still given back and the status says how many were (`out` counts them too).
  // Fragments (`frags`) are checked with the pages: a frame within memory, an offset and size
  // inside the page, the page split into fragments by this pool at that generation, and then,
  // atomically, held in the pool's fragment ledger at that offset and size no fewer times than the
  // call names it (FAILED_PRECONDITION "fragment #i: ..." otherwise: a double return, a wrong
  // offset); only then is anything given back. Each fragment drops one reference of its page; the
  // one that drops the last recycles (returns) the page.
  absl::Status Recycle(uint64_t pool_id,
                       const google::protobuf::RepeatedPtrField<pagepool::v1::PageHandle>& pages,
                       const google::protobuf::RepeatedPtrField<pagepool::v1::FragHandle>& frags,
                       bool napi_local, pagepool::v1::RecycleResponse* out);
  absl::Status Return(uint64_t pool_id,
                      const google::protobuf::RepeatedPtrField<pagepool::v1::PageHandle>& pages,
                      const google::protobuf::RepeatedPtrField<pagepool::v1::FragHandle>& frags,
                      pagepool::v1::ReturnResponse* out);
  absl::Status Recycle(uint64_t pool_id,
                       const google::protobuf::RepeatedPtrField<pagepool::v1::PageHandle>& pages,
                       bool napi_local, pagepool::v1::RecycleResponse* out) {
    return Recycle(pool_id, pages, {}, napi_local, out);
  }
  absl::Status Return(uint64_t pool_id,
                      const google::protobuf::RepeatedPtrField<pagepool::v1::PageHandle>& pages,
                      pagepool::v1::ReturnResponse* out) {
    return Return(pool_id, pages, {}, out);
  }
  // page_pool_ref_netmem on each fragment's page (an skb clone's reference), all or nothing: every
  // fragment is checked as Recycle checks it and must be held in the pool's fragment ledger (as
  // often as the call names it: FAILED_PRECONDITION "fragment #i: ..." otherwise); then each gets
  // one more reference, in the pool and in the ledger. RESOURCE_EXHAUSTED, with none added, when a
  // page's pp_ref_count would overflow.
  absl::Status RefFrag(uint64_t pool_id,
                       const google::protobuf::RepeatedPtrField<pagepool::v1::FragHandle>& frags,
                       pagepool::v1::RefFragResponse* out);
  // One Traffic batch: recycle, return, allocate; errors are reported in `out`, never thrown.
  // Pages are handled one by one: a bad page is refused (counted in `errors`), the others are done;
  // so are fragments (recycle_frags, return_frags; frag_size allocates fragments), each checked
  // against the pool's fragment ledger as in Recycle.
  // `cache` (may be null) is the stream's; with it a batch looks its pool up only when the pool
  // differs from the previous batch's or was forgotten, and an allocation that would leave the
  // stream holding more than its max_held pages is refused with RESOURCE_EXHAUSTED. Returns the
  // number of page operations done.
  uint64_t Traffic(const pagepool::v1::TrafficRequest& req, pagepool::v1::TrafficResponse* out,
                   TrafficCache* cache = nullptr);

  // Events (WatchEvents). Subscribes `sink`; with include_existing, first hands it an ADD event for
  // every device and pool, atomically with the subscription. False once the hub is closed.
  bool Subscribe(EventSink* sink, bool include_existing);
  void Unsubscribe(EventSink* sink);

  // The 1 s release-retry tick: every Nic's ReleaseRetry (STRATEGY_NONE pools warn every 60 s while
  // stalled); POOL_DELETE for each pool a Nic forgot, POOL_CHANGE for each detached pool whose
  // inflight changed since the tick last reported it. Context: the daemon's timer (any thread).
  void ReleaseRetryTick();

  // The lazy-mode flush-queue timer (the kernel's fq_timer, 10 ms): every IOMMU_MODE_LAZY domain
  // invalidates its IOTLB and releases the IOVAs and page tables its queued unmaps hold, so an idle
  // device does not keep them pending until its queue fills. The daemon's domains have no timer
  // thread of their own (DeviceConfig::fq_timer off): this tick is the only one. Context: the
  // daemon's timer.
  void FlushQueueTick();

  // The 1 s cache trim: every domain gives back the cached zeroed tables that no map needed in the
  // last second (dma::IommuDomain::TrimIdleCaches). Context: the daemon's timer (any thread).
  void TrimCachesTick();

  // Ends every WatchEvents subscription (they finish with OK) and refuses new ones.
  // Context: any thread.
  void CloseEvents();
  // Daemon shutdown: destroys every live pool with in-flight unmap and refuses further calls with
  // UNAVAILABLE. Context: any thread, once no RPC is running.
  ShutdownReport Shutdown();

  // Prometheus text of memory, device, pool and domain figures (server/runtime_metrics.cc).
  void AppendMetrics(std::string* out);

 private:
  using DeviceList = std::vector<std::shared_ptr<internal::DeviceEntry>>;

  explicit Runtime(const RuntimeOptions& options, std::shared_ptr<pool::PhysMemory> memory);

  // Lookups; UNAVAILABLE after Shutdown, NOT_FOUND naming the id.
  absl::StatusOr<std::shared_ptr<internal::DeviceEntry>> FindDevice(uint64_t id);
  absl::StatusOr<internal::PoolRef> FindPool(uint64_t id);
  // Recycle's and Return's opening: pages or fragments given, within the page limit, the pool
  // found, and every page and fragment one that may be given back (CheckGiveBack, which takes the
  // fragments' references). `call` names the RPC in errors, `done` what it does ("recycled").
  absl::StatusOr<internal::PoolRef> FindPoolToGiveBack(
      uint64_t pool_id, const google::protobuf::RepeatedPtrField<v1::PageHandle>& pages,
      const google::protobuf::RepeatedPtrField<v1::FragHandle>& frags, const char* call,
      const char* done);
  // The pool of `pool_id` on any device; nullptr pool if none has it.
  internal::PoolRef FindPoolLocked(uint64_t pool_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every device's live and detached pools (device_id 0: all devices), in pool id order.
  std::vector<internal::PoolRef> PoolsLocked(uint64_t device_id = 0) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  DeviceList DevicesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls fn on every device's domain (passthrough devices have none), outside mu_; nothing after
  // Shutdown. For the ticks.
  void ForEachDomain(absl::FunctionRef<void(dma::IommuDomain&)> fn);
  DeviceList Devices() const;
  size_t PoolCountLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // RESOURCE_EXHAUSTED "<call>: <before><n><after> is above the limit ..." when n is above
  // max_pages_per_call.
  absl::Status CheckPageLimit(uint64_t n, std::string_view call, std::string_view before,
                              std::string_view after) const;
  // RESOURCE_EXHAUSTED when `count` more pages would leave the stream of `cache` above its
  // max_held.
  static absl::Status CheckHeld(const TrafficCache& cache, uint32_t count);
  // CreatePool with replaces_pool_id, on device `d` (found), with the request's params.
  absl::Status RestartQueue(const pagepool::v1::CreatePoolRequest& req, internal::DeviceEntry& d,
                            const pool::PagePoolParams& params, pagepool::v1::Pool* out,
                            pagepool::v1::DestroyPoolResponse* replaced);
  // A model_iotlb device's DMA write of a received packet into [addr, addr + len).
  static void DeviceReceives(const internal::PoolRef& ref, dma::DmaAddr addr, uint64_t len);
  // Allocate on a pool already found (Allocate, Traffic); fragments when frag_size is not 0.
  absl::Status AllocateFrom(const internal::PoolRef& ref, uint32_t count, uint32_t frag_size,
                            google::protobuf::RepeatedPtrField<pagepool::v1::Page>* out);
  // The pool as GetPool answers it, its ledger's refusals counted in frag_put_refused.
  void FillPoolLocked(const internal::DeviceEntry& device, const pool::PagePool& pool,
                      pagepool::v1::Pool* out) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The fragment ledger of a pool not yet forgotten (null if none).
  std::shared_ptr<FragLedger> LedgerLocked(uint64_t pool_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Publishes a pool or device event. Context: mu_ held (see the class comment).
  void PublishPool(pagepool::v1::EventType type, const internal::DeviceEntry& device,
                   const pool::PagePool& pool) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishDevice(pagepool::v1::EventType type, const pagepool::v1::Device& device)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // POOL_DELETE or POOL_DETACH for each pool a destroy path destroyed, as it left the pool (a drop
  // that left other users on the pool announces nothing).
  void PublishDestroyed(const internal::DeviceEntry& device,
                        const std::vector<pool::PoolDestroyed>& destroyed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RuntimeOptions options_;
  const std::shared_ptr<pool::PhysMemory> memory_;
  std::atomic<uint64_t> pools_created_{0};
  // Written under mu_; read without it on the Traffic fast path.
  std::atomic<bool> shut_down_{false};
  EventHub events_;

  mutable base::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<internal::DeviceEntry>> devices_ ABSL_GUARDED_BY(mu_);
  uint64_t next_device_id_ ABSL_GUARDED_BY(mu_) = 1;
  // What deleted devices leave behind in the daemon's totals.
  uint64_t devices_deleted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t deleted_violations_ ABSL_GUARDED_BY(mu_) = 0;
  // Queue restarts whose new pool is not created yet: each counts against max_pools.
  uint32_t pools_reserved_ ABSL_GUARDED_BY(mu_) = 0;
  // The release-retry tick's memory: the inflight it last reported (POOL_CHANGE) per detached pool,
  // rebuilt by every tick from what the Nics list.
  std::map<uint64_t, int64_t> reported_inflight_ ABSL_GUARDED_BY(mu_);
  // Each pool's fragment ledger, from CreatePool until its Nic forgets the pool.
  std::map<uint64_t, std::shared_ptr<FragLedger>> ledgers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_RUNTIME_H_
