#include "client/internal/traffic_stream.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"

namespace pagepool::client::internal {
namespace v1 = ::pagepool::v1;

namespace {

constexpr uint32_t kBurstBatches = 8;

HeldItem ItemOf(const v1::Page& p) {
  if (!p.has_frag()) return HeldItem{p.handle()};
  return HeldItem{p.frag().page(), p.frag().offset(), p.frag().size()};
}

void Take(const v1::TrafficResponse& resp, std::vector<HeldItem>* into) {
  for (const v1::Page& p : resp.allocated()) into->push_back(ItemOf(p));
}

// Adds `item` to the request's recycle (or, `ret`, return) list of its kind.
void AddGiveBack(const HeldItem& item, bool ret, v1::TrafficRequest* req) {
  if (item.frag_size == 0) {
    *(ret ? req->add_return_pages() : req->add_recycle()) = item.page;
    return;
  }
  v1::FragHandle* f = ret ? req->add_return_frags() : req->add_recycle_frags();
  *f->mutable_page() = item.page;
  f->set_offset(item.frag_offset);
  f->set_size(item.frag_size);
}

int GiveBacks(const v1::TrafficRequest& req) {
  return req.recycle_size() + req.return_pages_size() + req.recycle_frags_size() +
         req.return_frags_size();
}

// Pages a give-back batch carries at most.
size_t GiveBackBatch(uint32_t batch) { return std::max<size_t>(batch, 64); }

}  // namespace

void TrafficShared::CountErrors(uint64_t n, absl::string_view message) {
  errors.fetch_add(n, std::memory_order_relaxed);
  base::MutexLock l(&mu);
  if (first_error.empty()) first_error = std::string(message);
}

void TrafficShared::NoteBrokenStream(absl::string_view message) {
  base::MutexLock l(&mu);
  if (broken_stream.empty()) broken_stream = std::string(message);
}

void TrafficShared::NoteDaemonLost(absl::string_view message) {
  {
    base::MutexLock l(&mu);
    if (lost_reason.empty()) lost_reason = std::string(message);
  }
  daemon_lost = true;
  stop = true;
}

StreamWorker::StreamWorker(Client& client, const TrafficOptions& options, uint64_t pool_id,
                           TrafficShared& shared)
    : client_(client), o_(options), original_pool_id_(pool_id), pool_id_(pool_id), sh_(shared) {
  latencies_us_.reserve(1 << 16);
}

void StreamWorker::Run() {
  if (o_.pattern == "unary") {
    RunUnary();
    return;
  }
  rw_ = client_.stub()->Traffic(&ctx_);
  const bool ok = RunPattern();
  rw_->WritesDone();
  grpc::Status s = rw_->Finish();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    sh_.NoteDaemonLost(absl::StrCat("Traffic stream: ", s.error_message()));
  }
  if (!ok || !s.ok()) {
    sh_.NoteBrokenStream(
        absl::StrCat("Traffic stream ended: ", s.ok() ? "write/read failed" : s.error_message()));
  }
}

bool StreamWorker::RunPattern() {
  if (o_.pattern == "steady") return Steady();
  if (o_.pattern == "burst") return Burst();
  if (o_.pattern == "hold") return Hold();
  if (o_.pattern == "leak") return Leak();
  if (o_.pattern == "destroy-under-traffic") return DestroyUnderTraffic();
  return true;
}

void StreamWorker::CountLatency(Clock::time_point sent) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - sent);
  latencies_us_.push_back(float(ns.count()) / 1000.0f);
  histogram_.Record(uint64_t(std::max<int64_t>(0, ns.count())));
}

bool StreamWorker::Send() {
  req_.set_pool_id(pool_id_);
  req_.set_seq(++seq_);
  req_.set_napi_local(o_.napi_local);
  req_.set_frag_size(o_.frag_size);
  sh_.held.fetch_sub(GiveBacks(req_), std::memory_order_relaxed);
  sent_.push_back(Clock::now());
  return rw_->Write(req_);
}

