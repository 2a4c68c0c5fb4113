// File: client/format.h
//
// Output of ppctl: human-readable text (the default) or JSON with the .proto's field names
// (protobuf JsonPrintOptions: preserve_proto_field_names, always_print_primitive_fields).
// FormatResponse has one overload per call's answer: the text ppctl prints for it. Every text ends
// in a newline. Enum values print in lower case without their prefix (IOMMU_MODE_STRICT: "strict").
#ifndef PAGEPOOL_CLIENT_FORMAT_H_
#define PAGEPOOL_CLIENT_FORMAT_H_

#include <string>

#include "google/protobuf/message.h"
#include "pagepool/v1/pagepool.pb.h"

namespace pagepool::client {

// JSON of any message, pretty-printed, field names as in the .proto.
std::string ToJson(const google::protobuf::Message& message);

// "FRAME:GENERATION", the handle syntax ppctl accepts back.
std::string FormatHandle(const pagepool::v1::PageHandle& handle);
// Parses "FRAME:GENERATION"; false when malformed.
bool ParseHandle(const std::string& text, pagepool::v1::PageHandle* out);
// "FRAME:GENERATION@OFFSET/SIZE", the fragment syntax ppctl accepts back.
std::string FormatFrag(const pagepool::v1::FragHandle& frag);
// Parses "FRAME:GENERATION@OFFSET/SIZE"; false when malformed (no '@' included).
bool ParseFrag(const std::string& text, pagepool::v1::FragHandle* out);

// "IOMMU_MODE_STRICT" without `prefix` ("IOMMU_MODE_"), in lower case: "strict".
std::string EnumLabel(const std::string& name, const std::string& prefix);

std::string FormatDevice(const pagepool::v1::Device& device);
std::string FormatPool(const pagepool::v1::Pool& pool);
std::string FormatDomain(const pagepool::v1::DomainInfo& domain);
std::string FormatEvent(const pagepool::v1::Event& event);

// The answer of each call as ppctl prints it.
std::string FormatResponse(const pagepool::v1::CreateDeviceResponse& r);  // the device
std::string FormatResponse(const pagepool::v1::GetDeviceResponse& r);     // device and domain
std::string FormatResponse(const pagepool::v1::ListDevicesResponse& r);   // "no devices" if none
std::string FormatResponse(const pagepool::v1::UnbindDeviceResponse& r);
std::string FormatResponse(const pagepool::v1::DeleteDeviceResponse& r);
std::string FormatResponse(const pagepool::v1::CreatePoolResponse& r);
std::string FormatResponse(const pagepool::v1::GetPoolResponse& r);
std::string FormatResponse(const pagepool::v1::ListPoolsResponse& r);  // "no pools" if none
std::string FormatResponse(const pagepool::v1::DestroyPoolResponse& r);
// One line a page: "FRAME:GEN dma_addr 0x..." (a fragment: "FRAME:GEN@OFFSET/SIZE dma_addr 0x...").
std::string FormatResponse(const pagepool::v1::AllocateResponse& r);
std::string FormatResponse(const pagepool::v1::RecycleResponse& r);
std::string FormatResponse(const pagepool::v1::ReturnResponse& r);
std::string FormatResponse(const pagepool::v1::RefFragResponse& r);  // "referenced: N fragments"
// One line a page ("id N FRAME:GEN dma_addr 0x...", and for a page split into fragments
// " fragmented, pp_ref_count N, frag_refs N"), then the count.
std::string FormatResponse(const pagepool::v1::ListInflightResponse& r);
std::string FormatResponse(const pagepool::v1::GetDomainResponse& r);
// One line an entry, then the count.
std::string FormatResponse(const pagepool::v1::DumpPageTableResponse& r);

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_FORMAT_H_
