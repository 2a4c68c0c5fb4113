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
#include "client/format.h"
#include "client/internal/latency_histogram.h"
#include "client/internal/traffic_stream.h"

namespace pagepool::client {
namespace v1 = ::pagepool::v1;
using Clock = std::chrono::steady_clock;
using internal::LatencyCounts;
using internal::StreamWorker;
using internal::TrafficShared;

namespace {

// Streams of one run at most: each is a thread of this process and a call on the daemon.
constexpr uint32_t kMaxStreams = 4096;
// The timeline: every 100 ms for the first 60 s, then every second.
constexpr auto kFineInterval = std::chrono::milliseconds(100);
constexpr auto kCoarseInterval = std::chrono::seconds(1);
constexpr auto kFinePeriod = std::chrono::seconds(60);
// A last sample at the end of a phase when at least this long has passed since the one before.
constexpr auto kMinPartialInterval = std::chrono::milliseconds(20);
// How often the sampler looks for a lost daemon while it waits for the next sample.
constexpr auto kLostCheckInterval = std::chrono::milliseconds(20);

bool KnownPattern(const std::string& p) {
  return p == "steady" || p == "burst" || p == "hold" || p == "leak" ||
         p == "destroy-under-traffic" || p == "unary";
}

absl::Status CheckOptions(const TrafficOptions& o) {
  if (!KnownPattern(o.pattern)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown pattern '", o.pattern,
                     "' (steady, burst, hold, leak, destroy-under-traffic, unary)"));
  }
  if (o.streams == 0 || o.batch == 0 || !(o.duration_s > 0) || !std::isfinite(o.duration_s)) {
    return absl::InvalidArgumentError("streams, batch and duration must be positive (and finite)");
  }
  if (o.streams > kMaxStreams) {
    return absl::InvalidArgumentError(absl::StrCat("streams ", o.streams, " is above ", kMaxStreams,
                                                   " (one thread and one Traffic stream each)"));
  }
  if (o.window == 0 || o.window > kMaxTrafficWindow) {
    return absl::InvalidArgumentError(absl::StrCat("window ", o.window, " is not in 1..",
                                                   kMaxTrafficWindow,
                                                   " (batches in flight per stream)"));
  }
  return absl::OkStatus();
}

double Percentile(std::vector<float>& v, double q) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

std::string StrategyLabel(v1::Strategy s) { return EnumLabel(v1::Strategy_Name(s), "STRATEGY_"); }
std::string IommuModeLabel(v1::IommuMode m) {
  return EnumLabel(v1::IommuMode_Name(m), "IOMMU_MODE_");
}

double SecondsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// One run of RunTraffic, step by step: set up the pool, start the streams, sample while the
// traffic runs (destroy-under-traffic: destroy while pages are held and go on on a fresh pool),
// stop, collect, clean up.
//
// Thread safety: driven by one thread; the stream threads share only `shared_` (and the workers'
// histograms, which the sampler reads).
class TrafficRun {
 public:
  TrafficRun(Client& client, const TrafficOptions& options)
      : client_(client),
        o_(options),
        dut_(options.pattern == "destroy-under-traffic"),
        iommu_mode_(options.iommu_mode),
        strategy_(options.strategy),
        order_(options.order) {
    res_.pattern = o_.pattern;
    res_.streams = o_.streams;
    res_.batch = o_.batch;
    res_.window = o_.pattern == "unary" ? 1 : o_.window;
    res_.frag_size = o_.frag_size;
  }
  ~TrafficRun() { StopStreams(); }

  // Creates the run's device and pool, or looks up options.pool_id.
  absl::Status SetUpPool();
  // One thread per stream. RESOURCE_EXHAUSTED, with the started ones stopped, when threads run out.
  absl::Status StartStreams();
  // Samples until the duration ends; destroy-under-traffic: destroys at half time and starts the
  // fresh pool. The status of the destroy or of the fresh pool's setup.
  absl::Status Drive();
  // Stops and joins the streams (once).
  void StopStreams();
  // Fills the result from the counters, the latencies and the daemon's pools and domains.
  absl::Status Collect();
  // Destroys the live pool the run created (unless keep or leak).
  absl::Status CleanUp();

