#include "client/traffic.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/internal/traffic_stream.h"

namespace pagepool::client {
namespace v1 = ::pagepool::v1;
using Clock = std::chrono::steady_clock;
using internal::StreamWorker;
using internal::TrafficShared;

namespace {

// Streams of one run at most: each is a thread of this process and a call on the daemon.
constexpr uint32_t kMaxStreams = 4096;

bool KnownPattern(const std::string& p) {
  return p == "steady" || p == "burst" || p == "hold" || p == "leak" ||
         p == "destroy-under-traffic" || p == "unary";
}

absl::Status CheckOptions(const TrafficOptions& o) {
  if (!KnownPattern(o.pattern)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown pattern '", o.pattern,
        "' (steady, burst, hold, leak, destroy-under-traffic, unary)"));
  }
  if (o.streams == 0 || o.batch == 0 || !(o.duration_s > 0) || !std::isfinite(o.duration_s)) {
    return absl::InvalidArgumentError("streams, batch and duration must be positive (and finite)");
  }
  if (o.streams > kMaxStreams) {
    return absl::InvalidArgumentError(absl::StrCat("streams ", o.streams, " is above ", kMaxStreams,
                                                   " (one thread and one Traffic stream each)"));
  }
  return absl::OkStatus();
}

double Percentile(std::vector<float>& v, double q) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

// One run of RunTraffic, step by step: set up the pool, start the streams, sample while the
// traffic runs, (destroy-under-traffic) destroy while pages are held, stop, collect, clean up.
//
// Thread safety: driven by one thread; the stream threads share only `shared_`.
class TrafficRun {
 public:
  TrafficRun(Client& client, const TrafficOptions& options)
      : client_(client), o_(options), dut_(options.pattern == "destroy-under-traffic") {
    res_.pattern = o_.pattern;
    res_.streams = o_.streams;
    res_.batch = o_.batch;
  }
  ~TrafficRun() { StopStreams(); }

  // Creates the run's device and pool, or looks up options.pool_id.
  absl::Status SetUpPool();
  // One thread per stream. RESOURCE_EXHAUSTED, with the started ones stopped, when threads run out.
  absl::Status StartStreams();
  // Samples about once a second until the traffic phase ends (destroy-under-traffic: half of it).
  void SampleTraffic();
  // destroy-under-traffic: destroys the pool (or unbinds the device) while the streams hold pages,
  // then lets them give everything back. Other patterns: nothing.
  absl::Status DestroyWhileHeld();
  // Stops and joins the streams (once).
  void StopStreams();
  // Fills the result from the counters, the latencies and the daemon's pool and domain.
  absl::Status Collect();
  // Destroys the pool the run created, unless it stays (keep, leak, destroy-under-traffic).
  absl::Status CleanUp();

  TrafficResult TakeResult() { return std::move(res_); }

 private:
  void Sample();
  void CollectCounters();

  Client& client_;
  const TrafficOptions& o_;
  const bool dut_;
  TrafficResult res_;
  bool created_pool_ = false;
  bool pool_found_at_end_ = false;
  TrafficShared shared_;
  std::vector<std::unique_ptr<StreamWorker>> workers_;
  std::vector<std::thread> threads_;
  Clock::time_point start_, end_;
  Clock::time_point last_sample_;
  uint64_t last_sample_ops_ = 0;
};

absl::Status TrafficRun::SetUpPool() {
  if (o_.pool_id != 0) {
    auto p = client_.GetPool(o_.pool_id);
    if (!p.ok()) return p.status();
    res_.pool_id = o_.pool_id;
    res_.device_id = p->pool().device_id();
    return absl::OkStatus();
  }
  v1::CreateDeviceRequest dr;
  dr.set_name(absl::StrCat("ppctl-", o_.pattern));
  dr.set_iommu_mode(o_.iommu_mode);
  auto d = client_.CreateDevice(dr);
  if (!d.ok()) return d.status();
  res_.device_id = d->device().id();
  v1::CreatePoolRequest pr;
  pr.set_device_id(res_.device_id);
  pr.set_order(o_.order);
  pr.set_strategy(o_.strategy);
  pr.set_napi_id(1);
  auto p = client_.CreatePool(pr);
  if (!p.ok()) return p.status();
  res_.pool_id = p->pool().id();
  created_pool_ = true;
  return absl::OkStatus();
}

absl::Status TrafficRun::StartStreams() {
  for (uint32_t i = 0; i < o_.streams; ++i) {
    workers_.push_back(std::make_unique<StreamWorker>(client_, o_, res_.pool_id, shared_));
  }
  start_ = last_sample_ = Clock::now();
  for (auto& w : workers_) {
    try {
      threads_.emplace_back([&w] { w->Run(); });
    } catch (const std::system_error& e) {
      // Out of threads: stop the streams already started and report it (never abort).
      const size_t started = threads_.size();
      StopStreams();
      return absl::ResourceExhaustedError(absl::StrCat("cannot start stream ", started + 1, " of ",
                                                       o_.streams, ": ", e.what()));
    }
  }
  return absl::OkStatus();
}

