// File: pool/nic.h
//
// Nic: a simulated NIC driver instance, the owner of one dma::Device and the page pools created on
// it. Unbind() is driver unbind: it destroys every live pool of the device (each with its own
// strategy), then calls dma::Device::Unbind(). With kXarray and kScan pools no DMA-API call follows
// the unbind, whatever the traffic; with kNone pools, late returns unmap on the unbound device and
// the device's checker counts them (seed 002's crash).
//
// Pools: a destroyed pool whose pages are still in flight stays findable (FindPool, Pools) until
// ReleaseRetry() sees its inflight at 0, as the kernel keeps a detached pool until its release
// worker frees it. ReleaseRetry() is the kernel's 1 s release worker for all detached pools: the
// caller ticks it (the server with an Asio timer, tests with a fake clock).
//
// Thread safety: every method may be called from any thread concurrently. The pools' own calling
// rules (NAPI context) apply to the pools handed out.
#ifndef PAGEPOOL_POOL_NIC_H_
#define PAGEPOOL_POOL_NIC_H_

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
  base::Clock* clock = nullptr;   // default for pools created without one; nullptr: Clock::Real()
  WarnSink warn;                 // default for pools created without one; empty: stderr
};

struct UnbindResult {
  uint32_t pools_destroyed = 0;
  int64_t inflight_at_destroy = 0;  // sum over the destroyed pools
  uint64_t pages_unmapped = 0;      // sum over the destroyed pools
  uint64_t duration_ns = 0;         // pools' destroy plus Device::Unbind
};

class Nic {
 public:
  // Creates the device (dma::Device::Create errors pass through).
  static absl::StatusOr<std::unique_ptr<Nic>> Create(std::shared_ptr<PhysMemory> memory,
                                                     const NicConfig& config);
  // Destroys the live pools (as DestroyPool) but does not unbind; callers wanting driver-unbind
  // semantics call Unbind() first. Pools still referenced elsewhere keep the device alive.
  ~Nic();
  Nic(const Nic&) = delete;
  Nic& operator=(const Nic&) = delete;

  // page_pool_create on this device. params.ifindex, clock and warn default to the Nic's.
  // FAILED_PRECONDITION once unbound; other errors as PagePool::Create.
  // Context: any thread.
  absl::StatusOr<std::shared_ptr<PagePool>> CreatePool(PagePoolParams params);

  // A live or detached (destroyed, pages still in flight) pool; nullptr if unknown or released.
  std::shared_ptr<PagePool> FindPool(uint64_t pool_id) const;
  // Live and detached pools, in id order.
  std::vector<std::shared_ptr<PagePool>> Pools() const;

  // page_pool_destroy of one pool. NOT_FOUND for an unknown id, FAILED_PRECONDITION if already
  // destroyed. A pool with nothing in flight is forgotten at once.
  // Context: any thread not holding an RCU read lock.
  absl::StatusOr<DestroyResult> DestroyPool(uint64_t pool_id);

  // Driver unbind: destroys every live pool, then dma::Device::Unbind(). FAILED_PRECONDITION if
  // already unbound.
  // Context: any thread not holding an RCU read lock.
  absl::StatusOr<UnbindResult> Unbind();

  // The release worker: PagePool::ReleaseRetry(now_ns) on every detached pool; forgets those whose
  // inflight reached 0. Returns how many detached pools still wait.
  // Context: any thread.
  size_t ReleaseRetry(uint64_t now_ns);

  bool bound() const { return device_->bound(); }
  uint32_t ifindex() const { return config_.ifindex; }
  dma::Device& device() const { return *device_; }
  const std::shared_ptr<dma::Device>& device_ptr() const { return device_; }
  PhysMemory& memory() const { return *memory_; }

 private:
  Nic(std::shared_ptr<PhysMemory> memory, std::shared_ptr<dma::Device> device,
      const NicConfig& config);

  const std::shared_ptr<PhysMemory> memory_;
  const std::shared_ptr<dma::Device> device_;
  const NicConfig config_;
  mutable base::Mutex mu_;
  bool unbinding_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, std::shared_ptr<PagePool>> pools_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagepool::pool

#endif  // PAGEPOOL_POOL_NIC_H_