  TrafficResult TakeResult() { return std::move(res_); }

  // A call of the run found the daemon gone (UNAVAILABLE).
  bool daemon_lost() const { return shared_.daemon_lost.load(); }
  // REQUIRES: daemon_lost() and the streams stopped.
  // UNAVAILABLE saying when and how the daemon went away and what the run had done until then.
  absl::Status LostStatus();

 private:
  // Samples on schedule until `deadline`, then once more unless the last sample is recent; returns
  // early when the daemon is lost.
  void SampleUntil(Clock::time_point deadline);
  // Sleeps until `t`, or less once the daemon is lost; false then.
  bool SleepUntil(Clock::time_point t);
  // A daemon call of the run's own failed: UNAVAILABLE means the daemon went away.
  void NoteFailure(const absl::Status& status, const char* call);
  void Sample();
  // The pools' inflight and the devices' page-table bytes, as the daemon reports them now.
  void QueryDaemon(TrafficSample* ts);
  // destroy-under-traffic: destroys the pool (or unbinds the device) while the streams hold pages
  // and records the event; the streams then give everything back.
  absl::Status DestroyWhileHeld();
  // destroy-under-traffic: a fresh pool (and, after unbind, device) for the rest of the run; the
  // streams move to it (or end, when it cannot be made).
  absl::Status StartFreshPool();
  absl::StatusOr<uint64_t> CreateDevice(const std::string& name);
  absl::StatusOr<uint64_t> CreatePool(uint64_t device_id);
  // The run's device, and the fresh one of destroy-under-traffic --unbind.
  std::vector<uint64_t> Devices() const {
    std::vector<uint64_t> d{res_.device_id};
    if (res_.fresh_device_id != 0 && res_.fresh_device_id != res_.device_id) {
      d.push_back(res_.fresh_device_id);
    }
    return d;
  }
  void CollectCounters();

  Client& client_;
  const TrafficOptions& o_;
  const bool dut_;
  // The settings of the run's device and pool (of options.pool_id's when given); a fresh pool
  // gets the same.
  v1::IommuMode iommu_mode_;
  v1::Strategy strategy_;
  uint32_t order_;
  TrafficResult res_;
  bool created_pool_ = false;
  bool pool_deleted_ = false;  // the sampler saw the original pool deleted (NOT_FOUND)
  TrafficShared shared_;
  std::vector<std::unique_ptr<StreamWorker>> workers_;
  std::vector<std::thread> threads_;
  Clock::time_point start_, end_;
  Clock::time_point next_sample_, last_sample_, last_progress_;
  uint64_t last_sample_ops_ = 0;
  LatencyCounts last_latency_;
};

absl::StatusOr<uint64_t> TrafficRun::CreateDevice(const std::string& name) {
  v1::CreateDeviceRequest dr;
  dr.set_name(name);
  dr.set_iommu_mode(iommu_mode_);
  auto d = client_.CreateDevice(dr);
  if (!d.ok()) return d.status();
  return d->device().id();
}

absl::StatusOr<uint64_t> TrafficRun::CreatePool(uint64_t device_id) {
  v1::CreatePoolRequest pr;
  pr.set_device_id(device_id);
  pr.set_order(order_);
  pr.set_strategy(strategy_);
  pr.set_napi_id(1);
  auto p = client_.CreatePool(pr);
  if (!p.ok()) return p.status();
  return p->pool().id();
}

