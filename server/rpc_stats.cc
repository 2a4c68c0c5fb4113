// File: server/rpc_stats.cc
#include "server/rpc_stats.h"

#include "absl/strings/str_cat.h"
#include "server/metrics_text.h"

namespace pagepool::server {
namespace {

constexpr std::string_view kMethodNames[] = {
    "CreateDevice", "GetDevice",    "ListDevices", "UnbindDevice",  "DeleteDevice", "CreatePool",
    "GetPool",      "ListPools",    "DestroyPool", "Allocate",      "Recycle",      "Return",
    "Traffic",      "ListInflight", "GetDomain",   "DumpPageTable", "WatchEvents",  "RefFrag",
};
static_assert(std::size(kMethodNames) == RpcStats::kMethods);

constexpr std::string_view kCodeNames[RpcStats::kCodes] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

}  // namespace

uint64_t RpcStats::Total(RpcMethod method) const {
  uint64_t n = 0;
  for (const auto& c : finished_[Index(method)]) n += c.load(std::memory_order_relaxed);
  return n;
}

uint64_t RpcStats::Errors(RpcMethod method) const {
  return Total(method) - finished_[Index(method)][0].load(std::memory_order_relaxed);
}

void RpcStats::AppendMetrics(std::string* out) const {
  MetricsText m(out);
  m.Family("rpc_finished_total", "counter",
           "PagePoolService calls finished, by method and status code.");
  for (int i = 0; i < kMethods; ++i) {
    for (int c = 0; c < kCodes; ++c) {
      uint64_t v = finished_[i][c].load(std::memory_order_relaxed);
      if (v == 0 && c != 0) continue;
      m.Sample("rpc_finished_total", {{"method", kMethodNames[i]}, {"code", kCodeNames[c]}}, v);
    }
  }
  m.Family("traffic_batches_total", "counter", "Traffic stream batches processed.");
  m.Sample("traffic_batches_total", {}, traffic_batches());
  m.Family("traffic_page_ops_total", "counter",
           "Page operations (allocate, recycle, return) carried by the Traffic stream.");
  m.Sample("traffic_page_ops_total", {}, traffic_page_ops());
  m.Family("traffic_errors_total", "counter", "Operations refused inside Traffic batches.");
  m.Sample("traffic_errors_total", {}, traffic_errors());
  m.Family("rpc_unknown_method_total", "counter",
           "Calls to a method no service has (answered UNIMPLEMENTED).");
  m.Sample("rpc_unknown_method_total", {}, unknown_method());
  m.Family("watch_events_dropped_total", "counter",
           "WatchEvents events not delivered because the watcher fell too far behind (its stream "
           "ended with RESOURCE_EXHAUSTED).");
  m.Sample("watch_events_dropped_total", {}, watch_events_dropped());
}

std::string RpcStats::Summary() const {
  std::string s;
  for (int i = 0; i < kMethods; ++i) {
    uint64_t total = Total(static_cast<RpcMethod>(i));
    if (total == 0) continue;
    absl::StrAppend(&s, "    ", std::string(kMethodNames[i]), " ", total);
    uint64_t errors = Errors(static_cast<RpcMethod>(i));
    if (errors > 0) absl::StrAppend(&s, " (", errors, " errors)");
    s.push_back('\n');
  }
  if (s.empty()) s = "    none\n";
  return s;
}

}  // namespace pagepool::server
