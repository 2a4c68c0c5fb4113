// File: client/traffic_report.h
//
// The result of one traffic run (client/traffic.h) and its renderings: the JSON result file
// (`ppctl traffic --out`, which `ppctl report` and `--html` draw: client/report_page.h) and the
// summary text ppctl prints. Rendering only: nothing here talks to the daemon.
//
// Thread safety: plain values; const methods may run concurrently.
#ifndef PAGEPOOL_CLIENT_TRAFFIC_REPORT_H_
#define PAGEPOOL_CLIENT_TRAFFIC_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

namespace pagepool::client {

// One sample of a run (client/traffic.h says how often).
struct TrafficSample {
  double t_s = 0;               // seconds since the streams started
  double page_ops_per_sec = 0;  // over the interval ending at t_s
  double rpc_p50_us = 0;        // batch latency over the interval (0: no batch answered)
  double rpc_p99_us = 0;
  int64_t held = 0;          // pages the client held at t_s
  uint64_t inflight = 0;     // the run's pools' inflight (GetPool; 0 once deleted)
  uint64_t table_bytes = 0;  // the run's devices' I/O page-table bytes (GetDomain)
  uint64_t errors = 0;       // unexpected refusals so far
};

// destroy-under-traffic: the destroy (DestroyPool) or the unbind (UnbindDevice) of the run.
struct TrafficEvent {
  std::string kind;        // "destroy" or "unbind"
  double t_s = 0;          // when it was asked for, seconds since the streams started
  double duration_ms = 0;  // destroy: the daemon's duration_ns; unbind: the call's time
  uint64_t pages_unmapped = 0;
  uint64_t inflight_at_destroy = 0;
};

struct TrafficResult {
  std::string pattern;
  std::string strategy;    // of the pool: "xarray", "scan", "none"
  std::string iommu_mode;  // of the device: "strict", "lazy", "passthrough"
  uint32_t streams = 0;
  uint32_t batch = 0;
  uint32_t window = 1;     // batches in flight per stream
  uint32_t frag_size = 0;  // fragment mode: bytes per fragment (0: whole pages)
  double duration_s = 0;   // measured
  uint64_t batches = 0;    // batches (or unary calls) answered
  uint64_t page_ops = 0;   // pages (fragments, in fragment mode) allocated + recycled + returned
  uint64_t frag_ops = 0;   // of those, fragments allocated, recycled and returned
  uint64_t pages_from_frags = 0;  // pages whose last fragment reference a give-back dropped
  uint64_t frag_pages = 0;        // the pools' pages split into fragments at the end (GetPool)
  uint64_t frag_refs = 0;         // the pools' fragment references held at the end
  double page_ops_per_sec = 0;
  double rpc_p50_us = 0;  // per batch / per unary call, client-side
  double rpc_p99_us = 0;
  uint64_t errors = 0;             // refused operations that the pattern did not expect
  uint64_t expected_refusals = 0;  // destroy-under-traffic: refusals after the destroy
  uint64_t violations = 0;         // GetDomain violations.total at the end: the device, plus
                                   // the fresh one of destroy-under-traffic --unbind
  uint64_t inflight = 0;           // the pools' inflight at the end, before the run's own
                                   // destroy (0 once a pool is deleted)
  int64_t held_at_end = 0;         // pages the client still held when the streams ended
                                   // (0 unless leak: every other pattern gives all back)
  uint64_t held_at_destroy = 0;    // destroy-under-traffic: pages the client held at the destroy
  uint64_t pages_unmapped_at_destroy = 0;
  uint64_t device_id = 0;
  uint64_t pool_id = 0;
  uint64_t fresh_device_id = 0;  // destroy-under-traffic: where traffic went on (0: none)
  uint64_t fresh_pool_id = 0;
  std::string first_error;
  std::vector<TrafficEvent> events;
  std::vector<TrafficSample> timeline;

  // {"pattern": ..., "strategy": ..., "iommu_mode": ..., "window": ..., "page_ops_per_sec": ...,
  //  "rpc_p50_us": ..., "rpc_p99_us": ..., "errors": ..., "violations": ..., ...,
  //  "events": [{"kind": "destroy", "t_s": ..., "duration_ms": ..., "pages_unmapped": ...,
  //              "inflight_at_destroy": ...}],
  //  "timeline": [{"t_s": ..., "page_ops_per_sec": ..., "rpc_p50_us": ..., "rpc_p99_us": ...,
  //                "held": ..., "inflight": ..., "table_bytes": ..., "errors": ...}, ...]}
  std::string ToJson() const;
  // A few human-readable lines.
  std::string Summary() const;
};

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_TRAFFIC_REPORT_H_
