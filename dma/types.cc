#include "dma/types.h"

namespace pagepool::dma {

std::string_view IommuModeName(IommuMode mode) {
  switch (mode) {
    case IommuMode::kStrict: return "strict";
    case IommuMode::kLazy: return "lazy";
    case IommuMode::kPassthrough: return "passthrough";
  }
  return "unknown";
}

std::string_view DmaDirectionName(DmaDirection dir) {
  switch (dir) {
    case DmaDirection::kBidirectional: return "bidirectional";
    case DmaDirection::kToDevice: return "to_device";
    case DmaDirection::kFromDevice: return "from_device";
  }
  return "unknown";
}

std::string_view DmaCoherenceName(DmaCoherence coherence) {
  switch (coherence) {
    case DmaCoherence::kNonCoherent: return "non_coherent";
    case DmaCoherence::kCoherent: return "coherent";
    case DmaCoherence::kSwiotlb: return "swiotlb";
  }
  return "unknown";
}

}  // namespace pagepool::dma