absl::Status TrafficRun::SetUpPool() {
  if (o_.pool_id != 0) {
    auto p = client_.GetPool(o_.pool_id);
    if (!p.ok()) return p.status();
    res_.pool_id = o_.pool_id;
    res_.device_id = p->pool().device_id();
    strategy_ = p->pool().strategy();
    order_ = p->pool().order();
    auto dom = client_.GetDomain(res_.device_id);
    if (!dom.ok()) return dom.status();
    iommu_mode_ = dom->domain().iommu_mode();
    res_.strategy = StrategyLabel(strategy_);
    res_.iommu_mode = IommuModeLabel(iommu_mode_);
    return absl::OkStatus();
  }
  res_.strategy = StrategyLabel(strategy_);
  res_.iommu_mode = IommuModeLabel(iommu_mode_);
  auto device = CreateDevice(absl::StrCat("ppctl-", o_.pattern));
  if (!device.ok()) return device.status();
  res_.device_id = *device;
  auto pool = CreatePool(res_.device_id);
  if (!pool.ok()) return pool.status();
  res_.pool_id = *pool;
  created_pool_ = true;
  return absl::OkStatus();
}

absl::Status TrafficRun::StartStreams() {
  for (uint32_t i = 0; i < o_.streams; ++i) {
    workers_.push_back(std::make_unique<StreamWorker>(client_, o_, res_.pool_id, shared_));
  }
  start_ = last_sample_ = last_progress_ = Clock::now();
  next_sample_ = start_ + kFineInterval;
  for (auto& w : workers_) {
    try {
      threads_.emplace_back([&w] { w->Run(); });
    } catch (const std::system_error& e) {
      // Out of threads: stop the streams already started and report it (never abort).
      const size_t started = threads_.size();
      StopStreams();
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot start stream ", started + 1, " of ", o_.streams, ": ", e.what()));
    }
  }
  return absl::OkStatus();
}

void TrafficRun::QueryDaemon(TrafficSample* ts) {
  for (uint64_t pool : {pool_deleted_ ? 0 : res_.pool_id, res_.fresh_pool_id}) {
    if (pool == 0) continue;
    auto p = client_.GetPool(pool);
    if (p.ok()) ts->inflight += p->pool().inflight();
    NoteFailure(p.status(), "GetPool");
    // A destroyed pool is deleted once its last page is back; ids are never reused.
    if (pool == res_.pool_id && p.status().code() == absl::StatusCode::kNotFound) {
      pool_deleted_ = true;
    }
  }
  for (uint64_t device : Devices()) {
    auto d = client_.GetDomain(device);
    if (d.ok()) ts->table_bytes += d->domain().table_bytes();
    NoteFailure(d.status(), "GetDomain");
  }
}

void TrafficRun::Sample() {
  const auto now = Clock::now();
  const uint64_t ops = shared_.page_ops.load();
  LatencyCounts latency;
  for (const auto& w : workers_) w->histogram().AddTo(&latency);
  const LatencyCounts interval = latency.Since(last_latency_);
  const double dt = SecondsBetween(last_sample_, now);
  TrafficSample ts;
  ts.t_s = SecondsBetween(start_, now);
  ts.page_ops_per_sec = dt > 0 ? double(ops - last_sample_ops_) / dt : 0;
  ts.rpc_p50_us = interval.PercentileUs(0.50);
  ts.rpc_p99_us = interval.PercentileUs(0.99);
  ts.held = shared_.held.load();
  ts.errors = shared_.errors.load();
  QueryDaemon(&ts);
  res_.timeline.push_back(ts);
  last_sample_ops_ = ops;
  last_sample_ = now;
  last_latency_ = std::move(latency);
  if (o_.progress && now - last_progress_ >= std::chrono::seconds(1)) {
    last_progress_ = now;
    o_.progress(absl::StrFormat("[%5.1f s] %.0f page ops/s, %d batches, %d held, %d errors", ts.t_s,
                                ts.page_ops_per_sec, shared_.batches.load(), ts.held, ts.errors));
  }
}

void TrafficRun::NoteFailure(const absl::Status& status, const char* call) {
  if (absl::IsUnavailable(status)) {
    shared_.NoteDaemonLost(absl::StrCat(call, ": ", status.message()));
  }
}

