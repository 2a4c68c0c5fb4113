// File: server/call_guard.h
//
// What every PagePoolService call passes before it runs: the optional bearer token and, for
// streams, the stream limits.
//
//   BearerToken   --auth-token-file: each call must carry the metadata
//                 `authorization: Bearer <token>`; a call without it, or with another token, is
//                 refused with UNAUTHENTICATED before its request is looked at. The comparison
//                 takes the same time wherever the tokens differ (ConstantTimeEquals). Only
//                 PagePoolService and the unknown-method fallback check it: grpc.health.v1 stays
//                 open (Kubernetes' gRPC probes cannot send metadata) and so does server
//                 reflection (it serves only the public .proto schema, and `grpcurl list` is how an
//                 operator finds the service).
//   StreamLimiter --max-streams, --max-streams-per-peer: streams (Traffic, ListInflight,
//                 DumpPageTable, WatchEvents) open at once, in all and per client address (the
//                 peer's IP without its port); one more is refused with RESOURCE_EXHAUSTED naming
//                 the limit. A Slot holds one stream's place until it is destroyed.
//
// Thread safety: BearerToken is immutable after construction; StreamLimiter's methods and a Slot's
// destructor may run on any thread (one mutex).
#ifndef PAGEPOOL_SERVER_CALL_GUARD_H_
#define PAGEPOOL_SERVER_CALL_GUARD_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include <grpcpp/grpcpp.h>

namespace pagepool::server {

// True when a and b are equal. The time taken depends on the sizes only, never on where the
// bytes differ. Context: any thread.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// The client's address without its port: "ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1",
// "ipv6:[::1]:5000" -> "ipv6:[::1]"; anything else as it is.
std::string PeerAddress(std::string_view peer);

class BearerToken {
 public:
  // Empty `token`: no token is required.
  explicit BearerToken(std::string token = "") : token_(std::move(token)) {}

  // The token in a file (surrounding whitespace, such as a final newline, dropped).
  // INVALID_ARGUMENT if the file cannot be read or holds no token.
  static absl::StatusOr<std::string> ReadFile(const std::string& path);

  bool required() const { return !token_.empty(); }
  // OK when no token is required or `ctx` carries `authorization: Bearer <token>`; else
  // UNAUTHENTICATED naming `call` and what was missing. Context: any thread.
  absl::Status Check(const grpc::ServerContextBase& ctx, std::string_view call) const;

 private:
  const std::string token_;
};

class StreamLimiter {
 public:
  // One stream's place; released when destroyed. Movable; a moved-from or default Slot holds none.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept { *this = std::move(other); }
    Slot& operator=(Slot&& other) noexcept;
    ~Slot() { Release(); }

   private:
    friend class StreamLimiter;
    Slot(StreamLimiter* limiter, std::string peer) : limiter_(limiter), peer_(std::move(peer)) {}
    void Release();
    StreamLimiter* limiter_ = nullptr;
    std::string peer_;
  };

  // 0: no limit.
  StreamLimiter(uint32_t max_total, uint32_t max_per_peer)
      : max_total_(max_total), max_per_peer_(max_per_peer) {}

  // A place for one more stream of `peer` (as ServerContext::peer() gives it), or
  // RESOURCE_EXHAUSTED "<call>: N streams are open ... (--max-streams)". Context: any thread.
  absl::StatusOr<Slot> Acquire(std::string_view peer, std::string_view call);
  // Streams open now. Context: any thread.
  uint32_t open() const;

 private:
  void Release(const std::string& peer);

  const uint32_t max_total_;
  const uint32_t max_per_peer_;
  mutable base::Mutex mu_;
  uint32_t open_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint32_t, std::less<>> per_peer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_CALL_GUARD_H_
