// File: client/internal/traffic_stream.h
//
// The insides of RunTraffic (client/traffic.h): the state its stream threads share, and
// StreamWorker, which drives one Traffic stream (or, for "unary", unary calls) through one
// pattern until told to stop. One batch is in flight per stream: send, wait for the answer, send
// the next.
#ifndef PAGEPOOL_CLIENT_INTERNAL_TRAFFIC_STREAM_H_
#define PAGEPOOL_CLIENT_INTERNAL_TRAFFIC_STREAM_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "base/mutex.h"
#include "client/client.h"
#include "client/traffic.h"

namespace pagepool::client::internal {

// State shared by the stream threads of one run and the thread that runs it.
//
// Thread safety: any thread. The flags and counters are atomics; the messages are under mu.
struct TrafficShared {
  // Counts `n` unexpected refusals; keeps `message` if it is the run's first.
  void CountErrors(uint64_t n, absl::string_view message) ABSL_LOCKS_EXCLUDED(mu);
  // Keeps `message` if no stream broke before.
  void NoteBrokenStream(absl::string_view message) ABSL_LOCKS_EXCLUDED(mu);

  std::atomic<bool> stop{false};
  std::atomic<bool> destroying{false};  // destroy-under-traffic: the destroy was requested
  std::atomic<bool> destroyed{false};   // ... and has returned: give everything back
  std::atomic<uint64_t> batches{0};
  std::atomic<uint64_t> page_ops{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> expected{0};
  std::atomic<int64_t> held{0};  // pages the client holds now, all streams

  base::Mutex mu;
  std::string first_error ABSL_GUARDED_BY(mu);
  std::string broken_stream ABSL_GUARDED_BY(mu);  // why a stream ended early
};

// Drives one stream through options.pattern until shared.stop (or, for destroy-under-traffic,
// shared.destroyed), then gives back what the pattern holds (leak: nothing).
//
// Thread safety: Run on one thread; latencies() after Run has returned.
class StreamWorker {
 public:
  // `client`, `options` and `shared` must outlive the worker.
  StreamWorker(Client& client, const TrafficOptions& options, uint64_t pool_id,
               TrafficShared& shared);

  void Run();

  // Client-side latency of each batch (or unary call), in microseconds.
  std::vector<float>& latencies() { return latencies_us_; }

 private:
  // Sends req_ (pool, seq, napi_local filled here), waits for its answer in resp_, counts it.
  bool Exchange();
  // Gives `pages` back in batches (recycle, or return when `ret`), clearing it.
  bool GiveBack(std::vector<pagepool::v1::PageHandle>* pages, bool ret);
  bool RunPattern();
  // The patterns (client/traffic.h); false when the stream broke.
  bool Steady();
  bool Burst();
  bool Hold();
  bool Leak();
  bool DestroyUnderTraffic();
  void RunUnary();
  // One unary Allocate then Return.
  void UnaryRound(pagepool::v1::ReturnRequest* ret);

  Client& client_;
  const TrafficOptions& o_;
  const uint64_t pool_id_;
  TrafficShared& sh_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pagepool::v1::TrafficRequest,
                                           pagepool::v1::TrafficResponse>>
      rw_;
  pagepool::v1::TrafficRequest req_;
  pagepool::v1::TrafficResponse resp_;
  uint64_t seq_ = 0;
  std::vector<float> latencies_us_;
};

}  // namespace pagepool::client::internal

#endif  // PAGEPOOL_CLIENT_INTERNAL_TRAFFIC_STREAM_H_
