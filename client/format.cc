#include "client/format.h"

#include <cctype>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace pagepool::client {
namespace v1 = ::pagepool::v1;

namespace {

// `format(item)` of every item, or `none` when there are none.
template <typename Items, typename Format>
std::string JoinOr(const Items& items, Format format, const char* none) {
  std::string text;
  for (const auto& item : items) text += format(item);
  return text.empty() ? none : text;
}

// "FRAME:GEN dma_addr 0x...\n", how allocate and list-inflight print a page.
std::string PageLine(const v1::PageHandle& handle, uint64_t dma_addr) {
  return absl::StrFormat("%s dma_addr 0x%x\n", FormatHandle(handle), dma_addr);
}

}  // namespace

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, opts);
  if (!status.ok()) return absl::StrCat("{\"error\": \"cannot print JSON\"}\n");
  return out;
}

std::string FormatHandle(const v1::PageHandle& h) {
  return absl::StrCat(h.frame(), ":", h.generation());
}

bool ParseHandle(const std::string& text, v1::PageHandle* out) {
  size_t colon = text.find(':');
  if (colon == std::string::npos) return false;
  uint64_t frame = 0;
  uint32_t gen = 0;
  if (!absl::SimpleAtoi(text.substr(0, colon), &frame) ||
      !absl::SimpleAtoi(text.substr(colon + 1), &gen)) {
    return false;
  }
  out->set_frame(frame);
  out->set_generation(gen);
  return true;
}

std::string FormatFrag(const v1::FragHandle& f) {
  return absl::StrCat(FormatHandle(f.page()), "@", f.offset(), "/", f.size());
}

bool ParseFrag(const std::string& text, v1::FragHandle* out) {
  const size_t at = text.find('@');
  const size_t slash = text.find('/', at == std::string::npos ? 0 : at);
  if (at == std::string::npos || slash == std::string::npos) return false;
  uint32_t offset = 0, size = 0;
  if (!ParseHandle(text.substr(0, at), out->mutable_page()) ||
      !absl::SimpleAtoi(text.substr(at + 1, slash - at - 1), &offset) ||
      !absl::SimpleAtoi(text.substr(slash + 1), &size)) {
    return false;
  }
  out->set_offset(offset);
  out->set_size(size);
  return true;
}

