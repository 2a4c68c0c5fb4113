#include "client/client.h"

#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include <grpcpp/support/client_interceptor.h>

namespace pagepool::client {
namespace v1 = ::pagepool::v1;
using Stub = v1::PagePoolService::Stub;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

namespace {

// The whole of the file named by `option` (for its error message).
absl::StatusOr<std::string> ReadOptionFile(const char* option, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  if (in) ss << in.rdbuf();
  if (!in || in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", option, " ", path));
  }
  return ss.str();
}

// The token in `path`, surrounding whitespace dropped.
absl::StatusOr<std::string> ReadToken(const std::string& path) {
  auto text = ReadOptionFile("--auth-token-file", path);
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(*text));
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth-token-file ", path, " holds no token (the file is empty)"));
  }
  // A metadata value is printable ASCII (RFC 7230 field-value as gRPC takes it).
  for (char c : token) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--auth-token-file ", path,
          ": the token holds a byte that is not printable ASCII (one line of text expected)"));
    }
  }
  return token;
}

// Adds `authorization: <value>` to the initial metadata of every call.
class AuthorizationInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit AuthorizationInterceptor(std::string value) : value_(std::move(value)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", value_);
    }
    methods->Proceed();
  }

 private:
  const std::string value_;
};

class AuthorizationInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit AuthorizationInterceptorFactory(std::string value) : value_(std::move(value)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new AuthorizationInterceptor(value_);
  }

 private:
  const std::string value_;
};

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientOptions& options) {
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: the client certificate and its private key");
  }
  if (options.tls_ca.empty() && options.tls_cert.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca.empty()) {
    auto ca = ReadOptionFile("--tls-ca", options.tls_ca);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!options.tls_cert.empty()) {
    auto cert = ReadOptionFile("--tls-cert", options.tls_cert);
    if (!cert.ok()) return cert.status();
    auto key = ReadOptionFile("--tls-key", options.tls_key);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target,
                                                        const ClientOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("empty target address");
  auto creds = ChannelCredentials(options);
  if (!creds.ok()) return creds.status();
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (!options.auth_token_file.empty()) {
    auto token = ReadToken(options.auth_token_file);
    if (!token.ok()) return token.status();
    interceptors.push_back(
        std::make_unique<AuthorizationInterceptorFactory>(absl::StrCat("Bearer ", *token)));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  auto channel = grpc::experimental::CreateCustomChannelWithInterceptors(target, *creds, args,
                                                                         std::move(interceptors));
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

// A request whose one field is the device id (GetDevice, UnbindDevice, DeleteDevice, ListPools,
// GetDomain).
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

absl::StatusOr<v1::DeleteDeviceResponse> Client::DeleteDevice(uint64_t device_id) {
  return Unary(&Stub::DeleteDevice, DeviceRequest<v1::DeleteDeviceRequest>(device_id));
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

absl::StatusOr<v1::DestroyPoolResponse> Client::DestroyPool(const v1::DestroyPoolRequest& req) {
  return Unary(&Stub::DestroyPool, req);
}

absl::StatusOr<v1::AllocateResponse> Client::Allocate(uint64_t pool_id, uint32_t count,
                                                      uint32_t frag_size) {
  v1::AllocateRequest req;
  req.set_pool_id(pool_id);
  req.set_count(count);
  req.set_frag_size(frag_size);
  return Unary(&Stub::Allocate, req);
}

absl::StatusOr<v1::RecycleResponse> Client::Recycle(const v1::RecycleRequest& req) {
  return Unary(&Stub::Recycle, req);
}

absl::StatusOr<v1::ReturnResponse> Client::Return(const v1::ReturnRequest& req) {
  return Unary(&Stub::Return, req);
}

absl::StatusOr<v1::RefFragResponse> Client::RefFrag(const v1::RefFragRequest& req) {
  return Unary(&Stub::RefFrag, req);
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
