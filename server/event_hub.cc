// File: server/event_hub.cc
#include "server/event_hub.h"

#include <algorithm>
#include <chrono>

namespace pagepool::server {

void EventHub::Publish(pagepool::v1::Event event) {
  base::MutexLock l(&mu_);
  if (closed_) return;
  event.set_seq(++seq_);
  event.set_time_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count());
  for (EventSink* s : sinks_) s->OnEvent(event);
}

bool EventHub::Subscribe(EventSink* sink) {
  base::MutexLock l(&mu_);
  if (closed_) return false;
  sinks_.push_back(sink);
  return true;
}

void EventHub::Unsubscribe(EventSink* sink) {
  base::MutexLock l(&mu_);
  sinks_.erase(std::remove(sinks_.begin(), sinks_.end(), sink), sinks_.end());
}

void EventHub::Close() {
  base::MutexLock l(&mu_);
  if (closed_) return;
  closed_ = true;
  for (EventSink* s : sinks_) s->OnClose();
  sinks_.clear();
}

}  // namespace pagepool::server