void TrafficRun::Sample() {
  auto now = Clock::now();
  uint64_t ops = shared_.page_ops.load();
  double dt = std::chrono::duration<double>(now - last_sample_).count();
  TrafficSample ts;
  ts.t_s = std::chrono::duration<double>(now - start_).count();
  ts.page_ops_per_sec = dt > 0 ? double(ops - last_sample_ops_) / dt : 0;
  ts.held = shared_.held.load();
  ts.errors = shared_.errors.load();
  res_.timeline.push_back(ts);
  if (o_.progress) {
    o_.progress(absl::StrFormat("[%5.1f s] %.0f page ops/s, %d batches, %d held, %d errors",
                                ts.t_s, ts.page_ops_per_sec, shared_.batches.load(), ts.held,
                                ts.errors));
  }
  last_sample_ops_ = ops;
  last_sample_ = now;
}

void TrafficRun::SampleTraffic() {
  const double run_s = dut_ ? o_.duration_s / 2 : o_.duration_s;
  const auto deadline =
      start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(run_s));
  while (Clock::now() < deadline) {
    std::this_thread::sleep_until(std::min(deadline, last_sample_ + std::chrono::seconds(1)));
    if (Clock::now() >= last_sample_ + std::chrono::seconds(1)) Sample();
  }
  // The last partial second.
  if (Clock::now() - last_sample_ >= std::chrono::milliseconds(200)) Sample();
}

absl::Status TrafficRun::DestroyWhileHeld() {
  if (!dut_) return absl::OkStatus();
  res_.held_at_destroy = uint64_t(std::max<int64_t>(0, shared_.held.load()));
  shared_.destroying = true;
  absl::Status status;
  if (o_.unbind) {
    auto u = client_.UnbindDevice(res_.device_id);
    if (u.ok()) res_.pages_unmapped_at_destroy = u->pages_unmapped();
    status = u.status();
  } else {
    auto d = client_.DestroyPool(res_.pool_id);
    if (d.ok()) res_.pages_unmapped_at_destroy = d->pages_unmapped();
    status = d.status();
  }
  // The streams give back what they hold and end (they keep running only while they hold pages).
  shared_.destroyed = true;
  return status;
}

void TrafficRun::StopStreams() {
  if (threads_.empty()) return;
  shared_.stop = true;
  for (auto& t : threads_) t.join();
  threads_.clear();
  end_ = Clock::now();
}

void TrafficRun::CollectCounters() {
  res_.duration_s = std::chrono::duration<double>(end_ - start_).count();
  res_.batches = shared_.batches.load();
  res_.page_ops = shared_.page_ops.load();
  res_.page_ops_per_sec = res_.duration_s > 0 ? double(res_.page_ops) / res_.duration_s : 0;
  res_.errors = shared_.errors.load();
  res_.expected_refusals = shared_.expected.load();
  {
    base::MutexLock l(&shared_.mu);
    res_.first_error = shared_.first_error;
    if (!shared_.broken_stream.empty()) {
      ++res_.errors;
      if (res_.first_error.empty()) res_.first_error = shared_.broken_stream;
    }
  }
  std::vector<float> all;
  for (auto& w : workers_) all.insert(all.end(), w->latencies().begin(), w->latencies().end());
  res_.rpc_p50_us = Percentile(all, 0.50);
  res_.rpc_p99_us = Percentile(all, 0.99);
}

absl::Status TrafficRun::Collect() {
  CollectCounters();
  auto pool = client_.GetPool(res_.pool_id);
  if (pool.ok()) {
    res_.inflight = pool->pool().inflight();
  } else if (pool.status().code() != absl::StatusCode::kNotFound) {
    return pool.status();
  }
  pool_found_at_end_ = pool.ok();
  auto dom = client_.GetDomain(res_.device_id);
  if (!dom.ok()) return dom.status();
  res_.violations = dom->domain().violations().total();
  return absl::OkStatus();
}

absl::Status TrafficRun::CleanUp() {
  if (!created_pool_ || o_.keep || o_.pattern == "leak" || dut_ || !pool_found_at_end_) {
    return absl::OkStatus();
  }
  return client_.DestroyPool(res_.pool_id).status();
}

}  // namespace

absl::StatusOr<TrafficResult> RunTraffic(Client& client, const TrafficOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  TrafficRun run(client, options);
  if (absl::Status s = run.SetUpPool(); !s.ok()) return s;
  if (absl::Status s = run.StartStreams(); !s.ok()) return s;
  run.SampleTraffic();
  const absl::Status destroy = run.DestroyWhileHeld();
  run.StopStreams();
  if (!destroy.ok()) return destroy;
  if (absl::Status s = run.Collect(); !s.ok()) return s;
  if (absl::Status s = run.CleanUp(); !s.ok()) return s;
  return run.TakeResult();
}

}  // namespace pagepool::client