bool StreamWorker::ReceiveOne() {
  if (!rw_->Read(&resp_)) return false;
  CountLatency(sent_.front());
  sent_.pop_front();
  // A page freed by its last fragment is counted in the page figures and as that fragment.
  const uint64_t frag_ops = resp_.frags_recycled() + resp_.frags_returned() +
                            (o_.frag_size != 0 ? resp_.allocated_size() : 0);
  uint64_t ops = resp_.allocated_size() + resp_.recycled_cached() + resp_.recycled_ring() +
                 resp_.recycled_released() + resp_.returned() - resp_.pages_from_frags() +
                 resp_.frags_recycled() + resp_.frags_returned();
  sh_.batches.fetch_add(1, std::memory_order_relaxed);
  sh_.page_ops.fetch_add(ops, std::memory_order_relaxed);
  if (frag_ops != 0) sh_.frag_ops.fetch_add(frag_ops, std::memory_order_relaxed);
  if (resp_.pages_from_frags() != 0) {
    sh_.pages_from_frags.fetch_add(resp_.pages_from_frags(), std::memory_order_relaxed);
  }
  sh_.held.fetch_add(resp_.allocated_size(), std::memory_order_relaxed);
  if (resp_.errors() > 0) {
    // Refusals by the original pool once its destroy was asked for are the pattern's point.
    if (pool_id_ == original_pool_id_ && sh_.destroying.load()) {
      sh_.expected.fetch_add(resp_.errors(), std::memory_order_relaxed);
    } else {
      sh_.CountErrors(resp_.errors(), resp_.error_message());
    }
  }
  return true;
}

bool StreamWorker::Exchange() {
  if (!Send()) return false;
  if (sent_.size() < std::max<uint32_t>(o_.window, 1)) {
    resp_.Clear();
    return true;
  }
  return ReceiveOne();
}

bool StreamWorker::Drain(std::vector<HeldItem>* into) {
  while (!sent_.empty()) {
    if (!ReceiveOne()) return false;
    Take(resp_, into);
  }
  return true;
}

bool StreamWorker::GiveBack(std::vector<HeldItem>* pages, bool ret) {
  if (!Drain(pages)) return false;
  size_t pos = 0;
  while (pos < pages->size()) {
    req_.Clear();
    size_t end = std::min(pages->size(), pos + GiveBackBatch(o_.batch));
    for (; pos < end; ++pos) AddGiveBack((*pages)[pos], ret, &req_);
    if (!Exchange()) return false;  // every answer now is a give-back's: no pages in it
  }
  pages->clear();
  return Drain(pages);
}

bool StreamWorker::Steady() {
  std::vector<HeldItem> prev;
  while (!sh_.stop.load(std::memory_order_relaxed)) {
    req_.Clear();
    for (const HeldItem& h : prev) AddGiveBack(h, false, &req_);
    prev.clear();
    req_.set_allocate(o_.batch);
    if (!Exchange()) return false;
    Take(resp_, &prev);
  }
  return GiveBack(&prev, false);
}

bool StreamWorker::Burst() {
  std::vector<HeldItem> held;
  while (!sh_.stop.load(std::memory_order_relaxed)) {
    for (uint32_t i = 0; i < kBurstBatches && !sh_.stop.load(); ++i) {
      req_.Clear();
      req_.set_allocate(o_.batch);
      if (!Exchange()) return false;
      Take(resp_, &held);
    }
    if (!GiveBack(&held, false)) return false;
  }
  return GiveBack(&held, false);
}

bool StreamWorker::Hold() {
  struct Held {
    Clock::time_point until;
    HeldItem item;
  };
  std::deque<Held> held;
  const auto hold =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.hold_s));
  auto keep = [&] {
    auto until = Clock::now() + hold;
    for (const v1::Page& p : resp_.allocated()) held.push_back({until, ItemOf(p)});
  };
  while (!sh_.stop.load(std::memory_order_relaxed)) {
    req_.Clear();
    auto now = Clock::now();
    while (!held.empty() && held.front().until <= now &&
           GiveBacks(req_) < int(GiveBackBatch(o_.batch) * 4)) {
      AddGiveBack(held.front().item, true, &req_);
      held.pop_front();
    }
    // Outstanding batches may each bring `batch` pages.
    if (held.size() + (sent_.size() + 1) * o_.batch <= o_.max_held) req_.set_allocate(o_.batch);
    if (req_.allocate() == 0 && GiveBacks(req_) == 0) {
      if (sent_.empty()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      } else if (ReceiveOne()) {
        keep();
      } else {
        return false;
      }
      continue;
    }
    if (!Exchange()) return false;
    keep();
  }
  std::vector<HeldItem> rest;
  for (auto& h : held) rest.push_back(h.item);
  return GiveBack(&rest, true);
}

