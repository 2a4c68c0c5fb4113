// File: server/unknown_method.cc
#include "server/unknown_method.h"

#include "absl/strings/str_cat.h"

namespace pagepool::server {
namespace {

// Finishes the call as soon as it is created; gRPC deletes nothing itself.
class UnimplementedReactor final : public grpc::ServerGenericBidiReactor {
 public:
  explicit UnimplementedReactor(const std::string& method) {
    Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, UnknownMethodMessage(method)));
  }
  void OnDone() override { delete this; }
};

}  // namespace

std::string UnknownMethodMessage(const std::string& method) {
  return absl::StrCat("unknown method '", method,
                      "': pagepoold serves pagepool.v1.PagePoolService, grpc.health.v1.Health and "
                      "server reflection; `grpcurl -plaintext HOST:PORT list` lists them");
}

grpc::ServerGenericBidiReactor* UnknownMethodService::CreateReactor(
    grpc::GenericCallbackServerContext* ctx) {
  stats_->OnUnknownMethod();
  return new UnimplementedReactor(ctx->method());
}

}  // namespace pagepool::server
