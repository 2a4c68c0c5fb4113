// File: pool/nic.h
//
// Nic: a simulated NIC driver instance, the owner of one dma::Device, the page pools created on it
// and each pool's NAPI context. It is the one registry of its pools: a pool is findable from
// CreatePool until the Nic forgets it (released: destroyed with nothing in flight).
//
// NAPI context: a kernel page_pool allocates and recycles directly (into its lockless alloc cache)
// only from the softirq of the one NAPI instance it belongs to. Here each pool's NAPI context is a
// mutex on its NicPool: callers hold it around PagePool::Allocate/AllocateBulk and direct recycles.
// Every destroy path of the Nic (DestroyPool, Unbind, DestroyLivePools, the destructor) stops the
// context for good under that mutex and destroys the pool inside it, as a driver disables NAPI
// before page_pool_destroy(); a NAPI user that then finds napi_stopped() must not allocate, and
// recycles the ring way.
//
// Unbind() is driver unbind: it destroys every live pool of the device (each with its own
// strategy), then calls dma::Device::Unbind(). With kXarray and kScan pools no DMA-API call follows
// the unbind, whatever the traffic; with kNone pools, late returns unmap on the unbound device and
// the device's checker counts them (seed 002's crash).
//
// Pools: a destroyed pool whose pages are still in flight stays findable (detached) until
// ReleaseRetry() sees its inflight at 0, as the kernel keeps a detached pool until its release
// worker frees it. ReleaseRetry() is the kernel's 1 s release worker for all detached pools: the
// caller ticks it (the server with an Asio timer, tests with a fake clock). A pool is forgotten
// exactly once, by the destroy that found nothing in flight or by the ReleaseRetry that saw its
// last page come back; each says which pools it forgot, so an owner can announce their deletion.
//
// Thread safety: every method may be called from any thread concurrently. Lock order: a NicPool's
// NAPI mutex, then the Nic's registry mutex (never the other way). The pools' own calling rules
// (NAPI context) apply to the pools handed out.
#ifndef PAGEPOOL_POOL_NIC_H_
#define PAGEPOOL_POOL_NIC_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "dma/device.h"
#include "pool/page_pool.h"
#include "pool/phys_memory.h"

namespace pagepool::pool {

struct NicConfig {
  dma::DeviceConfig device;
  uint32_t ifindex = 0;          // copied into every pool's params
  base::Clock* clock = nullptr;  // default for pools created without one; nullptr: Clock::Real()
  WarnSink warn;                 // default for pools created without one; empty: stderr
};

// One pool of a Nic together with its NAPI context.
//
// Thread safety: any thread; napi_stopped() only under napi_mu().
class NicPool {
 public:
  uint64_t id() const { return pool_->id(); }
  PagePool& pool() const { return *pool_; }
  const std::shared_ptr<PagePool>& shared_pool() const { return pool_; }

  // The pool's NAPI context. Context: hold it around Allocate/AllocateBulk and direct recycles.
  base::Mutex& napi_mu() const ABSL_LOCK_RETURNED(napi_mu_) { return napi_mu_; }
  // True once a destroy path of the Nic stopped the context (napi_disable): do not allocate any
  // more; recycle the ring way.
  bool napi_stopped() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(napi_mu_) { return napi_stopped_; }
  // False once the Nic has forgotten the pool: lookups no longer find it.
  bool registered() const { return registered_.load(std::memory_order_acquire); }

 private:
  friend class Nic;
  explicit NicPool(std::shared_ptr<PagePool> pool) : pool_(std::move(pool)) {}

