// File: client/health.h
//
// CheckHealth: one call of the standard health protocol, grpc.health.v1.Health/Check, over a
// Client's channel. pagepoold answers it for the empty service name (the whole server) and turns
// NOT_SERVING when it shuts down; `ppctl health` is built on it (the containers' health check).
//
// proto/ generates no C++ code for grpc.health.v1 (the daemon uses gRPC's built-in health service),
// so the call goes through grpc::GenericStub and its two one-field messages are encoded and decoded
// here with protobuf's UnknownFieldSet:
//   message HealthCheckRequest  { string service = 1; }
//   message HealthCheckResponse { ServingStatus status = 1; }
//
// Thread safety: any thread (a Client may be shared).
#ifndef PAGEPOOL_CLIENT_HEALTH_H_
#define PAGEPOOL_CLIENT_HEALTH_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace pagepool::client {

// grpc.health.v1.HealthCheckResponse.ServingStatus, with the wire's numbers.
enum class ServingStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

// "SERVING", "NOT_SERVING", ...: the enum value's name in health.proto ("UNKNOWN" for a number the
// protocol does not define).
std::string_view ServingStatusName(ServingStatus status);

// The serving status of `service` ("": the server as a whole), within the client's deadline.
// Errors: the call's gRPC status (UNAVAILABLE when the daemon cannot be reached, NOT_FOUND for a
// service the daemon does not know, DEADLINE_EXCEEDED); INTERNAL for an answer that does not parse.
absl::StatusOr<ServingStatus> CheckHealth(Client& client, const std::string& service = "");

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_HEALTH_H_