bool TrafficRun::SleepUntil(Clock::time_point t) {
  while (!shared_.daemon_lost.load()) {
    const auto now = Clock::now();
    if (now >= t) return true;
    std::this_thread::sleep_until(std::min(t, now + kLostCheckInterval));
  }
  return false;
}

void TrafficRun::SampleUntil(Clock::time_point deadline) {
  while (next_sample_ < deadline) {
    if (!SleepUntil(next_sample_)) return;
    Sample();
    // Skip what a slow daemon call made us miss rather than sampling in a burst.
    while (next_sample_ <= Clock::now()) {
      next_sample_ += next_sample_ - start_ < kFinePeriod ? Clock::duration(kFineInterval)
                                                          : Clock::duration(kCoarseInterval);
    }
  }
  if (!SleepUntil(deadline)) return;
  if (Clock::now() - last_sample_ >= kMinPartialInterval) Sample();
}

absl::Status TrafficRun::DestroyWhileHeld() {
  res_.held_at_destroy = uint64_t(std::max<int64_t>(0, shared_.held.load()));
  TrafficEvent ev;
  ev.kind = o_.unbind ? "unbind" : "destroy";
  const auto t0 = Clock::now();
  ev.t_s = SecondsBetween(start_, t0);
  shared_.destroying = true;
  absl::Status status;
  if (o_.unbind) {
    auto u = client_.UnbindDevice(res_.device_id);
    ev.duration_ms = SecondsBetween(t0, Clock::now()) * 1e3;  // the answer has no duration
    if (u.ok()) {
      ev.pages_unmapped = u->pages_unmapped();
      ev.inflight_at_destroy = u->inflight_at_destroy();
    }
    status = u.status();
  } else {
    auto d = client_.DestroyPool(res_.pool_id);
    if (d.ok()) {
      ev.duration_ms = double(d->duration_ns()) / 1e6;
      ev.pages_unmapped = d->pages_unmapped();
      ev.inflight_at_destroy = d->inflight_at_destroy();
    }
    status = d.status();
  }
  res_.pages_unmapped_at_destroy = ev.pages_unmapped;
  if (status.ok()) res_.events.push_back(ev);
  NoteFailure(status, o_.unbind ? "UnbindDevice" : "DestroyPool");
  // The streams give back what they hold, then wait for fresh_ready.
  shared_.destroyed = true;
  return status;
}

absl::Status TrafficRun::StartFreshPool() {
  uint64_t device = res_.device_id;
  absl::Status status;
  if (o_.unbind) {
    auto d = CreateDevice(absl::StrCat("ppctl-", o_.pattern, "-fresh"));
    if (d.ok()) device = res_.fresh_device_id = *d;
    status = d.status();
  } else {
    res_.fresh_device_id = device;
  }
  if (status.ok()) {
    auto p = CreatePool(device);
    if (p.ok()) res_.fresh_pool_id = *p;
    status = p.status();
  }
  NoteFailure(status, "the fresh pool's CreateDevice/CreatePool");
  shared_.fresh_pool_id = status.ok() ? res_.fresh_pool_id : 0;
  shared_.fresh_ready = true;
  return status;
}

