// File: client/internal/traffic_stream.h
//
// The insides of RunTraffic (client/traffic.h): the state its stream threads share, and
// StreamWorker, which drives one Traffic stream (or, for "unary", unary calls) through one
// pattern until told to stop, with up to options.window batches in flight: Send writes a batch and
// notes its send time; ReceiveOne reads the oldest answer (answers come in order). A page the
// client sends back leaves `held` when it is sent; a page allocated joins it when its answer is
// read. Every pattern reads all outstanding answers into what it holds before giving pages back,
// so no page is lost or given back twice. One thread writes and reads alternately: at most
// `window` requests and answers are buffered in the transport, which the window's cap keeps small.
#ifndef PAGEPOOL_CLIENT_INTERNAL_TRAFFIC_STREAM_H_
#define PAGEPOOL_CLIENT_INTERNAL_TRAFFIC_STREAM_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "base/mutex.h"
#include "client/client.h"
#include "client/internal/latency_histogram.h"
#include "client/traffic.h"

namespace pagepool::client::internal {

// A page or a fragment (fragment mode) that a stream holds: what it gives back.
struct HeldItem {
  pagepool::v1::PageHandle page;
  uint32_t frag_offset = 0;
  uint32_t frag_size = 0;  // 0: a whole page
};

// State shared by the stream threads of one run and the thread that runs it.
//
// Thread safety: any thread. The flags and counters are atomics; the messages are under mu.
struct TrafficShared {
  // Counts `n` unexpected refusals; keeps `message` if it is the run's first.
  void CountErrors(uint64_t n, absl::string_view message) ABSL_LOCKS_EXCLUDED(mu);
  // Keeps `message` if no stream broke before.
  void NoteBrokenStream(absl::string_view message) ABSL_LOCKS_EXCLUDED(mu);
  // A call found the daemon gone (UNAVAILABLE): sets daemon_lost and stop, so every stream and
  // the sampler end now instead of running out the duration; keeps `message` if it is the first.
  void NoteDaemonLost(absl::string_view message) ABSL_LOCKS_EXCLUDED(mu);

  std::atomic<bool> stop{false};
  std::atomic<bool> daemon_lost{false};
  // destroy-under-traffic: the destroy was requested; refusals on the original pool are expected
  // from now on.
  std::atomic<bool> destroying{false};
  // ... and has returned: give everything back to the original pool, then wait for fresh_ready.
  std::atomic<bool> destroyed{false};
  // ... and the fresh pool exists (fresh_pool_id; 0 when it could not be made: the streams end).
  std::atomic<bool> fresh_ready{false};
  std::atomic<uint64_t> fresh_pool_id{0};
  std::atomic<uint64_t> batches{0};
  std::atomic<uint64_t> page_ops{0};
  std::atomic<uint64_t> frag_ops{0};          // fragments allocated and given back
  std::atomic<uint64_t> pages_from_frags{0};  // pages freed by their last fragment
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> expected{0};
  std::atomic<int64_t> held{0};  // pages the client holds now, all streams

  base::Mutex mu;
  std::string first_error ABSL_GUARDED_BY(mu);
  std::string broken_stream ABSL_GUARDED_BY(mu);  // why a stream ended early
  std::string lost_reason ABSL_GUARDED_BY(mu);    // the first call that found the daemon gone
};

// Drives one stream through options.pattern until shared.stop, then gives back what the pattern
// holds (leak: nothing). A stream (or unary call) ended with UNAVAILABLE calls
// shared.NoteDaemonLost. destroy-under-traffic: holds batches until shared.destroyed, returns them
// to the destroyed pool, then runs steady on shared.fresh_pool_id until shared.stop.
//
// Thread safety: Run on one thread; latencies() after Run has returned; histogram() from any
// thread at any time (LatencyHistogram::AddTo).
class StreamWorker {
 public:
  // `client`, `options` and `shared` must outlive the worker.
  StreamWorker(Client& client, const TrafficOptions& options, uint64_t pool_id,
               TrafficShared& shared);

  void Run();

  // Client-side latency of each batch (or unary call), in microseconds.
  std::vector<float>& latencies() { return latencies_us_; }
  // The same latencies, as a histogram the sampler reads while the stream runs.
  const LatencyHistogram& histogram() const { return histogram_; }

 private:
  using Clock = std::chrono::steady_clock;

  // Writes req_ (pool, seq, napi_local filled here) and notes its send time; the pages it recycles
  // or returns leave `held`. False when the stream broke.
  bool Send();
  // REQUIRES: a batch is outstanding.
  // Reads the oldest outstanding answer into resp_ and counts it (latency, page ops, errors; its
  // allocated pages join `held`). False when the stream broke.
  bool ReceiveOne();
  // Send; then, when `window` batches are outstanding, ReceiveOne. When nothing was received,
  // resp_ is cleared (no pages to take).
  bool Exchange();
  // Receives every outstanding answer, appending the pages allocated to `into`.
  bool Drain(std::vector<HeldItem>* into);
  // Drains into `pages`, then gives them back in batches (recycle, or return when `ret`), clearing
  // it; ends with nothing outstanding.
  bool GiveBack(std::vector<HeldItem>* pages, bool ret);
  bool RunPattern();
  // The patterns (client/traffic.h); false when the stream broke.
  bool Steady();
  bool Burst();
  bool Hold();
  bool Leak();
  bool DestroyUnderTraffic();
  // destroy-under-traffic, before the destroy returns: hold_batches batches held, the oldest
  // recycled; every page held (outstanding answers included) is in `held` when it returns true.
  bool HoldUntilDestroyed(std::vector<HeldItem>* held);
  void RunUnary();
  // One unary Allocate then Return.
  void UnaryRound(pagepool::v1::ReturnRequest* ret);
  void CountLatency(Clock::time_point sent);

  Client& client_;
  const TrafficOptions& o_;
  const uint64_t original_pool_id_;
  uint64_t pool_id_;  // the pool the batches go to (destroy-under-traffic: then the fresh one)
  TrafficShared& sh_;
  grpc::ClientContext ctx_;
  std::unique_ptr<
      grpc::ClientReaderWriter<pagepool::v1::TrafficRequest, pagepool::v1::TrafficResponse>>
      rw_;
  pagepool::v1::TrafficRequest req_;
  pagepool::v1::TrafficResponse resp_;
  uint64_t seq_ = 0;
  std::deque<Clock::time_point> sent_;  // send times of the outstanding batches, oldest first
  std::vector<float> latencies_us_;
  LatencyHistogram histogram_;
};

}  // namespace pagepool::client::internal

#endif  // PAGEPOOL_CLIENT_INTERNAL_TRAFFIC_STREAM_H_