bool StreamWorker::Leak() {
  size_t held = 0;
  while (!sh_.stop.load(std::memory_order_relaxed)) {
    if (held + (sent_.size() + 1) * o_.batch > o_.max_held) {
      if (sent_.empty()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      } else if (ReceiveOne()) {
        held += resp_.allocated_size();
      } else {
        return false;
      }
      continue;
    }
    req_.Clear();
    req_.set_allocate(o_.batch);
    if (!Exchange()) return false;
    held += resp_.allocated_size();
  }
  std::vector<HeldItem> rest;
  return Drain(&rest);  // the pages stay in flight: that is the pattern
}

bool StreamWorker::HoldUntilDestroyed(std::vector<HeldItem>* rest) {
  std::deque<std::vector<HeldItem>> held;  // batches, oldest first
  while (!sh_.stop.load(std::memory_order_relaxed) && !sh_.destroyed.load()) {
    req_.Clear();
    if (held.size() >= o_.hold_batches) {
      for (const HeldItem& h : held.front()) AddGiveBack(h, false, &req_);
      held.pop_front();
    }
    // Allocation goes on while the destroy runs (it is refused once the pool is gone).
    req_.set_allocate(o_.batch);
    if (!Exchange()) return false;
    std::vector<HeldItem> got;
    Take(resp_, &got);
    if (!got.empty()) held.push_back(std::move(got));
  }
  for (auto& b : held) rest->insert(rest->end(), b.begin(), b.end());
  return true;
}

bool StreamWorker::DestroyUnderTraffic() {
  std::vector<HeldItem> held;
  if (!HoldUntilDestroyed(&held)) return false;
  // The pool is gone (or the run ended): return every page still held, outstanding answers' too.
  if (!GiveBack(&held, true)) return false;
  while (!sh_.fresh_ready.load()) {
    if (sh_.stop.load()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  pool_id_ = sh_.fresh_pool_id.load();
  if (pool_id_ == 0) return true;  // no fresh pool: the run reports why
  return Steady();
}

void StreamWorker::RunUnary() {
  v1::ReturnRequest ret;
  ret.set_pool_id(pool_id_);
  while (!sh_.stop.load(std::memory_order_relaxed)) UnaryRound(&ret);
}

void StreamWorker::UnaryRound(v1::ReturnRequest* ret) {
  auto t0 = Clock::now();
  auto a = client_.Allocate(pool_id_, o_.batch, o_.frag_size);
  CountLatency(t0);
  if (!a.ok()) {
    if (absl::IsUnavailable(a.status())) {
      sh_.NoteDaemonLost(absl::StrCat("Allocate: ", a.status().message()));
      return;
    }
    sh_.CountErrors(1, a.status().message());
    return;
  }
  ret->clear_pages();
  ret->clear_frags();
  for (const v1::Page& p : a->pages()) {
    if (p.has_frag()) {
      *ret->add_frags() = p.frag();
    } else {
      *ret->add_pages() = p.handle();
    }
  }
  auto t2 = Clock::now();
  auto r = client_.Return(*ret);
  CountLatency(t2);
  sh_.batches.fetch_add(2, std::memory_order_relaxed);
  const uint64_t back = r.ok() ? r->returned() - r->pages_from_frags() + r->frags() : 0;
  sh_.page_ops.fetch_add(a->pages_size() + back, std::memory_order_relaxed);
  if (o_.frag_size != 0) {
    sh_.frag_ops.fetch_add(a->pages_size() + (r.ok() ? r->frags() : 0), std::memory_order_relaxed);
    if (r.ok()) sh_.pages_from_frags.fetch_add(r->pages_from_frags(), std::memory_order_relaxed);
  }
  if (absl::IsUnavailable(r.status())) {
    sh_.NoteDaemonLost(absl::StrCat("Return: ", r.status().message()));
  } else if (!r.ok()) {
    sh_.CountErrors(1, r.status().message());
  }
}

}  // namespace pagepool::client::internal
