// File: server/event_hub.h
//
// Fan-out of device and pool notifications (WatchEvents), like the netlink page-pool
// add/change/del notifications. The Runtime publishes; each WatchEvents call subscribes a sink.
// Events are numbered 1, 2, ... (seq) in the order Publish was called and stamped with the wall
// time; every sink sees them in that order.
//
// Thread safety: every method may be called from any thread. Lock order: a publisher may hold its
// own locks while calling Publish; the hub calls sinks under the hub's mutex, so a sink must never
// call back into the hub or the Runtime from OnEvent/OnClose.
#ifndef PAGEPOOL_SERVER_EVENT_HUB_H_
#define PAGEPOOL_SERVER_EVENT_HUB_H_

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "base/mutex.h"
#include "pagepool/v1/pagepool.pb.h"

namespace pagepool::server {

// A receiver of events.
class EventSink {
 public:
  virtual ~EventSink() = default;
  // One event. Must not block. Context: called under the hub's mutex.
  virtual void OnEvent(const pagepool::v1::Event& event) = 0;
  // The hub closed (daemon shutdown): no more events. Context: called under the hub's mutex.
  virtual void OnClose() = 0;
};

class EventHub {
 public:
  // Stamps seq and time_ns, then hands the event to every sink. No-op once closed.
  void Publish(pagepool::v1::Event event);
  // Adds a sink; false (and the sink is not added) when the hub is closed.
  bool Subscribe(EventSink* sink);
  // Removes a sink. After return the hub never calls it again.
  void Unsubscribe(EventSink* sink);
  // Calls OnClose on every sink and refuses further subscriptions and events.
  void Close();

 private:
  mutable base::Mutex mu_;
  std::vector<EventSink*> sinks_ ABSL_GUARDED_BY(mu_);
  uint64_t seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_EVENT_HUB_H_
