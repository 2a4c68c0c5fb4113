// File: client/traffic.h
//
// RunTraffic: traffic patterns driven over the Traffic stream (one bidirectional stream per
// --streams, each on its own thread, one batch in flight per stream: send, wait for the answer,
// send the next):
//   steady                 allocate a batch, recycle the previous batch (napi_local).
//   burst                  allocate 8 batches without giving anything back, then recycle them all.
//   hold                   allocate batches and keep each page for hold_seconds, then Return it
//                          (like the IPv4 defrag queue); at most max_held pages per stream.
//   leak                   allocate batches and never give them back (max_held pages per stream);
//                          the pool is left as it is, pages in flight.
//   destroy-under-traffic  steady traffic with `hold_batches` batches held per stream for half of
//                          duration_s; then the pool is destroyed (or the device unbound, with
//                          unbind) while the pages are held and the streams keep allocating
//                          (refused once the pool is gone: expected_refusals); then the streams
//                          return every page they hold and the run ends. Checks via GetDomain
//                          that the device saw zero violations.
//   unary                  (for comparison) unary Allocate then Return of `batch` pages.
// Unless pool_id is given, the run creates its own device and pool first (and destroys the pool at
// the end, except for leak). The result and its JSON, HTML and text renderings are in
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

struct TrafficOptions {
  std::string pattern = "steady";
  double duration_s = 5;
  uint32_t streams = 2;
  uint32_t batch = 64;
  uint64_t pool_id = 0;              // 0: create a device and a pool for the run
  // For the device/pool the run creates.
  pagepool::v1::IommuMode iommu_mode = pagepool::v1::IOMMU_MODE_STRICT;
  pagepool::v1::Strategy strategy = pagepool::v1::STRATEGY_XARRAY;
  uint32_t order = 0;
  bool napi_local = true;            // recycle directly into the alloc cache
  double hold_s = 2;                 // hold: how long pages are kept
  uint32_t max_held = 16384;         // hold, leak: pages held per stream at most
  uint32_t hold_batches = 4;         // destroy-under-traffic: batches held per stream
  bool unbind = false;               // destroy-under-traffic: UnbindDevice instead of DestroyPool
  bool keep = false;                 // keep the pool the run created
  // Called about once a second with a one-line progress report (nullptr: none).
  std::function<void(const std::string&)> progress;
};

// Runs one pattern. INVALID_ARGUMENT for an unknown pattern, a zero batch/stream count, more than
// 4096 streams or a duration that is not positive and finite; RESOURCE_EXHAUSTED when the streams'
// threads cannot be started; the status
// of a failed setup call (CreateDevice, CreatePool, the destroy) otherwise. Refusals inside the run
// are counted in the result, not returned.
absl::StatusOr<TrafficResult> RunTraffic(Client& client, const TrafficOptions& options);

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_TRAFFIC_H_
