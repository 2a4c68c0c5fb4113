// File: dma/device.h
//
// The DMA-API facade: a simulated device bound to an IOMMU domain (or in passthrough), with the
// calls a driver makes (dma_map_page, dma_unmap_page, dma_sync_single_for_device/cpu) and driver
// unbind.
//
// After Unbind() every DMA-API call is refused with FAILED_PRECONDITION and counted by the mapping
// checker as call_after_unbind: this is how the model shows seed 002's "IOMMU crash" (a page_pool
// that unmaps pages after the driver has gone). Unbind() also counts each mapping still live as
// live_at_unbind, then tears those mappings down so the domain is left empty.
//
// Thread safety: every method may be called from any thread concurrently. Callers never map or
// unmap the same DMA address concurrently (the DMA API's rule); the checker still counts it if they
// do.
//
// Unbind vs concurrent calls: every DMA-API call first reads `bound` (one acquire load: an unbound
// device refuses without touching anything shared), then registers itself in a per-thread-slot
// in-flight counter (a cache-line-aligned atomic, like a per-CPU percpu_ref) and reads `bound`
// again. Unbind clears `bound` and then waits for every in-flight counter to drain before it tears
// the mappings down. Both sides use sequentially consistent operations (store then load: the Dekker
// pattern), so either the call sees the device unbound and refuses, or Unbind sees the call in
// flight and waits for it; a MapPage that passed the check has recorded its mapping in the checker
// before Unbind's teardown walks it. Calls never wait on Unbind and never take a shared lock for
// this.
//
// Sync calls are checked and counted; they do not walk the page table (a Translate would set the
// leaf's accessed/dirty bits and disturb dirty tracking). On a device that needs no syncing
// (DeviceConfig::coherence kCoherent: need_sync() false, the kernel's dma_dev_need_sync()) they
// return at once, unchecked and uncounted, as the kernel's inline dma_sync_single_for_* do (this
// model's checker does not force syncs the way CONFIG_DMA_API_DEBUG does).
#ifndef PAGEPOOL_DMA_DEVICE_H_
#define PAGEPOOL_DMA_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "dma/iotlb_gather.h"
#include "dma/types.h"

namespace pagepool::dma {

class IommuDomain;

struct DeviceConfig {
  std::string name;
  IommuMode mode = IommuMode::kStrict;
  bool free_empty_tables = true;  // seed 000's policy, per domain
  unsigned address_width = 48;    // 39, 48 or 57 bits: 3, 4 or 5 page-table levels
  // The DMA mask in bits (dma_set_mask): no IOVA handed out (in passthrough, no bus address) is at
  // or above 2^dma_mask_bits. 0: address_width; otherwise kMinDmaMaskBits .. address_width.
  unsigned dma_mask_bits = 0;
  // The device's DMA coherence: decides need_sync() (dma_dev_need_sync). kCoherent devices skip
  // every sync; kNonCoherent and kSwiotlb ones sync.
  DmaCoherence coherence = DmaCoherence::kNonCoherent;
  // Model the device's IOTLB and walk caches (DomainConfig::model_iotlb).
  bool model_iotlb = false;
  // Lazy mode: the domain's own flush timer thread (DomainConfig::fq_timer). A program that calls
  // IommuDomain::FlushExpired itself every fq_timeout for all its domains (pagepoold's one 10 ms
  // tick) turns it off, so that it runs one timer rather than one thread per device.
  bool fq_timer = true;
};

class Device {
 public:
  // The smallest DMA mask a device may have: one page of IOVA above IOVA 0, which is never handed
  // out. A size-aligned range of 2^N pages needs kMinDmaMaskBits + N bits.
  static constexpr unsigned kMinDmaMaskBits = kPageShift + 1;

  // Creates a device with a domain of its own. INVALID_ARGUMENT for an unsupported address width
  // or a DMA mask outside kMinDmaMaskBits .. address_width.
  static absl::StatusOr<std::unique_ptr<Device>> Create(const DeviceConfig& config);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  // dma_map_page: allocates an IOVA of `size` (rounded up to 4 KiB, size-aligned) below the DMA
  // mask and maps it to `phys`. Passthrough returns `phys`. RESOURCE_EXHAUSTED when the IOVA space
  // under the mask runs out (the message names it and the mask), FAILED_PRECONDITION after Unbind
  // (counted), INVALID_ARGUMENT for size 0 or unaligned phys, an unknown direction, a range that
  // wraps, or (passthrough) a range beyond the DMA mask.
  // On any failure nothing stays allocated or mapped.
  // Context: any thread.
  absl::StatusOr<DmaAddr> MapPage(PhysAddr phys, uint64_t size, DmaDirection dir);

  // dma_unmap_page: the checker validates address, size and direction (counting any mismatch, and
  // refusing the call with FAILED_PRECONDITION or INVALID_ARGUMENT), then unmaps and, per the
  // domain's mode, invalidates the IOTLB now (strict) or queues the invalidation (lazy). Context:
  // any thread.
  absl::Status UnmapPage(DmaAddr addr, uint64_t size, DmaDirection dir);

