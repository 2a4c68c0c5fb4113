#include "client/client.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace pagepool::client {
namespace v1 = ::pagepool::v1;
using Stub = v1::PagePoolService::Stub;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target,
                                                        const ClientOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("empty target address");
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    std::ifstream in(options.tls_ca);
    if (!in) {
      return absl::InvalidArgumentError(absl::StrCat("cannot read --tls-ca ", options.tls_ca));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ss.str();
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  auto channel = grpc::CreateCustomChannel(target, creds, args);
  return std::unique_ptr<Client>(new Client(std::move(channel), options));
}

Client::Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : channel_(std::move(channel)),
      stub_(v1::PagePoolService::NewStub(channel_)),
      options_(options) {}

void Client::SetDeadline(grpc::ClientContext* ctx) const {
  ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
}

namespace {

// A request whose one field is the device id (GetDevice, UnbindDevice, ListPools, GetDomain).
template <typename Req>
Req DeviceRequest(uint64_t device_id) {
  Req req;
  req.set_device_id(device_id);
  return req;
}

// A request whose one field is the pool id (GetPool, DestroyPool).
template <typename Req>
Req PoolRequest(uint64_t pool_id) {
  Req req;
  req.set_pool_id(pool_id);
  return req;
}

}  // namespace

template <typename Req, typename Resp>
absl::StatusOr<Resp> Client::Unary(grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&,
                                                                Resp*),
                                   const Req& req) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  Resp resp;
  grpc::Status s = (stub_.get()->*method)(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp;
}

template <typename Req, typename Resp>
absl::StatusOr<Resp> Client::Collect(
    std::unique_ptr<grpc::ClientReader<Resp>> (Stub::*method)(grpc::ClientContext*, const Req&),
    const Req& req) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto reader = (stub_.get()->*method)(&ctx, req);
  Resp all, part;
  // The answers carry only repeated fields: merging appends them.
  while (reader->Read(&part)) all.MergeFrom(part);
  grpc::Status s = reader->Finish();
  if (!s.ok()) return FromGrpc(s);
  return all;
}

absl::StatusOr<v1::CreateDeviceResponse> Client::CreateDevice(const v1::CreateDeviceRequest& req) {
  return Unary(&Stub::CreateDevice, req);
}

absl::StatusOr<v1::GetDeviceResponse> Client::GetDevice(uint64_t device_id) {
  return Unary(&Stub::GetDevice, DeviceRequest<v1::GetDeviceRequest>(device_id));
}

absl::StatusOr<v1::ListDevicesResponse> Client::ListDevices() {
  return Unary(&Stub::ListDevices, v1::ListDevicesRequest());
}

absl::StatusOr<v1::UnbindDeviceResponse> Client::UnbindDevice(uint64_t device_id) {
  return Unary(&Stub::UnbindDevice, DeviceRequest<v1::UnbindDeviceRequest>(device_id));
}

absl::StatusOr<v1::CreatePoolResponse> Client::CreatePool(const v1::CreatePoolRequest& req) {
  return Unary(&Stub::CreatePool, req);
}

absl::StatusOr<v1::GetPoolResponse> Client::GetPool(uint64_t pool_id) {
  return Unary(&Stub::GetPool, PoolRequest<v1::GetPoolRequest>(pool_id));
}

absl::StatusOr<v1::ListPoolsResponse> Client::ListPools(uint64_t device_id) {
  return Unary(&Stub::ListPools, DeviceRequest<v1::ListPoolsRequest>(device_id));
}

absl::StatusOr<v1::DestroyPoolResponse> Client::DestroyPool(uint64_t pool_id) {
  return Unary(&Stub::DestroyPool, PoolRequest<v1::DestroyPoolRequest>(pool_id));
}

absl::StatusOr<v1::AllocateResponse> Client::Allocate(uint64_t pool_id, uint32_t count) {
  v1::AllocateRequest req;
  req.set_pool_id(pool_id);
  req.set_count(count);
  return Unary(&Stub::Allocate, req);
}

absl::StatusOr<v1::RecycleResponse> Client::Recycle(const v1::RecycleRequest& req) {
  return Unary(&Stub::Recycle, req);
}

absl::StatusOr<v1::ReturnResponse> Client::Return(const v1::ReturnRequest& req) {
  return Unary(&Stub::Return, req);
}

absl::StatusOr<v1::GetDomainResponse> Client::GetDomain(uint64_t device_id) {
  return Unary(&Stub::GetDomain, DeviceRequest<v1::GetDomainRequest>(device_id));
}

absl::StatusOr<v1::ListInflightResponse> Client::ListInflight(uint64_t pool_id, uint64_t limit,
                                                              uint32_t start_index_id) {
  v1::ListInflightRequest req;
  req.set_pool_id(pool_id);
  req.set_limit(limit);
  req.set_start_index_id(start_index_id);
  return Collect(&Stub::ListInflight, req);
}

absl::StatusOr<v1::DumpPageTableResponse> Client::DumpPageTable(
    const v1::DumpPageTableRequest& req) {
  return Collect(&Stub::DumpPageTable, req);
}

}  // namespace pagepool::client
