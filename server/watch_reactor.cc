// File: server/watch_reactor.cc
#include "server/watch_reactor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/status_convert.h"
#include <grpcpp/impl/codegen/proto_utils.h>

namespace pagepool::server {
namespace v1 = ::pagepool::v1;

WatchReactor::WatchReactor(Runtime* runtime, RpcStats* stats, const v1::WatchEventsRequest& req,
                           uint32_t max_queued, StreamLimiter::Slot slot)
    : runtime_(runtime), stats_(stats), max_queued_(max_queued), slot_(std::move(slot)) {
  for (int t : req.types()) {
    if (!v1::EventType_IsValid(t) || t == v1::EVENT_TYPE_UNSPECIFIED) {
      base::MutexLock l(&mu_);
      FinishLocked(absl::InvalidArgumentError(
          absl::StrCat("WatchEvents: types: ", t, " is not a valid EventType (1..6)")));
      return;
    }
    types_.push_back(t);
  }
  // Subscribe last: events may arrive (on another thread) as soon as it returns.
  if (!runtime_->Subscribe(this, req.include_existing())) {
    base::MutexLock l(&mu_);
    FinishLocked(absl::UnavailableError("WatchEvents: the daemon is shutting down"));
  }
}

void WatchReactor::OnEvent(const v1::Event& event) {
  if (!types_.empty() &&
      std::find(types_.begin(), types_.end(), static_cast<int>(event.type())) == types_.end()) {
    return;
  }
  base::MutexLock l(&mu_);
  if (finishing_) return;
  if (overflowed_) {  // waiting for the write in progress before finishing
    ++lost_;
    return;
  }
  if (queue_.size() >= max_queued_) {
    overflowed_ = true;
    first_lost_seq_ = queue_.front().seq();
    lost_ = queue_.size() + 1;
    queue_.clear();
    if (!writing_) FinishLocked(OverflowStatusLocked());
    return;
  }
  queue_.push_back(event);
  if (!writing_) WriteNextLocked();
}

void WatchReactor::OnClose() {
  base::MutexLock l(&mu_);
  closed_ = true;
  if (!writing_) FinishLocked(overflowed_ ? OverflowStatusLocked() : absl::OkStatus());
}

void WatchReactor::OnWriteDone(bool ok) {
  base::MutexLock l(&mu_);
  writing_ = false;
  if (!ok) {
    FinishLocked(absl::CancelledError("WatchEvents: client went away"));
  } else if (overflowed_) {
    FinishLocked(OverflowStatusLocked());
  } else if (!queue_.empty()) {
    WriteNextLocked();
  } else if (closed_) {
    FinishLocked(absl::OkStatus());
  }
}

void WatchReactor::OnCancel() {
  base::MutexLock l(&mu_);
  if (!writing_) FinishLocked(absl::CancelledError("WatchEvents: cancelled"));
}

void WatchReactor::OnDone() {
  runtime_->Unsubscribe(this);  // no-op if never subscribed; after it the hub never calls us
  delete this;
}

void WatchReactor::WriteNextLocked() {
  current_ = std::move(queue_.front());
  queue_.pop_front();
  writing_ = true;
  bool own = false;
  out_.Clear();
  (void)grpc::SerializationTraits<v1::Event>::Serialize(current_, &out_, &own);
  StartWrite(&out_);
}

void WatchReactor::FinishLocked(const absl::Status& status) {
  if (finishing_) return;
  finishing_ = true;
  queue_.clear();
  if (overflowed_) stats_->OnWatchEventsDropped(lost_);
  stats_->OnFinished(RpcMethod::kWatchEvents, status.code());
  Finish(ToGrpcStatus(status));
}

absl::Status WatchReactor::OverflowStatusLocked() const {
  std::string from = first_lost_seq_ == 0 ? std::string(" (from the include_existing replay on)")
                                          : absl::StrCat(", from seq ", first_lost_seq_, " on");
  return absl::ResourceExhaustedError(
      absl::StrCat("WatchEvents: this watcher fell ", max_queued_,
                   " events behind (--max-watch-queue) and lost ", lost_, " events", from,
                   "; watch again with include_existing to resync"));
}

}  // namespace pagepool::server
