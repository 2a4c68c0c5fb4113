// File: client/traffic_report.h
//
// The result of one traffic run (client/traffic.h) and its renderings: the JSON result file
// (`ppctl traffic --out`), the self-contained HTML page (`--html`) and the summary text ppctl
// prints. Rendering only: nothing here talks to the daemon.
//
// Thread safety: plain values; const methods may run concurrently.
#ifndef PAGEPOOL_CLIENT_TRAFFIC_REPORT_H_
#define PAGEPOOL_CLIENT_TRAFFIC_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

namespace pagepool::client {

// One sample of a run, taken about once a second.
struct TrafficSample {
  double t_s = 0;                    // seconds since the streams started
  double page_ops_per_sec = 0;       // over the interval ending at t_s
  int64_t held = 0;                  // pages the client held at t_s
  uint64_t errors = 0;               // unexpected refusals so far
};

struct TrafficResult {
  std::string pattern;
  uint32_t streams = 0;
  uint32_t batch = 0;
  double duration_s = 0;             // measured
  uint64_t batches = 0;              // batches (or unary calls) answered
  uint64_t page_ops = 0;             // pages allocated + recycled + returned
  double page_ops_per_sec = 0;
  double rpc_p50_us = 0;             // per batch / per unary call, client-side
  double rpc_p99_us = 0;
  uint64_t errors = 0;               // refused operations that the pattern did not expect
  uint64_t expected_refusals = 0;    // destroy-under-traffic: refusals after the destroy
  uint64_t violations = 0;           // GetDomain violations.total of the device at the end
  uint64_t inflight = 0;             // pool inflight at the end (0 once the pool is deleted)
  uint64_t held_at_destroy = 0;      // destroy-under-traffic: pages the client held at the destroy
  uint64_t pages_unmapped_at_destroy = 0;
  uint64_t device_id = 0;
  uint64_t pool_id = 0;
  std::string first_error;
  std::vector<TrafficSample> timeline;

  // {"page_ops_per_sec": ..., "rpc_p50_us": ..., "rpc_p99_us": ..., "errors": ..., ...,
  //  "timeline": [{"t_s": ..., "page_ops_per_sec": ..., "held": ..., "errors": ...}, ...]}
  std::string ToJson() const;
  // A self-contained HTML report: the figures and SVG charts of ops/s and held pages over time.
  std::string ToHtml() const;
  // A few human-readable lines.
  std::string Summary() const;
};

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_TRAFFIC_REPORT_H_
