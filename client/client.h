// File: client/client.h
//
// Client: a thin, typed C++ client of pagepool.v1.PagePoolService. Each unary call returns
// absl::StatusOr of its response; a gRPC status becomes an absl::Status by casting its code (the
// codes are the same), so callers test `status.code() == absl::StatusCode::kNotFound` and so on.
//
// Security: with tls_ca (or a client certificate) the channel is TLS; tls_cert and tls_key present
// a client certificate for mutual TLS (pagepoold --tls-client-ca); auth_token_file makes every call
// on the channel (unary, streams, grpc.health.v1) carry `authorization: Bearer <token>` (pagepoold
// --auth-token-file). The files are read once, by Connect.
//
// Thread safety: a Client may be used from many threads at once (gRPC stubs are thread-safe).
#ifndef PAGEPOOL_CLIENT_CLIENT_H_
#define PAGEPOOL_CLIENT_CLIENT_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pagepool/v1/pagepool.grpc.pb.h"
#include <grpcpp/grpcpp.h>

namespace pagepool::client {

struct ClientOptions {
  // Deadline of each unary call.
  std::chrono::milliseconds timeout{10000};
  // PEM file of the CA that signed the daemon's certificate; empty: plaintext (or, with a client
  // certificate, TLS checked against gRPC's default roots).
  std::string tls_ca;
  // PEM client certificate chain and its private key, for mutual TLS; both or neither.
  std::string tls_cert;
  std::string tls_key;
  // File holding the bearer token sent with every call; surrounding whitespace (the final
  // newline) is dropped, as pagepoold does. Empty: no token.
  std::string auth_token_file;
  // Largest message accepted from the daemon.
  int max_message_bytes = 64 << 20;
};

// grpc::Status -> absl::Status (a cast of the code).
absl::Status FromGrpc(const grpc::Status& status);

class Client {
 public:
  // Creates a channel to `target` ("host:port"). Connection happens lazily, at the first call.
  // INVALID_ARGUMENT, naming the option, for an empty target, a file that cannot be read, only one
  // of tls_cert and tls_key, or a token file that holds no token (or a byte that metadata cannot
  // carry).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target,
                                                         const ClientOptions& options = {});

  absl::StatusOr<pagepool::v1::CreateDeviceResponse> CreateDevice(
      const pagepool::v1::CreateDeviceRequest& req);
  absl::StatusOr<pagepool::v1::GetDeviceResponse> GetDevice(uint64_t device_id);
  absl::StatusOr<pagepool::v1::ListDevicesResponse> ListDevices();
  absl::StatusOr<pagepool::v1::UnbindDeviceResponse> UnbindDevice(uint64_t device_id);
  absl::StatusOr<pagepool::v1::DeleteDeviceResponse> DeleteDevice(uint64_t device_id);
  absl::StatusOr<pagepool::v1::CreatePoolResponse> CreatePool(
      const pagepool::v1::CreatePoolRequest& req);
  absl::StatusOr<pagepool::v1::GetPoolResponse> GetPool(uint64_t pool_id);
  absl::StatusOr<pagepool::v1::ListPoolsResponse> ListPools(uint64_t device_id = 0);
  absl::StatusOr<pagepool::v1::DestroyPoolResponse> DestroyPool(uint64_t pool_id);
  absl::StatusOr<pagepool::v1::DestroyPoolResponse> DestroyPool(
      const pagepool::v1::DestroyPoolRequest& req);
  // frag_size 0: whole pages; otherwise `count` fragments of frag_size bytes (each Page's frag).
  absl::StatusOr<pagepool::v1::AllocateResponse> Allocate(uint64_t pool_id, uint32_t count,
                                                          uint32_t frag_size = 0);
  absl::StatusOr<pagepool::v1::RecycleResponse> Recycle(const pagepool::v1::RecycleRequest& req);
  absl::StatusOr<pagepool::v1::ReturnResponse> Return(const pagepool::v1::ReturnRequest& req);
  absl::StatusOr<pagepool::v1::RefFragResponse> RefFrag(const pagepool::v1::RefFragRequest& req);
  absl::StatusOr<pagepool::v1::GetDomainResponse> GetDomain(uint64_t device_id);
  // Server streams, collected: every message until the stream ends.
  // ListInflight of the pages with index id >= start_index_id (0: all), at most `limit` (0: all).
  absl::StatusOr<pagepool::v1::ListInflightResponse> ListInflight(uint64_t pool_id,
                                                                  uint64_t limit = 0,
                                                                  uint32_t start_index_id = 0);
  absl::StatusOr<pagepool::v1::DumpPageTableResponse> DumpPageTable(
      const pagepool::v1::DumpPageTableRequest& req);

  // The stub, for streaming calls (Traffic, WatchEvents) and anything not wrapped here.
  pagepool::v1::PagePoolService::Stub* stub() { return stub_.get(); }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // Sets the deadline of a context to now + options.timeout.
  void SetDeadline(grpc::ClientContext* ctx) const;

 private:
  Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);
  // A unary call of the stub's `method`, within the deadline.
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Unary(grpc::Status (pagepool::v1::PagePoolService::Stub::*method)(
                                 grpc::ClientContext*, const Req&, Resp*),
                             const Req& req);
  // A server-streaming call of `method`, every message merged into one (the repeated fields
  // appended), within the deadline.
  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Collect(
      std::unique_ptr<grpc::ClientReader<Resp>> (pagepool::v1::PagePoolService::Stub::*method)(
          grpc::ClientContext*, const Req&),
      const Req& req);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pagepool::v1::PagePoolService::Stub> stub_;
  ClientOptions options_;
};

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_CLIENT_H_