absl::Status TrafficRun::Drive() {
  const auto at = [this](double s) {
    return start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  if (!dut_) {
    SampleUntil(at(o_.duration_s));
    return absl::OkStatus();
  }
  SampleUntil(at(o_.duration_s / 2));
  if (daemon_lost()) return absl::OkStatus();  // RunTraffic reports it
  absl::Status status = DestroyWhileHeld();
  if (!status.ok()) {
    shared_.fresh_ready = true;  // with fresh_pool_id 0: the streams end
    return status;
  }
  if (status = StartFreshPool(); !status.ok()) return status;
  SampleUntil(at(o_.duration_s));
  return absl::OkStatus();
}

void TrafficRun::StopStreams() {
  if (threads_.empty()) return;
  shared_.stop = true;
  for (auto& t : threads_) t.join();
  threads_.clear();
  end_ = Clock::now();
}

void TrafficRun::CollectCounters() {
  res_.duration_s = SecondsBetween(start_, end_);
  res_.batches = shared_.batches.load();
  res_.page_ops = shared_.page_ops.load();
  res_.frag_ops = shared_.frag_ops.load();
  res_.pages_from_frags = shared_.pages_from_frags.load();
  res_.page_ops_per_sec = res_.duration_s > 0 ? double(res_.page_ops) / res_.duration_s : 0;
  res_.errors = shared_.errors.load();
  res_.expected_refusals = shared_.expected.load();
  res_.held_at_end = shared_.held.load();
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
  for (uint64_t pool : {res_.pool_id, res_.fresh_pool_id}) {
    if (pool == 0) continue;
    auto p = client_.GetPool(pool);
    if (p.status().code() == absl::StatusCode::kNotFound) continue;  // deleted: nothing in flight
    if (!p.ok()) return p.status();
    res_.inflight += p->pool().inflight();
    res_.frag_pages += p->pool().frag_pages();
    res_.frag_refs += p->pool().frag_refs();
  }
  for (uint64_t device : Devices()) {
    auto dom = client_.GetDomain(device);
    if (!dom.ok()) return dom.status();
    res_.violations += dom->domain().violations().total();
  }
  return absl::OkStatus();
}

absl::Status TrafficRun::LostStatus() {
  CollectCounters();
  std::string reason;
  {
    base::MutexLock l(&shared_.mu);
    reason = shared_.lost_reason;
  }
  std::string message = absl::StrFormat(
      "traffic %s stopped: the daemon went away %.1f s into the %.1f s run (%s); done until "
      "then: %d page ops in %d batches (%.0f ops/s) on pool %d of device %d, %d unexpected "
      "refusals",
      o_.pattern, res_.duration_s, o_.duration_s, reason, res_.page_ops, res_.batches,
      res_.page_ops_per_sec, res_.pool_id, res_.device_id,
      shared_.errors.load());  // res_.errors counts the broken streams too: the loss itself
  if (!res_.events.empty()) {
    const TrafficEvent& ev = res_.events.front();
    absl::StrAppendFormat(&message, ", %s at %.2f s (%d pages unmapped)", ev.kind, ev.t_s,
                          ev.pages_unmapped);
  }
  if (res_.held_at_end > 0) {
    absl::StrAppendFormat(&message, "; %d pages this client held were not given back",
                          res_.held_at_end);
  }
  return absl::UnavailableError(message);
}

absl::Status TrafficRun::CleanUp() {
  if (o_.keep || o_.pattern == "leak") return absl::OkStatus();
  // destroy-under-traffic destroyed its pool half-way; the fresh one is the run's own.
  const uint64_t pool = dut_ ? res_.fresh_pool_id : (created_pool_ ? res_.pool_id : 0);
  if (pool == 0) return absl::OkStatus();
  absl::Status s = client_.DestroyPool(pool).status();
  return s.code() == absl::StatusCode::kNotFound ? absl::OkStatus() : s;
}

}  // namespace

absl::StatusOr<TrafficResult> RunTraffic(Client& client, const TrafficOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  TrafficRun run(client, options);
  if (absl::Status s = run.SetUpPool(); !s.ok()) return s;
  if (absl::Status s = run.StartStreams(); !s.ok()) return s;
  const absl::Status driven = run.Drive();
  run.StopStreams();
  // A lost daemon ends the run at once, whatever else failed because of it.
  if (run.daemon_lost()) return run.LostStatus();
  if (!driven.ok()) return driven;
  if (absl::Status s = run.Collect(); !s.ok()) return s;
  if (absl::Status s = run.CleanUp(); !s.ok()) return s;
  return run.TakeResult();
}

}  // namespace pagepool::client
