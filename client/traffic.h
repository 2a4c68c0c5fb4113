// File: client/traffic.h
//
// RunTraffic: traffic patterns driven over the Traffic stream, one bidirectional stream per
// --streams, each on its own thread, with up to `window` batches in flight per stream (window 1:
// send, wait for the answer, send the next; window N: N batches sent before the first answer is
// read, then one sent per answer read; a page sent back leaves the client's count when sent, a
// page allocated joins it when its answer is read):
//   steady                 allocate a batch, recycle the pages of the last answer (napi_local).
//   burst                  allocate 8 batches without giving anything back, then recycle them all.
//   hold                   allocate batches and keep each page for hold_seconds, then Return it
//                          (like the IPv4 defrag queue); at most max_held pages per stream,
//                          outstanding batches included.
//   leak                   allocate batches and never give them back (max_held pages per stream);
//                          the pool is left as it is, pages in flight.
//   destroy-under-traffic  runs for the whole duration_s. First half: steady traffic with
//                          `hold_batches` batches held per stream. At half time the pool is
//                          destroyed (or, with unbind, the device unbound) while the pages are
//                          held and the streams keep allocating (refused once the pool is gone:
//                          expected_refusals); the destroy is an event of the result. Then each
//                          stream returns every page it holds to the destroyed pool (refusals
//                          there are expected too), and steady traffic goes on to a fresh pool
//                          (same device and settings; after unbind a fresh device and pool with
//                          the same settings) until the duration ends. The violations reported
//                          are those of the original device plus the fresh one; the run destroys
//                          the fresh pool at the end (unless keep).
//   unary                  (for comparison) unary Allocate then Return of `batch` pages; the
//                          window does not apply.
// Unless pool_id is given, the run creates its own device and pool first (and destroys the pool at
// the end, except for leak and keep). With frag_size every pattern works on fragments instead of
// pages: what it allocates, holds and gives back are fragments (a page leaves flight when its last
// fragment comes back), and the result counts fragment operations and the pages freed by their
// last fragment.
//
// Sampling: the calling thread samples every 100 ms for the first 60 s of a run, then every
// second (a one-hour run keeps about 4,200 samples): page ops/s and the batch latency p50/p99
// over the interval (per-stream log-bucket histograms, within 3.2%; the run's overall p50/p99
// are exact), pages held by the client, and from the daemon (GetPool, GetDomain) the pools'
// inflight and the devices' page-table bytes. The result and its JSON and text renderings are in
// client/traffic_report.h; the stream threads in client/internal/traffic_stream.h.
//
// Thread safety: RunTraffic may be called from any thread; it starts and joins its own threads.
#ifndef PAGEPOOL_CLIENT_TRAFFIC_H_
#define PAGEPOOL_CLIENT_TRAFFIC_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/traffic_report.h"

namespace pagepool::client {

// Batches in flight per stream at most (--window).
inline constexpr uint32_t kMaxTrafficWindow = 256;

struct TrafficOptions {
  std::string pattern = "steady";
  double duration_s = 5;
  uint32_t streams = 2;
  uint32_t batch = 64;
  uint32_t window = 1;  // batches in flight per stream, 1..kMaxTrafficWindow
  // Fragment mode: batches allocate `batch` fragments of this many bytes (TrafficRequest.frag_size;
  // unary: Allocate with frag_size) and give them back as fragments; 0: whole pages.
  uint32_t frag_size = 0;
  uint64_t pool_id = 0;  // 0: create a device and a pool for the run
  // For the device/pool the run creates.
  pagepool::v1::IommuMode iommu_mode = pagepool::v1::IOMMU_MODE_STRICT;
  pagepool::v1::Strategy strategy = pagepool::v1::STRATEGY_XARRAY;
  uint32_t order = 0;
  bool napi_local = true;     // recycle directly into the alloc cache
  double hold_s = 2;          // hold: how long pages are kept
  uint32_t max_held = 16384;  // hold, leak: pages held per stream at most
  uint32_t hold_batches = 4;  // destroy-under-traffic: batches held per stream
  bool unbind = false;        // destroy-under-traffic: UnbindDevice instead of DestroyPool
  bool keep = false;          // keep the pool the run created
  // Called about once a second with a one-line progress report (nullptr: none).
  std::function<void(const std::string&)> progress;
};

// Runs one pattern. INVALID_ARGUMENT for an unknown pattern, a zero batch/stream count, more than
// 4096 streams, a window outside 1..kMaxTrafficWindow or a duration that is not positive and
// finite; RESOURCE_EXHAUSTED when the streams' threads cannot be started; the status of a failed
// setup call (CreateDevice, CreatePool, the destroy, the fresh pool) otherwise. Refusals inside
// the run are counted in the result, not returned. When a call of the run (a Traffic stream, a
// unary call, the sampler's GetPool/GetDomain) ends with UNAVAILABLE the daemon is gone: the run
// stops within about 20 ms plus the time its streams take to see their connection closed, and
// returns UNAVAILABLE saying when, which call saw it, and what was done until then (page ops,
// batches, pool and device, pages the client still held).
absl::StatusOr<TrafficResult> RunTraffic(Client& client, const TrafficOptions& options);

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_TRAFFIC_H_
