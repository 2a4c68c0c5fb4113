#include "client/client.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace pagepool::client {
namespace v1 = ::pagepool::v1;

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
    if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read --tls-ca ", options.tls_ca));
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

template <typename Req, typename Resp, typename Method>
absl::StatusOr<Resp> Client::Unary(Method method, const Req& req) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  Resp resp;
  grpc::Status s = (stub_.get()->*method)(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp;
}

absl::StatusOr<v1::CreateDeviceResponse> Client::CreateDevice(const v1::CreateDeviceRequest& req) {
  return Unary<v1::CreateDeviceRequest, v1::CreateDeviceResponse>(
      &v1::PagePoolService::Stub::CreateDevice, req);
}

absl::StatusOr<v1::GetDeviceResponse> Client::GetDevice(uint64_t device_id) {
  v1::GetDeviceRequest req;
  req.set_device_id(device_id);
  return Unary<v1::GetDeviceRequest, v1::GetDeviceResponse>(&v1::PagePoolService::Stub::GetDevice,
                                                            req);
}

absl::StatusOr<v1::ListDevicesResponse> Client::ListDevices() {
  return Unary<v1::ListDevicesRequest, v1::ListDevicesResponse>(
      &v1::PagePoolService::Stub::ListDevices, v1::ListDevicesRequest());
}

absl::StatusOr<v1::UnbindDeviceResponse> Client::UnbindDevice(uint64_t device_id) {
  v1::UnbindDeviceRequest req;
  req.set_device_id(device_id);
  return Unary<v1::UnbindDeviceRequest, v1::UnbindDeviceResponse>(
      &v1::PagePoolService::Stub::UnbindDevice, req);
}

absl::StatusOr<v1::CreatePoolResponse> Client::CreatePool(const v1::CreatePoolRequest& req) {
  return Unary<v1::CreatePoolRequest, v1::CreatePoolResponse>(
      &v1::PagePoolService::Stub::CreatePool, req);
}

absl::StatusOr<v1::GetPoolResponse> Client::GetPool(uint64_t pool_id) {
  v1::GetPoolRequest req;
  req.set_pool_id(pool_id);
  return Unary<v1::GetPoolRequest, v1::GetPoolResponse>(&v1::PagePoolService::Stub::GetPool, req);
}

absl::StatusOr<v1::ListPoolsResponse> Client::ListPools(uint64_t device_id) {
  v1::ListPoolsRequest req;
  req.set_device_id(device_id);
  return Unary<v1::ListPoolsRequest, v1::ListPoolsResponse>(&v1::PagePoolService::Stub::ListPools,
                                                            req);
}

absl::StatusOr<v1::DestroyPoolResponse> Client::DestroyPool(uint64_t pool_id) {
  v1::DestroyPoolRequest req;
  req.set_pool_id(pool_id);
  return Unary<v1::DestroyPoolRequest, v1::DestroyPoolResponse>(
      &v1::PagePoolService::Stub::DestroyPool, req);
}

absl::StatusOr<v1::AllocateResponse> Client::Allocate(uint64_t pool_id, uint32_t count) {
  v1::AllocateRequest req;
  req.set_pool_id(pool_id);
  req.set_count(count);
  return Unary<v1::AllocateRequest, v1::AllocateResponse>(&v1::PagePoolService::Stub::Allocate,
                                                          req);
}

absl::StatusOr<v1::RecycleResponse> Client::Recycle(const v1::RecycleRequest& req) {
  return Unary<v1::RecycleRequest, v1::RecycleResponse>(&v1::PagePoolService::Stub::Recycle, req);
}

absl::StatusOr<v1::ReturnResponse> Client::Return(const v1::ReturnRequest& req) {
  return Unary<v1::ReturnRequest, v1::ReturnResponse>(&v1::PagePoolService::Stub::Return, req);
}

absl::StatusOr<v1::GetDomainResponse> Client::GetDomain(uint64_t device_id) {
  v1::GetDomainRequest req;
  req.set_device_id(device_id);
  return Unary<v1::GetDomainRequest, v1::GetDomainResponse>(&v1::PagePoolService::Stub::GetDomain,
                                                            req);
}

absl::StatusOr<v1::ListInflightResponse> Client::ListInflight(uint64_t pool_id, uint64_t limit) {
  v1::ListInflightRequest req;
  req.set_pool_id(pool_id);
  req.set_limit(limit);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto reader = stub_->ListInflight(&ctx, req);
  v1::ListInflightResponse all, part;
  while (reader->Read(&part)) all.mutable_pages()->MergeFrom(part.pages());
  grpc::Status s = reader->Finish();
  if (!s.ok()) return FromGrpc(s);
  return all;
}

absl::StatusOr<v1::DumpPageTableResponse> Client::DumpPageTable(
    const v1::DumpPageTableRequest& req) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto reader = stub_->DumpPageTable(&ctx, req);
  v1::DumpPageTableResponse all, part;
  while (reader->Read(&part)) all.mutable_entries()->MergeFrom(part.entries());
  grpc::Status s = reader->Finish();
  if (!s.ok()) return FromGrpc(s);
  return all;
}

}  // namespace pagepool::client