  const std::shared_ptr<PagePool> pool_;
  mutable base::Mutex napi_mu_;
  bool napi_stopped_ ABSL_GUARDED_BY(napi_mu_) = false;
  std::atomic<bool> registered_{true};
};

// What destroying one pool did.
struct PoolDestroyed {
  std::shared_ptr<PagePool> pool;
  DestroyResult result;
  bool forgotten = false;  // nothing was in flight: this destroy made the Nic forget the pool
};

// What destroying several pools did (Unbind, DestroyLivePools).
struct UnbindResult {
  uint32_t pools_destroyed = 0;
  int64_t inflight_at_destroy = 0;       // sum over the destroyed pools
  uint64_t pages_unmapped = 0;           // sum over the destroyed pools
  uint64_t duration_ns = 0;              // the pools' destroy (Unbind: plus Device::Unbind)
  std::vector<PoolDestroyed> destroyed;  // each pool this call destroyed, in id order
};

class Nic {
 public:
  // Creates the device (dma::Device::Create errors pass through).
  static absl::StatusOr<std::unique_ptr<Nic>> Create(std::shared_ptr<PhysMemory> memory,
                                                     const NicConfig& config);
  // Destroys the live pools (as DestroyLivePools) but does not unbind; callers wanting
  // driver-unbind semantics call Unbind() first. Pools still referenced elsewhere keep the device
  // alive.
  ~Nic();
  Nic(const Nic&) = delete;
  Nic& operator=(const Nic&) = delete;

  // page_pool_create on this device. params.ifindex, clock and warn default to the Nic's.
  // FAILED_PRECONDITION once unbound; other errors as PagePool::Create.
  // Context: any thread.
  absl::StatusOr<std::shared_ptr<NicPool>> CreateNicPool(PagePoolParams params);
  // As CreateNicPool, for callers that need only the pool.
  absl::StatusOr<std::shared_ptr<PagePool>> CreatePool(PagePoolParams params);

  // A live or detached (destroyed, pages still in flight) pool; nullptr if unknown or forgotten.
  std::shared_ptr<NicPool> FindNicPool(uint64_t pool_id) const;
  std::shared_ptr<PagePool> FindPool(uint64_t pool_id) const;
  // Live and detached pools, in id order.
  std::vector<std::shared_ptr<NicPool>> NicPools() const;
  std::vector<std::shared_ptr<PagePool>> Pools() const;
  // How many pools Pools() would list.
  size_t pool_count() const;

  // page_pool_destroy of one pool inside its stopped NAPI context. FAILED_PRECONDITION ("pool N
  // is already destroyed") if it was destroyed before. A pool with nothing in flight is forgotten
  // at once.
  // Context: any thread not holding an RCU read lock or the pool's NAPI mutex.
  absl::StatusOr<PoolDestroyed> DestroyPool(NicPool& pool);
  // As above by id; NOT_FOUND for an unknown id.
  absl::StatusOr<DestroyResult> DestroyPool(uint64_t pool_id);

  // Destroys every live pool (as DestroyPool), skipping those destroyed before or meanwhile.
  // duration_ns covers the destroys. Context: as DestroyPool.
  UnbindResult DestroyLivePools();

  // Driver unbind: DestroyLivePools, waits for any destroy still running on another thread, marks
  // every pool's netdev gone (PagePool::UnlinkNetdev), then dma::Device::Unbind(). So with XARRAY
  // or SCAN no unmap of a destroy can follow the unbind. FAILED_PRECONDITION if already unbound.
  // Context: as DestroyPool.
  absl::StatusOr<UnbindResult> Unbind();

  // The release worker: PagePool::ReleaseRetry(now_ns) on every detached pool whose destroy has
  // finished; forgets those with nothing left in flight and appends them to *released (when not
  // null), in id order. Returns how many detached pools still wait.
  // Context: any thread.
  size_t ReleaseRetry(uint64_t now_ns, std::vector<std::shared_ptr<PagePool>>* released = nullptr);

  bool bound() const { return device_->bound(); }
  uint32_t ifindex() const { return config_.ifindex; }
  dma::Device& device() const { return *device_; }
  PhysMemory& memory() const { return *memory_; }

 private:
  // A registered pool and whether one of the Nic's destroy paths is destroying it right now
  // (ReleaseRetry leaves it to that path).
  struct Entry {
    std::shared_ptr<NicPool> pool;
    bool destroying = false;
  };

  Nic(std::shared_ptr<PhysMemory> memory, std::shared_ptr<dma::Device> device,
      const NicConfig& config);
  // Erases the pool from the registry. False if it was not there (forgotten by someone else).
  bool ForgetLocked(uint64_t pool_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<PhysMemory> memory_;
  const std::shared_ptr<dma::Device> device_;
  const NicConfig config_;
  mutable base::Mutex mu_;
  bool unbinding_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, Entry> pools_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagepool::pool

#endif  // PAGEPOOL_POOL_NIC_H_
