// File: client/format.h
//
// Output of ppctl: human-readable text (the default) or JSON with the .proto's field names
// (protobuf JsonPrintOptions: preserve_proto_field_names, always_print_primitive_fields).
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

std::string FormatDevice(const pagepool::v1::Device& device);
std::string FormatPool(const pagepool::v1::Pool& pool);
std::string FormatDomain(const pagepool::v1::DomainInfo& domain);
std::string FormatEvent(const pagepool::v1::Event& event);
// Any other message: protobuf text format.
std::string FormatText(const google::protobuf::Message& message);

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_FORMAT_H_
