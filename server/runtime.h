// File: server/runtime.h
//
// The daemon's backend: the registry of simulated devices (dma::Device) and their page pools
// (pool/), with ids, limits, the event hub behind WatchEvents, and the shutdown teardown. The gRPC
// service classes (server/service.h) are thin adapters over this class; tests may drive it directly.
//
// Requests and answers are the wire messages of pagepool.v1 (this is the server layer); every error
// is an absl::Status whose code is the one DESIGN.md prescribes and whose message names what was
// wrong:
//   NOT_FOUND            unknown device or pool id;
//   INVALID_ARGUMENT     count 0, empty page list, enum out of range, unsupported order / width;
//   FAILED_PRECONDITION  page not in flight in that pool, destroyed pool, unbound device;
//   RESOURCE_EXHAUSTED   simulated memory, IOVA, ID space, or a limit of RuntimeOptions.
//
// NAPI context: a kernel page_pool allocates and recycles directly (into its lockless alloc cache)
// only from the softirq of the one NAPI instance it belongs to. Here each pool's NAPI context is a
// per-pool mutex (`napi_mu`): Allocate and napi_local Recycle run while holding it, so however many
// gRPC threads and clients work on one pool, at most one is "in NAPI" at a time, exactly as the
// pool's fast path requires. Recycle without napi_local and Return run outside it, from any thread,
// like put_page from another CPU (the ptr_ring has its own lock in pool/).
//
// Thread safety: every public method may be called from any thread concurrently. The registry is
// guarded by `mu_` (readers share it); each pool entry has its own NAPI mutex; pool/ and dma/ objects
// are thread-safe as their headers say.
#ifndef PAGEPOOL_SERVER_RUNTIME_H_
#define PAGEPOOL_SERVER_RUNTIME_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "google/protobuf/repeated_field.h"
#include "pagepool/v1/pagepool.pb.h"
#include "server/event_hub.h"

