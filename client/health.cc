#include "client/health.h"

#include <future>

#include "google/protobuf/unknown_field_set.h"
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

namespace pagepool::client {
namespace {

constexpr char kCheckMethod[] = "/grpc.health.v1.Health/Check";
constexpr int kServiceField = 1;  // HealthCheckRequest.service
constexpr int kStatusField = 1;   // HealthCheckResponse.status

grpc::ByteBuffer EncodeRequest(const std::string& service) {
  google::protobuf::UnknownFieldSet fields;
  if (!service.empty()) fields.AddLengthDelimited(kServiceField, service);
  std::string bytes;
  fields.SerializeToString(&bytes);
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

absl::StatusOr<ServingStatus> DecodeResponse(const grpc::ByteBuffer& buffer) {
  grpc::Slice slice;
  google::protobuf::UnknownFieldSet fields;
  if (!buffer.TrySingleSlice(&slice).ok() && !buffer.DumpToSingleSlice(&slice).ok()) {
    return absl::InternalError("health check: cannot read the answer");
  }
  if (!fields.ParseFromArray(slice.begin(), static_cast<int>(slice.size()))) {
    return absl::InternalError("health check: the answer is not a HealthCheckResponse");
  }
  // An absent field is the enum's zero, UNKNOWN (proto3); the last occurrence wins.
  auto status = ServingStatus::kUnknown;
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& f = fields.field(i);
    if (f.number() == kStatusField && f.type() == google::protobuf::UnknownField::TYPE_VARINT) {
      status = static_cast<ServingStatus>(f.varint());
    }
  }
  return status;
}

}  // namespace

std::string_view ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kServing: return "SERVING";
    case ServingStatus::kNotServing: return "NOT_SERVING";
    case ServingStatus::kServiceUnknown: return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown: break;
  }
  return "UNKNOWN";
}

absl::StatusOr<ServingStatus> CheckHealth(Client& client, const std::string& service) {
  grpc::GenericStub stub(client.channel());
  grpc::ClientContext ctx;
  client.SetDeadline(&ctx);
  const grpc::ByteBuffer request = EncodeRequest(service);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, kCheckMethod, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return FromGrpc(s);
  return DecodeResponse(response);
}

}  // namespace pagepool::client