  // A hint before UnmapPage(addr, ...): starts loading what that unmap's checks will read (the
  // checker's entry of the address), so a walk that unmaps many pages one call each can overlap
  // their cache misses. Changes nothing; each page still pays its own UnmapPage. Does nothing on
  // an unbound device. Context: any thread.
  void PrefetchUnmap(DmaAddr addr);

  // UnmapPage for every address of `addrs` (all of one size and direction), with the same checks,
  // counting and effect per address as that many UnmapPage calls: each refused address is counted
  // by the checker as UnmapPage would count it (call_after_unbind once per address on an unbound
  // device) and left as it was; each accepted one is unmapped and, per the domain's mode,
  // invalidated now (strict, before its IOVA can be reused) or queued (lazy). Cheaper per page: one
  // in-flight registration per batch and the checker takes each shard lock once per chunk
  // (MappingChecker::OnUnmapBatch). Returns OK when every address was unmapped, else the first
  // refusal's status.
  // Context: any thread.
  // Strict mode goes through one IotlbGather: the invalidation commands for the whole batch are
  // issued once at the end (one per disjoint range), before any IOVA of the batch is released.
  absl::Status UnmapPages(absl::Span<const DmaAddr> addrs, uint64_t size, DmaDirection dir);

  // UnmapPages without the sync: accepted addresses are unmapped into `gather` (strict mode; lazy
  // mode queues them as UnmapPages does and leaves the gather alone), so that a caller unmapping in
  // several batches (a pool's destroy walk) invalidates once. Their IOVAs are released by
  // IotlbSync. Checks and counting as UnmapPages.
  // Context: any thread; the caller owns `gather` and must call IotlbSync(gather) before Unbind.
  absl::Status UnmapPagesGather(absl::Span<const DmaAddr> addrs, uint64_t size, DmaDirection dir,
                                IotlbGather* gather);
  // Invalidates and releases what UnmapPagesGather gathered (IommuDomain::IotlbSync). Not a DMA-API
  // call: never refused, never counted. Passthrough: nothing to do.
  // Context: any thread owning `gather`.
  void IotlbSync(IotlbGather* gather);

  // dma_sync_single_for_device / _for_cpu over [addr + offset, addr + offset + size) of a live
  // mapping. Counted and refused after Unbind or for an unknown address; INVALID_ARGUMENT (not
  // counted) for a direction outside the enum. On a device that needs no syncing (need_sync()
  // false) OK at once: nothing is checked or counted (the kernel's dma_dev_need_sync() test).
  // Context: any thread.
  absl::Status SyncForDevice(DmaAddr addr, uint64_t offset, uint64_t size, DmaDirection dir);
  absl::Status SyncForCpu(DmaAddr addr, uint64_t offset, uint64_t size, DmaDirection dir);

  // The device's own DMA write into [addr, addr + size) (a packet received into a buffer the
  // driver posted): one translation per 4 KiB page through the domain, as the device's IOMMU does
  // it (IommuDomain::Translate with write: the IOTLB and walk caches when modelled, the leaf's
  // accessed and dirty bits set). Not a DMA-API call, so never counted by the checker. In
  // passthrough nothing is translated. NOT_FOUND for a page without a mapping, PERMISSION_DENIED
  // for one the device may only read (DMA faults, counted by the domain), FAILED_PRECONDITION on an
  // unbound device (a device without its driver does no DMA), INVALID_ARGUMENT for size 0 or a
  // range that wraps.
  // Context: any thread; Unbind waits for it as for a DMA-API call.
  absl::Status DmaWrite(DmaAddr addr, uint64_t size);

  // Driver unbind. Counts every mapping still live (live_at_unbind), unmaps them, flushes the IOTLB
  // and marks the device unbound. A second Unbind is FAILED_PRECONDITION (and counted).
  // Context: any thread; callers should have destroyed their pools first.
  absl::Status Unbind();

  bool bound() const;
  const std::string& name() const;
  IommuMode mode() const;
  DmaCoherence coherence() const;
  // dma_dev_need_sync(): false for a kCoherent device, true for kNonCoherent and kSwiotlb ones.
  bool need_sync() const;
  // The device's domain; nullptr in passthrough.
  IommuDomain* domain() const;
  // DeviceConfig::model_iotlb: the device's translation caches are modelled (false in passthrough).
  bool model_iotlb() const;
  CheckerCounters violations() const;
  // Live mappings right now, as the checker knows them.
  uint64_t live_mappings() const;
  // Totals of DMA-API calls that succeeded (map, unmap, sync).
  uint64_t map_calls() const;
  uint64_t unmap_calls() const;
  uint64_t sync_calls() const;
  // Domain figures; a passthrough device reports zeros except its call counts.
  DomainStats domain_stats() const;
  // Configured DMA address width in bits (the I/O page table's reach).
  unsigned address_width() const;
  // The DMA mask in bits (DeviceConfig::dma_mask_bits with 0 resolved to address_width).
  unsigned dma_mask_bits() const;

 private:
  Device();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_DEVICE_H_
