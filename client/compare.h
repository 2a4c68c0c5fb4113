// File: client/compare.h
//
// `ppctl compare`: the seed-002 comparison, reproduced by one command. The same recorded traffic
// is replayed against a pool of each destroy strategy (XARRAY, SCAN, NONE), each on a fresh device
// of the same settings; the traffic leaves `inflight` pages held by the client; the pool is
// destroyed, the device unbound, and the held pages are returned late (as the IPv4 defrag queue
// would, after the driver is gone). Side by side: destroy time, pages unmapped, frames scanned,
// tracking cost per page op (against NONE's), index bytes and violations.
//
// The traffic (CompareTrace) is a list of batches for one Traffic stream, window 1: pages to
// allocate, and pages to recycle (napi_local) or return, named by their position in the list of
// pages the client holds, so a trace replays the same way whatever frames the daemon hands out.
// A batch takes the pages at its positions (all < the number held before it, all distinct), then
// removes them from the list in decreasing position order, each by moving the last page into its
// place; the pages the answer allocates are appended in answer order. GenerateTrace makes a trace
// from a seed; FormatTrace / ParseTrace write and read it (--record / --replay):
//
//   ppctl-compare-trace v1
//   # comment
//   A 256 R 3 17 T 5 9        one batch a line: A allocate-count, R positions to recycle,
//   T 0 1 2                   T positions to return; each part optional, one at least
//
// Measurement: `repeat` rounds, each running the three strategies in an order rotated by one per
// round (round 0: xarray, scan, none; round 1: scan, none, xarray; ...), after `warmup` unmeasured
// replays on a NONE pool. Times (destroy, ns per page op) are reported as the best (minimum) of the
// rounds, and the median; counts are reported per round. Index bytes come from the daemon's
// Prometheus endpoint (pagepool_pool_index_bytes), read just before the destroy: no RPC answers it.
//
// Thread safety: RunCompare may be called from any thread; the other functions are pure.
#ifndef PAGEPOOL_CLIENT_COMPARE_H_
#define PAGEPOOL_CLIENT_COMPARE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/commands.h"