std::string EnumLabel(const std::string& name, const std::string& prefix) {
  std::string s = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string FormatDomain(const v1::DomainInfo& d) {
  const v1::Violations& v = d.violations();
  return absl::StrFormat(
      "domain of device %d: %s, %d-bit (%d levels), free_empty_tables %s\n"
      "  page tables: %d pages (%d bytes), peak %d, allocated %d, freed %d, released %d, "
      "pending %d\n"
      "  mappings:    %d pages mapped, %d live (checker), maps %d, unmaps %d, iova pages %d\n"
      "  dma api:     map %d, unmap %d, sync %d; iotlb flushes %d (%d entries), fq pending %d, "
      "faults %d\n"
      "  violations:  %d (double_unmap %d, unknown_unmap %d, size_mismatch %d, "
      "direction_mismatch %d, live_at_unbind %d, call_after_unbind %d, sync_unknown %d)\n",
      d.device_id(), EnumLabel(v1::IommuMode_Name(d.iommu_mode()), "IOMMU_MODE_"),
      d.address_width(), d.levels(), d.free_empty_tables() ? "on" : "off", d.table_pages(),
      d.table_bytes(), d.peak_table_pages(), d.tables_allocated(), d.tables_freed(),
      d.tables_released(), d.pending_free_pages(), d.mapped_pages(), d.live_mappings(), d.maps(),
      d.unmaps(), d.iova_allocated_pages(), d.map_calls(), d.unmap_calls(), d.sync_calls(),
      d.iotlb_flushes(), d.iotlb_flushed_entries(), d.fq_pending(), d.faults(), v.total(),
      v.double_unmap(), v.unknown_unmap(), v.size_mismatch(), v.direction_mismatch(),
      v.live_at_unbind(), v.call_after_unbind(), v.sync_unknown()) +
         absl::StrFormat(
             "  invalidate:  leaf %d, nonleaf %d, domain-wide %d (%d pages); dirty tracking %s\n"
             "  tables:      iommu pages %d, cached %d; walk restarts %d, failed reserves %d, "
             "death races lost %d, released not zero %d\n",
             d.iotlb_inv_leaf(), d.iotlb_inv_nonleaf(), d.iotlb_inv_domain(), d.iotlb_inv_pages(),
             d.dirty_tracking() ? "on" : "off", d.iommu_pages(), d.cached_table_pages(),
             d.walk_restarts(), d.failed_reserves(), d.death_races_lost(),
             d.released_tables_not_zero()) +
         (d.model_iotlb()
              ? absl::StrFormat("  iotlb model: %d hits; walk cache %d entries, %d hits, "
                                "%d stale walks\n",
                                d.iotlb_hits(), d.walk_cache_entries(), d.walk_cache_hits(),
                                d.walk_cache_stale_walks())
              : std::string());
}

std::string FormatDevice(const v1::Device& d) {
  // The DMA mask is shown only when it is below the address width (a 32-bit device).
  std::string mask = d.dma_mask_bits() != 0 && d.dma_mask_bits() < d.address_width()
                         ? absl::StrFormat(", dma mask %d-bit", d.dma_mask_bits())
                         : std::string();
  // The DMA coherence is shown only when it is not the default (non-coherent: syncs).
  if (d.dma_coherence() == v1::DMA_COHERENCE_COHERENT ||
      d.dma_coherence() == v1::DMA_COHERENCE_SWIOTLB) {
    absl::StrAppend(&mask, ", dma ",
                    EnumLabel(v1::DmaCoherence_Name(d.dma_coherence()), "DMA_COHERENCE_"),
                    d.dma_need_sync() ? "" : " (no dma sync)");
  }
  // A device whose translation caches are modelled says so (get-domain shows the figures).
  if (d.domain().model_iotlb()) absl::StrAppend(&mask, ", iotlb modelled");
  return absl::StrFormat(
      "device %d \"%s\" (ifindex %d): %s, iommu %s, %d-bit%s, pools [%s], mapped %d pages, "
      "page tables %d, violations %d\n",
      d.id(), d.name(), d.ifindex(), EnumLabel(v1::DeviceState_Name(d.state()), "DEVICE_STATE_"),
      EnumLabel(v1::IommuMode_Name(d.iommu_mode()), "IOMMU_MODE_"), d.address_width(), mask,
      absl::StrJoin(d.pool_ids(), " "), d.domain().mapped_pages(), d.domain().table_pages(),
      d.domain().violations().total());
}

std::string FormatPool(const v1::Pool& p) {
  const v1::PoolStats& st = p.stats();
  return absl::StrFormat(
      "pool %d on device %d (ifindex %d, napi %d): order %d, %s%s, inflight %d (%d bytes), "
      "dma_mapped %d, detach_time %d\n"
      "  alloc:   fast %d, slow %d, slow_high_order %d, empty %d, refill %d, waive %d\n"
      "  recycle: cached %d, cache_full %d, ring %d, ring_full %d, released_refcnt %d\n"
      "  users %d, dma synced %d bytes\n%s",
      p.id(), p.device_id(), p.ifindex(), p.napi_id(), p.order(),
      EnumLabel(v1::Strategy_Name(p.strategy()), "STRATEGY_"), p.destroyed() ? ", destroyed" : "",
      p.inflight(), p.inflight_mem(), p.dma_mapped(), p.detach_time(), st.alloc_fast(),
      st.alloc_slow(), st.alloc_slow_high_order(), st.alloc_empty(), st.alloc_refill(),
      st.alloc_waive(), st.recycle_cached(), st.recycle_cache_full(), st.recycle_ring(),
      st.recycle_ring_full(), st.recycle_released_refcnt(), p.users(), p.dma_synced_bytes(),
      // Fragments, once the pool has had any.
      p.frag_pages() + p.frag_refs() + p.frag_put_refused() == 0
          ? std::string()
          : absl::StrFormat("  frags:   pages %d, refs %d, put_refused %d\n", p.frag_pages(),
                            p.frag_refs(), p.frag_put_refused()));
}

std::string FormatEvent(const v1::Event& e) {
  std::string what;
  if (e.has_pool()) {
    what = absl::StrFormat("pool %d (device %d) inflight %d detach_time %d", e.pool().id(),
                           e.pool().device_id(), e.pool().inflight(), e.pool().detach_time());
  } else if (e.has_device()) {
    what = absl::StrFormat("device %d \"%s\" %s", e.device().id(), e.device().name(),
                           EnumLabel(v1::DeviceState_Name(e.device().state()), "DEVICE_STATE_"));
  }
  return absl::StrFormat("#%d %s %s\n", e.seq(),
                         EnumLabel(v1::EventType_Name(e.type()), "EVENT_TYPE_"), what);
}

std::string FormatResponse(const v1::CreateDeviceResponse& r) { return FormatDevice(r.device()); }

std::string FormatResponse(const v1::GetDeviceResponse& r) {
  return FormatDevice(r.device()) + FormatDomain(r.device().domain());
}

std::string FormatResponse(const v1::ListDevicesResponse& r) {
  return JoinOr(r.devices(), FormatDevice, "no devices\n");
}

std::string FormatResponse(const v1::UnbindDeviceResponse& r) {
  return absl::StrCat("unbound: ", r.pools_destroyed(), " pools destroyed, ",
                      r.inflight_at_destroy(), " pages in flight, ", r.pages_unmapped(),
                      " unmapped\n", FormatDevice(r.device()));
}

std::string FormatResponse(const v1::DeleteDeviceResponse& r) {
  return absl::StrCat("deleted; its last figures:\n", FormatDevice(r.device()));
}

std::string FormatResponse(const v1::CreatePoolResponse& r) {
  if (!r.has_replaced()) return FormatPool(r.pool());
  return absl::StrCat(FormatPool(r.pool()), "replaced: ", FormatResponse(r.replaced()));
}

std::string FormatResponse(const v1::GetPoolResponse& r) { return FormatPool(r.pool()); }

std::string FormatResponse(const v1::ListPoolsResponse& r) {
  return JoinOr(r.pools(), FormatPool, "no pools\n");
}

std::string FormatResponse(const v1::DestroyPoolResponse& r) {
  if (r.users_left() > 0) {
    return absl::StrFormat("pool %d not destroyed: %d user(s) left (xdp_rxq or driver)\n",
                           r.pool_id(), r.users_left());
  }
  return absl::StrFormat("pool %d destroyed (%s): %d pages in flight, %d unmapped, %.3f ms\n",
                         r.pool_id(), EnumLabel(v1::Strategy_Name(r.strategy()), "STRATEGY_"),
                         r.inflight_at_destroy(), r.pages_unmapped(), r.duration_ns() / 1e6);
}

std::string FormatResponse(const v1::AllocateResponse& r) {
  std::string text;
  for (const v1::Page& p : r.pages()) {
    text += p.has_frag() ? absl::StrFormat("%s dma_addr 0x%x\n", FormatFrag(p.frag()), p.dma_addr())
                         : PageLine(p.handle(), p.dma_addr());
  }
  return text;
}

std::string FormatResponse(const v1::RecycleResponse& r) {
  std::string frags;
  if (r.frags() > 0) {
    frags = absl::StrCat(", ", r.frags(), " fragments (", r.pages_from_frags(),
                         " pages by their last fragment)");
  }
  return absl::StrCat("recycled: ", r.cached(), " cached, ", r.ring(), " ring, ", r.released(),
                      " released", frags, "\n");
}

std::string FormatResponse(const v1::ReturnResponse& r) {
  std::string frags;
  if (r.frags() > 0) {
    frags = absl::StrCat(", ", r.frags(), " fragments (", r.pages_from_frags(),
                         " pages by their last fragment)");
  }
  return absl::StrCat("returned: ", r.returned(), " pages, ", r.unmapped(),
                      " unmapped by this call", frags, "\n");
}

std::string FormatResponse(const v1::RefFragResponse& r) {
  return absl::StrCat("referenced: ", r.refs(), " fragments (one more reference each)\n");
}

std::string FormatResponse(const v1::ListInflightResponse& r) {
  std::string text;
  for (const v1::InflightPage& p : r.pages()) {
    std::string line = PageLine(p.handle(), p.dma_addr());
    if (p.fragmented()) {
      line.pop_back();  // the newline
      absl::StrAppend(&line, " fragmented, pp_ref_count ", p.pp_ref_count(), ", frag_refs ",
                      p.frag_refs(), "\n");
    }
    absl::StrAppend(&text, "id ", p.index_id(), " ", line);
  }
  absl::StrAppend(&text, r.pages_size(), " pages tracked\n");
  return text;
}

std::string FormatResponse(const v1::GetDomainResponse& r) { return FormatDomain(r.domain()); }

std::string FormatResponse(const v1::DumpPageTableResponse& r) {
  std::string text;
  for (const v1::PageTableEntry& e : r.entries()) {
    absl::StrAppend(&text,
                    absl::StrFormat("iova 0x%012x -> phys 0x%012x size %d prot %d%s%s\n", e.iova(),
                                    e.phys(), e.size(), e.prot(), e.dirty() ? " dirty" : "",
                                    e.accessed() ? " accessed" : ""));
  }
  absl::StrAppend(&text, r.entries_size(), " entries\n");
  for (const v1::WalkCacheEntry& w : r.walk_cache()) {
    absl::StrAppend(&text,
                    absl::StrFormat("walk-cache level %d iova 0x%012x span 0x%x%s\n", w.level(),
                                    w.iova(), w.span(), w.stale() ? " STALE" : ""));
  }
  if (r.walk_cache_size() != 0)
    absl::StrAppend(&text, r.walk_cache_size(), " walk-cache entries\n");
  return text;
}

}  // namespace pagepool::client
