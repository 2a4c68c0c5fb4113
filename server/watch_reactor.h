// File: server/watch_reactor.h
//
// WatchReactor: one WatchEvents stream. It subscribes to the Runtime's event hub (after the
// include_existing replay), queues the events that match the request's type filter and writes them
// one at a time, in hub order, until the client cancels (CANCELLED) or the daemon shuts down (OK).
//
// A watcher that falls behind: the queue holds at most `max_queued` events (--max-watch-queue,
// 65536 by default). The event that would pass that limit ends the stream: the queued events are
// dropped with it, nothing more is queued, and once the write in progress (if any) completes the
// stream finishes with RESOURCE_EXHAUSTED naming how many events were lost and the seq of the first
// ("WatchEvents: this watcher fell 65536 events behind (--max-watch-queue) and lost 65537 events,
// from seq 9 on; watch again with include_existing to resync"). Events are never skipped silently:
// a watcher sees every event in order, or learns that it did not. The lost events are counted in
// RpcStats (pagepool_watch_events_dropped_total).
//
// What the queue sees is how fast gRPC completes writes, not how fast the client reads: gRPC 1.51
// completes a stream's writes while the peer's flow-control window is shut, buffering them in the
// transport. So the queue fills when events come faster than writes complete (a burst, such as
// the include_existing replay, or a saturated transport); a client that stopped reading and
// answering altogether is ended by the daemon's keepalive ping (--keepalive-ms), which closes its
// connection and frees what gRPC buffered for it.
//
// Thread safety: the hub calls OnEvent/OnClose under its mutex, gRPC calls the rest from its
// callback threads; the queue and the stream's state are under mu_. The reactor deletes itself in
// OnDone, after unsubscribing.
#ifndef PAGEPOOL_SERVER_WATCH_REACTOR_H_
#define PAGEPOOL_SERVER_WATCH_REACTOR_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "base/mutex.h"
#include "pagepool/v1/pagepool.pb.h"
#include "server/call_guard.h"
#include "server/event_hub.h"
#include "server/rpc_stats.h"
#include "server/runtime.h"
#include <grpcpp/grpcpp.h>

namespace pagepool::server {

class WatchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer>, public EventSink {
 public:
  // Starts the stream: INVALID_ARGUMENT at once for a type filter with an invalid value,
  // UNAVAILABLE when the hub is closed, else subscribed. `slot` is the stream's place
  // (--max-streams), released when the reactor is deleted.
  // REQUIRES: max_queued >= 1; runtime and stats outlive the stream.
  WatchReactor(Runtime* runtime, RpcStats* stats, const pagepool::v1::WatchEventsRequest& req,
               uint32_t max_queued, StreamLimiter::Slot slot);

  void OnEvent(const pagepool::v1::Event& event) override;
  void OnClose() override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Finishes with `status` unless already finishing; counts the call.
  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The RESOURCE_EXHAUSTED that ends a watcher that fell behind.
  absl::Status OverflowStatusLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Runtime* const runtime_;
  RpcStats* const stats_;
  const uint32_t max_queued_;
  StreamLimiter::Slot slot_;
  std::vector<int> types_;
  base::Mutex mu_;
  std::deque<pagepool::v1::Event> queue_ ABSL_GUARDED_BY(mu_);
  pagepool::v1::Event current_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  // Set by the event that passed the queue limit; lost_ counts the events dropped since.
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t lost_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t first_lost_seq_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_WATCH_REACTOR_H_