namespace pagepool::client {

// One batch of a trace.
struct TraceBatch {
  uint32_t allocate = 0;
  std::vector<uint32_t> recycle;       // positions in the held list (before this batch)
  std::vector<uint32_t> return_pages;  // positions in the held list (before this batch)
};

struct CompareTrace {
  std::vector<TraceBatch> batches;
  // Derived from the batches (ParseTrace and GenerateTrace fill them).
  uint64_t page_ops = 0;         // pages allocated + recycled + returned
  uint64_t held_at_end = 0;      // pages the client holds after the last batch
  uint64_t peak_held = 0;        // most pages held after any batch
  uint32_t max_batch_pages = 0;  // largest allocate, and largest recycle + return, of a batch
};

// How GenerateTrace shapes the traffic.
struct TraceParams {
  uint64_t seed = 1;
  uint32_t inflight = 65536;    // pages held at the end (left in flight for the destroy)
  uint32_t batch = 256;         // pages allocated per batch
  uint32_t batches = 512;       // churn batches
  uint32_t working_set = 4096;  // pages held during the churn
  uint32_t return_pct = 50;     // of the pages given back in the churn, percent returned (the
                                // others recycled napi_local)
};

// Pages the fill phase allocates at least, so that the alloc cache (128) and the ptr_ring (1024
// by default) are drained and the ring is empty at the destroy: every strategy then unmaps exactly
// the pages the client holds.
inline constexpr uint32_t kTraceMinFill = 128 + 1024 + 64;

// The traffic, from params.seed alone (the same on every platform): a churn phase of
// params.batches batches (allocate `batch`, give back what passes `working_set`, each page
// returned with probability return_pct % and recycled otherwise, at random positions), a drain
// (everything given back, `batch` pages a batch), then a fill: max(inflight, kTraceMinFill) pages
// allocated, `batch` a batch, and the pages above `inflight` returned. INVALID_ARGUMENT for a zero
// batch, a return_pct above 100, or a working set below the batch.
absl::StatusOr<CompareTrace> GenerateTrace(const TraceParams& params);

// The trace file (the format above).
std::string FormatTrace(const CompareTrace& trace);
// Parses a trace file; INVALID_ARGUMENT naming `name` and the line for anything malformed (no
// header, an unknown token, a position not below the pages held, a position named twice, an empty
// batch, no batch at all).
absl::StatusOr<CompareTrace> ParseTrace(const std::string& text, const std::string& name);

// The value of pagepool_pool_index_bytes{pool_id="<pool_id>",...} in a Prometheus text page;
// nullopt when there is no such sample.
std::optional<uint64_t> ParseIndexBytes(const std::string& metrics_text, uint64_t pool_id);

// The metrics address for `target` when --metrics is not given: its host, port 9464 (pagepoold's
// default --metrics-listen); "" when the target has no host:port form.
std::string DefaultMetricsAddress(const std::string& grpc_target);

// What to do about a refusal of the daemon: the flag to raise or lower ("" when none applies).
std::string CompareLimitHint(const absl::Status& status);

struct CompareOptions {
  // Device settings; empty / unset: the daemon's defaults.
  std::string iommu_mode;  // strict, lazy, passthrough
  bool no_free_empty_tables = false;
  uint32_t repeat = 3;  // measured rounds
  uint32_t warmup = 1;  // unmeasured replays first
  // host:port of pagepoold's /metrics; "off": no index bytes.
  std::string metrics = "off";
  // Called with one line per step (nullptr: quiet).
  std::function<void(const std::string&)> progress;
};

// One strategy in one round.
struct CompareRound {
  uint32_t round = 0;
  uint64_t device_id = 0;
  uint64_t pool_id = 0;
  // Traffic phase.
  uint64_t batches = 0;
  uint64_t page_ops = 0;
  uint64_t traffic_ns = 0;
  double ns_per_page_op = 0;
  // The pool's stats before the destroy (the same traffic gives the same stats).
  uint64_t alloc_fast = 0, alloc_slow = 0, recycle_cached = 0, recycle_ring = 0;
  uint64_t recycle_released = 0;  // recycle_ring_full + recycle_released_refcnt
  uint64_t inflight = 0;          // the pool's inflight before the destroy (held + its cache)
  int64_t index_bytes = -1;       // -1: not known (no metrics)
  // DestroyPool.
  uint64_t inflight_at_destroy = 0;
  uint64_t destroy_ns = 0;
  uint64_t pages_unmapped = 0;
  uint64_t frames_scanned = 0;
  // GetDomain after the unbind and the late returns.
  uint64_t late_returned = 0;  // pages returned after the unbind
  uint64_t violations = 0;
  uint64_t live_at_unbind = 0;
  uint64_t call_after_unbind = 0;
};

struct CompareRow {
  std::string strategy;  // "xarray", "scan", "none"
  std::vector<CompareRound> rounds;
  // Over the rounds.
  uint64_t destroy_ns_best = 0, destroy_ns_median = 0;
  double ns_per_op_best = 0, ns_per_op_median = 0;
  // Against NONE's (best against best, median against median).
  double ratio_best = 0, ratio_median = 0;
  double extra_ns_best = 0, extra_ns_median = 0;
};

struct CompareResult {
  std::string iommu_mode;  // of the devices, as the daemon made them
  bool free_empty_tables = true;
  std::string traffic;  // where the trace came from: "seed 1" or "replay FILE"
  uint64_t trace_batches = 0;
  uint64_t trace_page_ops = 0;
  uint64_t inflight = 0;  // pages left in flight at the destroy
  uint32_t repeat = 0;
  uint32_t warmup = 0;
  bool index_bytes_known = false;
  std::vector<CompareRow> rows;  // xarray, scan, none

  // The aligned table (best of the rounds) with a header and notes.
  std::string Table() const;
  // Everything, rounds included.
  std::string ToJson() const;
  // Violations under XARRAY or SCAN (which must have none).
  bool TrackedViolations() const;
};

// Fills the summary fields of `rows` (best, median, ratios against the "none" row).
void SummarizeCompareRows(std::vector<CompareRow>* rows);

// Runs the comparison. The status of the first call refused (with what to change appended when a
// limit was hit); a round that fails unbinds its device and returns its pages first.
absl::StatusOr<CompareResult> RunCompare(Client& client, const CompareTrace& trace,
                                         const std::string& traffic, const CompareOptions& options);

// The subcommand's arguments.
struct CompareArgs {
  TraceParams trace;
  std::string record_path;  // --record: write the trace here
  std::string replay_path;  // --replay: read the trace from here
  CompareOptions options;
  std::string metrics;  // --metrics HOST:PORT|off; "": DefaultMetricsAddress(target)
  std::string target;   // the global --target (set by the command line)
};

// `ppctl compare`: the table (or --json). kExitViolations when XARRAY or SCAN saw violations,
// kExitRefused when the daemon refused a call or a file failed, kExitUsage for bad arguments.
int RunCompareCommand(CommandContext& ctx, const CompareArgs& args);

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_COMPARE_H_
