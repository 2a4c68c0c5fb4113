// File: server/rpc_stats.h
//
// Per-call counters of the PagePoolService: calls finished per method and status code, the page
// operations and batches carried by the Traffic stream, calls to unknown methods and WatchEvents
// events dropped for watchers too far behind. Read by /metrics and by the summary
// the daemon prints at shutdown.
//
// Thread safety: every method may be called from any thread (relaxed atomics; figures are
// eventually consistent, never torn).
#ifndef PAGEPOOL_SERVER_RPC_STATS_H_
#define PAGEPOOL_SERVER_RPC_STATS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace pagepool::server {

// The calls of PagePoolService, in the order of the .proto.
enum class RpcMethod : int {
  kCreateDevice = 0,
  kGetDevice,
  kListDevices,
  kUnbindDevice,
  kDeleteDevice,
  kCreatePool,
  kGetPool,
  kListPools,
  kDestroyPool,
  kAllocate,
  kRecycle,
  kReturn,
  kTraffic,
  kListInflight,
  kGetDomain,
  kDumpPageTable,
  kWatchEvents,
  kRefFrag,
  kCount,
};

class RpcStats {
 public:
  static constexpr int kMethods = static_cast<int>(RpcMethod::kCount);
  static constexpr int kCodes = 17;  // grpc status codes 0..16

  // Counts one finished call with its status code.
  void OnFinished(RpcMethod method, absl::StatusCode code) {
    int c = static_cast<int>(code);
    if (c < 0 || c >= kCodes) c = static_cast<int>(absl::StatusCode::kUnknown);
    finished_[Index(method)][c].fetch_add(1, std::memory_order_relaxed);
  }
  // Counts one Traffic batch and the page operations (allocated + recycled + returned) in it.
  void OnTrafficBatch(uint64_t page_ops, uint64_t errors) {
    traffic_batches_.fetch_add(1, std::memory_order_relaxed);
    traffic_page_ops_.fetch_add(page_ops, std::memory_order_relaxed);
    traffic_errors_.fetch_add(errors, std::memory_order_relaxed);
  }

  // Counts one call to a method no service has (answered UNIMPLEMENTED).
  void OnUnknownMethod() { unknown_method_.fetch_add(1, std::memory_order_relaxed); }
  // Counts `n` WatchEvents events that a watcher too far behind never got (its stream then ends
  // with RESOURCE_EXHAUSTED).
  void OnWatchEventsDropped(uint64_t n) {
    watch_events_dropped_.fetch_add(n, std::memory_order_relaxed);
  }

  uint64_t Finished(RpcMethod method, absl::StatusCode code) const {
    return finished_[Index(method)][static_cast<int>(code)].load(std::memory_order_relaxed);
  }
  // Calls finished of `method`, whatever their code.
  uint64_t Total(RpcMethod method) const;
  // Calls finished of `method` with a code other than OK.
  uint64_t Errors(RpcMethod method) const;
  uint64_t traffic_batches() const { return traffic_batches_.load(std::memory_order_relaxed); }
  uint64_t traffic_page_ops() const { return traffic_page_ops_.load(std::memory_order_relaxed); }
  uint64_t traffic_errors() const { return traffic_errors_.load(std::memory_order_relaxed); }
  uint64_t unknown_method() const { return unknown_method_.load(std::memory_order_relaxed); }
  uint64_t watch_events_dropped() const {
    return watch_events_dropped_.load(std::memory_order_relaxed);
  }

  // Appends the Prometheus text exposition of these counters (pagepool_rpc_*).
  void AppendMetrics(std::string* out) const;
  // One line per method that was called: "    CreateDevice 3 (1 errors)"; "    none" if none was.
  std::string Summary() const;

 private:
  static int Index(RpcMethod m) { return static_cast<int>(m); }
  std::array<std::array<std::atomic<uint64_t>, kCodes>, kMethods> finished_{};
  std::atomic<uint64_t> traffic_batches_{0};
  std::atomic<uint64_t> traffic_page_ops_{0};
  std::atomic<uint64_t> traffic_errors_{0};
  std::atomic<uint64_t> unknown_method_{0};
  std::atomic<uint64_t> watch_events_dropped_{0};
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_RPC_STATS_H_
