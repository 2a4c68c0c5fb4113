// File: server/unknown_method.h
//
// UnknownMethodService: pagepoold's fallback for calls to a method no registered service has (a
// typo in the service or method name, an old client, a probe). Registered with
// grpc::ServerBuilder::RegisterCallbackGenericService, it receives every call that matches no
// registered method, and only those: PagePoolService, grpc.health.v1.Health and server reflection
// keep their own handlers (their methods are registered, so gRPC matches them first).
//
// Every call it receives finishes at once, without reading the request, with UNIMPLEMENTED and a
// message that names the method asked for and points to server reflection, e.g. for
// /pagepool.v1.PagePoolService/Nope:
//   unknown method '/pagepool.v1.PagePoolService/Nope': pagepoold serves
//   pagepool.v1.PagePoolService, grpc.health.v1.Health and server reflection;
//   `grpcurl -plaintext HOST:PORT list` lists them
// (gRPC's own fallback answers UNIMPLEMENTED with an empty message). Each such call is counted
// in RpcStats (pagepool_rpc_unknown_method_total).
//
// Thread safety: gRPC calls CreateReactor from its callback threads concurrently; the service holds
// only a pointer to the thread-safe RpcStats, which must outlive the grpc::Server.
#ifndef PAGEPOOL_SERVER_UNKNOWN_METHOD_H_
#define PAGEPOOL_SERVER_UNKNOWN_METHOD_H_

#include <string>

#include "server/rpc_stats.h"
#include <grpcpp/generic/async_generic_service.h>

namespace pagepool::server {

// The UNIMPLEMENTED message for a call to `method` ("/package.Service/Method" as gRPC gives it).
std::string UnknownMethodMessage(const std::string& method);

class UnknownMethodService final : public grpc::CallbackGenericService {
 public:
  // `stats` must outlive the grpc::Server the service is registered with.
  explicit UnknownMethodService(RpcStats* stats) : stats_(stats) {}

  // Context: gRPC callback threads.
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;

 private:
  RpcStats* const stats_;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_UNKNOWN_METHOD_H_