namespace pagepool::server {

struct RuntimeOptions {
  uint64_t memory_bytes = uint64_t{4} << 30;  // simulated physical memory
  uint32_t max_devices = 64;                  // devices ever created (unbound ones count)
  uint32_t max_pools = 1024;                  // pools not yet deleted
  uint32_t max_pages_per_call = 65536;        // pages in one Allocate/Recycle/Return/Traffic batch
};

// What the shutdown teardown did (printed in the daemon's summary).
struct ShutdownReport {
  uint64_t devices = 0;             // devices that existed
  uint64_t pools_created = 0;       // pools ever created
  uint64_t pools = 0;               // pools destroyed by the teardown
  uint64_t inflight_at_destroy = 0; // pages still in flight in those pools
  uint64_t pages_unmapped = 0;      // pages the destroy paths unmapped
  uint64_t violations = 0;          // mapping-checker violations over all devices, ever
};

// One page of a pool's in-flight index (ListInflight).
struct InflightRecord {
  uint32_t index_id = 0;
  uint32_t generation = 0;
  uint64_t frame = 0;
  uint64_t dma_addr = 0;
};

namespace internal {
struct DeviceEntry;
struct PoolEntry;
}  // namespace internal

class Runtime {
 public:
  // INVALID_ARGUMENT if memory_bytes is below one page; RESOURCE_EXHAUSTED if it cannot be had.
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(const RuntimeOptions& options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Devices. Context: any thread.
  absl::Status CreateDevice(const pagepool::v1::CreateDeviceRequest& req, pagepool::v1::Device* out);
  absl::Status GetDevice(uint64_t device_id, pagepool::v1::Device* out);
  void ListDevices(pagepool::v1::ListDevicesResponse* out);
  // Destroys the device's pools (with in-flight unmap per their strategy), then unbinds it.
  // FAILED_PRECONDITION if already unbound.
  absl::Status UnbindDevice(uint64_t device_id, pagepool::v1::UnbindDeviceResponse* out);
  absl::Status GetDomain(uint64_t device_id, pagepool::v1::DomainInfo* out);
  // Present leaves in [start, end) (end 0: whole space), at most `limit` (0: no limit).
  absl::Status DumpPageTable(uint64_t device_id, uint64_t start, uint64_t end, uint64_t limit,
                             std::vector<pagepool::v1::PageTableEntry>* out);

  // Pools. Context: any thread.
  absl::Status CreatePool(const pagepool::v1::CreatePoolRequest& req, pagepool::v1::Pool* out);
  absl::Status GetPool(uint64_t pool_id, pagepool::v1::Pool* out);
  void ListPools(uint64_t device_id, pagepool::v1::ListPoolsResponse* out);
  absl::Status DestroyPool(uint64_t pool_id, pagepool::v1::DestroyPoolResponse* out);
  // Tracked pages of the pool's in-flight index, at most `limit` (0: no limit), as compact records
  // (a pool may track a million pages: 24 bytes each here, about 70 as protobuf messages).
  absl::Status ListInflight(uint64_t pool_id, uint64_t limit, std::vector<InflightRecord>* out);

  // Pages. Allocate runs in the pool's NAPI context; on any error no page is handed out.
  // Context: any thread.
  absl::Status Allocate(uint64_t pool_id, uint32_t count,
                        google::protobuf::RepeatedPtrField<pagepool::v1::Page>* out);
  // Every valid page is processed; if some were refused, the first refusal's status is returned
  // (its message says how many were refused) and `out` counts the processed ones.
  absl::Status Recycle(uint64_t pool_id,
                       const google::protobuf::RepeatedPtrField<pagepool::v1::PageHandle>& pages,
                       bool napi_local, pagepool::v1::RecycleResponse* out);
  absl::Status Return(uint64_t pool_id,
                      const google::protobuf::RepeatedPtrField<pagepool::v1::PageHandle>& pages,
                      pagepool::v1::ReturnResponse* out);
  // One Traffic batch: recycle, return, allocate; errors are reported in `out`, never thrown.
  // Returns the number of page operations done.
  uint64_t Traffic(const pagepool::v1::TrafficRequest& req, pagepool::v1::TrafficResponse* out);

  // Events (WatchEvents). Subscribes `sink`; with include_existing, first hands it an ADD event for
  // every device and pool, atomically with the subscription. False once the hub is closed.
  bool Subscribe(EventSink* sink, bool include_existing);
  void Unsubscribe(EventSink* sink);

  // The 1 s release-retry tick: STRATEGY_NONE pools retry releasing their pages; pools destroyed
  // whose in-flight count reached 0 are deleted (POOL_DELETE). Warns every 60 s per stalled pool.
  // Context: the daemon's timer (any thread).
  void ReleaseRetryTick();

  // The lazy-mode flush-queue timer (the kernel's fq_timer, 10 ms): every IOMMU_MODE_LAZY domain
  // invalidates its IOTLB and releases the IOVAs and page tables its queued unmaps hold, so an idle
  // device does not keep them pending until its queue fills. Context: the daemon's timer.
  void FlushQueueTick();

  // Ends every WatchEvents subscription (they finish with OK) and refuses new ones.
  // Context: any thread.
  void CloseEvents();
  // Daemon shutdown: destroys every live pool with in-flight unmap and refuses further calls with
  // UNAVAILABLE. Context: any thread, once no RPC is running.
  ShutdownReport Shutdown();

  // Prometheus text of pool, domain and memory figures (pagepool_pool_*, pagepool_domain_*, ...).
  void AppendMetrics(std::string* out);

  const RuntimeOptions& options() const { return options_; }

 private:
  explicit Runtime(const RuntimeOptions& options);
  // Lookups; NOT_FOUND naming the id.
  absl::StatusOr<std::shared_ptr<internal::DeviceEntry>> FindDevice(uint64_t id);
  absl::StatusOr<std::shared_ptr<internal::PoolEntry>> FindPool(uint64_t id);

  const RuntimeOptions options_;
  EventHub events_;
  struct Backend;
  std::unique_ptr<Backend> backend_;  // simulated memory (pool/)

  mutable base::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<internal::DeviceEntry>> devices_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::shared_ptr<internal::PoolEntry>> pools_ ABSL_GUARDED_BY(mu_);
  uint64_t next_device_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_pool_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_RUNTIME_H_
