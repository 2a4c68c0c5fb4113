// File: server/wire_convert.h
//
// Conversions between the wire messages of pagepool.v1 and the dma/ and pool/ types: enums both
// ways, CreatePoolRequest to PagePoolParams, and the Fill* functions that write a device, its
// domain figures, a pool or a page into a message. Nothing here validates a request (Runtime does)
// or takes a lock beyond what the dma/ and pool/ getters take.
//
// Thread safety: plain functions; the objects read are thread-safe as their headers say.
#ifndef PAGEPOOL_SERVER_WIRE_CONVERT_H_
#define PAGEPOOL_SERVER_WIRE_CONVERT_H_

#include <cstdint>
#include <string>

#include "dma/device.h"
#include "dma/iommu_domain.h"
#include "pagepool/v1/pagepool.pb.h"
#include "pool/nic.h"
#include "pool/page_pool.h"

namespace pagepool::server {

// What CreateDevice settled about a device, as the wire states it (defaults applied).
struct DeviceSpec {
  uint64_t id = 0;
  std::string name;
  pagepool::v1::IommuMode mode = pagepool::v1::IOMMU_MODE_STRICT;
  bool free_empty_tables = true;
  uint32_t address_width = 48;
  uint32_t dma_mask_bits = 48;  // resolved: address_width when the request left it 0
  pagepool::v1::DmaCoherence coherence = pagepool::v1::DMA_COHERENCE_NON_COHERENT;
  bool model_iotlb = false;
};

// UNSPECIFIED (already defaulted by the caller) and unknown values map to the default.
dma::IommuMode ToDmaMode(pagepool::v1::IommuMode mode);
pool::DestroyStrategy ToPoolStrategy(pagepool::v1::Strategy strategy);
dma::DmaCoherence ToDmaCoherence(pagepool::v1::DmaCoherence coherence);
pagepool::v1::Strategy FromPoolStrategy(pool::DestroyStrategy strategy);

// The device config of a Nic for `spec` (ifindex = device id).
pool::NicConfig ToNicConfig(const DeviceSpec& spec);
// The pool params of a valid request: flags.dma_map unset means on, strategy UNSPECIFIED XARRAY.
pool::PagePoolParams ToPoolParams(const pagepool::v1::CreatePoolRequest& req);

inline pool::PageHandle FromWire(const pagepool::v1::PageHandle& h) {
  return pool::PageHandle{h.frame(), h.generation()};
}
inline pool::FragHandle FromWire(const pagepool::v1::FragHandle& f) {
  return pool::FragHandle{FromWire(f.page()), f.offset(), f.size()};
}

void FillViolations(const dma::CheckerCounters& counters, pagepool::v1::Violations* out);
void FillDomain(const DeviceSpec& spec, const dma::Device& device, pagepool::v1::DomainInfo* out);
// The device with the ids of the Nic's live and detached pools.
void FillDevice(const DeviceSpec& spec, const pool::Nic& nic, pagepool::v1::Device* out);
// The pool as GetPool answers it; its flags, size and strategy come from the pool's params.
// `frags_refused` (the daemon's fragment ledger's refusals) is added to the pool's own
// frag_put_refused.
void FillPool(uint64_t device_id, const pool::PagePool& pool, pagepool::v1::Pool* out,
              uint64_t frags_refused = 0);
// What dropping a user of a pool did (DestroyPool, a queue restart's old pool).
void FillDestroyed(const pool::PoolDestroyed& destroyed, pagepool::v1::DestroyPoolResponse* out);
void FillPage(const pool::PoolPage& page, pagepool::v1::Page* out);
// A fragment as a Page: the page's handle, the fragment's bus address, and `frag` set.
void FillFrag(const pool::PoolFrag& frag, pagepool::v1::Page* out);
void FillPageTableEntry(const dma::PresentEntry& entry, pagepool::v1::PageTableEntry* out);
void FillWalkCacheEntry(const dma::WalkCacheEntry& entry, pagepool::v1::WalkCacheEntry* out);

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_WIRE_CONVERT_H_
