// File: server/status_convert.h
//
// absl::Status -> grpc::Status. absl's status codes are gRPC's, so the conversion is a cast (no
// table).
#ifndef PAGEPOOL_SERVER_STATUS_CONVERT_H_
#define PAGEPOOL_SERVER_STATUS_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include <grpcpp/support/status.h>

namespace pagepool::server {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_STATUS_CONVERT_H_
