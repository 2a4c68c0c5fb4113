#include "client/traffic.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pagepool::client {
namespace v1 = ::pagepool::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kBurstBatches = 8;
// Streams of one run at most: each is a thread of this process and a call on the daemon.
constexpr uint32_t kMaxStreams = 4096;

// State shared by the stream threads of one run.
struct Shared {
  std::atomic<bool> stop{false};
  std::atomic<bool> destroying{false};  // destroy-under-traffic: the destroy was requested
  std::atomic<bool> destroyed{false};   // ... and has returned: give everything back
  std::atomic<uint64_t> batches{0};
  std::atomic<uint64_t> page_ops{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> expected{0};
  std::atomic<int64_t> held{0};         // pages the client holds now, all streams
  std::mutex mu;
  std::string first_error;              // guarded by mu
  std::string fatal;                    // a stream broke (guarded by mu)
};

class StreamWorker {
 public:
  StreamWorker(Client& client, const TrafficOptions& o, uint64_t pool_id, Shared& shared)
      : client_(client), o_(o), pool_id_(pool_id), sh_(shared) {
    latencies_us_.reserve(1 << 16);
  }

  void Run() {
    if (o_.pattern == "unary") {
      RunUnary();
      return;
    }
    rw_ = client_.stub()->Traffic(&ctx_);
    bool ok = true;
    if (o_.pattern == "steady") ok = Steady();
    else if (o_.pattern == "burst") ok = Burst();
    else if (o_.pattern == "hold") ok = Hold();
    else if (o_.pattern == "leak") ok = Leak();
    else if (o_.pattern == "destroy-under-traffic") ok = DestroyUnderTraffic();
    rw_->WritesDone();
    grpc::Status s = rw_->Finish();
    if (!ok || !s.ok()) {
      std::lock_guard<std::mutex> l(sh_.mu);
      if (sh_.fatal.empty()) {
        sh_.fatal = absl::StrCat("Traffic stream ended: ", s.ok() ? "write/read failed"
                                                                  : s.error_message());
      }
    }
  }

  std::vector<float>& latencies() { return latencies_us_; }

 private:
  // Sends req_ (pool, seq, napi_local filled here), waits for its answer in resp_.
  bool Exchange() {
    req_.set_pool_id(pool_id_);
    req_.set_seq(++seq_);
    req_.set_napi_local(o_.napi_local);
    auto t0 = Clock::now();
    if (!rw_->Write(req_)) return false;
    if (!rw_->Read(&resp_)) return false;
    latencies_us_.push_back(
        std::chrono::duration<float, std::micro>(Clock::now() - t0).count());
    uint64_t ops = resp_.allocated_size() + resp_.recycled_cached() + resp_.recycled_ring() +
                   resp_.recycled_released() + resp_.returned();
    sh_.batches.fetch_add(1, std::memory_order_relaxed);
    sh_.page_ops.fetch_add(ops, std::memory_order_relaxed);
    sh_.held.fetch_add(int64_t(resp_.allocated_size()) - req_.recycle_size() -
                           req_.return_pages_size(),
                       std::memory_order_relaxed);
    if (resp_.errors() > 0) {
      if (sh_.destroying.load()) {
        sh_.expected.fetch_add(resp_.errors(), std::memory_order_relaxed);
      } else {
        sh_.errors.fetch_add(resp_.errors(), std::memory_order_relaxed);
        std::lock_guard<std::mutex> l(sh_.mu);
        if (sh_.first_error.empty()) sh_.first_error = resp_.error_message();
      }
    }
    return true;
  }

  static void Take(const v1::TrafficResponse& resp, std::vector<v1::PageHandle>* into) {
    for (const v1::Page& p : resp.allocated()) into->push_back(p.handle());
  }

  // Gives `pages` back in batches (recycle or return), clearing it.
  bool GiveBack(std::vector<v1::PageHandle>* pages, bool ret) {
    size_t pos = 0;
    while (pos < pages->size()) {
      req_.Clear();
      size_t end = std::min(pages->size(), pos + std::max<size_t>(o_.batch, 64));
      for (; pos < end; ++pos) {
        *(ret ? req_.add_return_pages() : req_.add_recycle()) = (*pages)[pos];
      }
      if (!Exchange()) return false;
    }
    pages->clear();
    return true;
  }

  bool Steady() {
    std::vector<v1::PageHandle> prev;
    while (!sh_.stop.load(std::memory_order_relaxed)) {
      req_.Clear();
      for (auto& h : prev) *req_.add_recycle() = h;
      prev.clear();
      req_.set_allocate(o_.batch);
      if (!Exchange()) return false;
      Take(resp_, &prev);
    }
    return GiveBack(&prev, false);
  }

  bool Burst() {
    std::vector<v1::PageHandle> held;
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

  bool Hold() {
    struct Held {
      Clock::time_point until;
      v1::PageHandle handle;
    };
    std::deque<Held> held;
    const auto hold = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(o_.hold_s));
    while (!sh_.stop.load(std::memory_order_relaxed)) {
      req_.Clear();
      auto now = Clock::now();
      while (!held.empty() && held.front().until <= now &&
             req_.return_pages_size() < int(std::max<uint32_t>(o_.batch, 64) * 4)) {
        *req_.add_return_pages() = held.front().handle;
        held.pop_front();
      }
      if (held.size() + o_.batch <= o_.max_held) req_.set_allocate(o_.batch);
      if (req_.allocate() == 0 && req_.return_pages().empty()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      if (!Exchange()) return false;
      auto until = Clock::now() + hold;
      for (const v1::Page& p : resp_.allocated()) held.push_back({until, p.handle()});
    }
    std::vector<v1::PageHandle> rest;
    for (auto& h : held) rest.push_back(h.handle);
    return GiveBack(&rest, true);
  }

  bool Leak() {
    size_t held = 0;
    while (!sh_.stop.load(std::memory_order_relaxed)) {
      if (held + o_.batch > o_.max_held) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      req_.Clear();
      req_.set_allocate(o_.batch);
      if (!Exchange()) return false;
      held += resp_.allocated_size();
    }
    return true;  // the pages stay in flight: that is the pattern
  }

  bool DestroyUnderTraffic() {
    std::deque<std::vector<v1::PageHandle>> held;  // batches, oldest first
    while (!sh_.stop.load(std::memory_order_relaxed) && !sh_.destroyed.load()) {
      req_.Clear();
      if (held.size() >= o_.hold_batches) {
        for (auto& h : held.front()) *req_.add_recycle() = h;
        held.pop_front();
      }
      // Allocation goes on while the destroy runs (it is refused once the pool is gone).
      req_.set_allocate(o_.batch);
      if (!Exchange()) return false;
      std::vector<v1::PageHandle> got;
      Take(resp_, &got);
      if (!got.empty()) held.push_back(std::move(got));
    }
    // The pool is gone (or the run ended): return every page still held.
    std::vector<v1::PageHandle> rest;
    for (auto& b : held) rest.insert(rest.end(), b.begin(), b.end());
    return GiveBack(&rest, true);
  }

  void RunUnary() {
    v1::ReturnRequest ret;
    ret.set_pool_id(pool_id_);
    while (!sh_.stop.load(std::memory_order_relaxed)) {
      auto t0 = Clock::now();
      auto a = client_.Allocate(pool_id_, o_.batch);
      auto t1 = Clock::now();
      latencies_us_.push_back(std::chrono::duration<float, std::micro>(t1 - t0).count());
      if (!a.ok()) {
        sh_.errors.fetch_add(1);
        std::lock_guard<std::mutex> l(sh_.mu);
        if (sh_.first_error.empty()) sh_.first_error = std::string(a.status().message());
        continue;
      }
      ret.clear_pages();
      for (const v1::Page& p : a->pages()) *ret.add_pages() = p.handle();
      auto t2 = Clock::now();
      auto r = client_.Return(ret);
      latencies_us_.push_back(
          std::chrono::duration<float, std::micro>(Clock::now() - t2).count());
      sh_.batches.fetch_add(2, std::memory_order_relaxed);
      sh_.page_ops.fetch_add(a->pages_size() + (r.ok() ? r->returned() : 0),
                             std::memory_order_relaxed);
      if (!r.ok()) {
        sh_.errors.fetch_add(1);
        std::lock_guard<std::mutex> l(sh_.mu);
        if (sh_.first_error.empty()) sh_.first_error = std::string(r.status().message());
      }
    }
  }

  Client& client_;
  const TrafficOptions& o_;
  const uint64_t pool_id_;
  Shared& sh_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::TrafficRequest, v1::TrafficResponse>> rw_;
  v1::TrafficRequest req_;
  v1::TrafficResponse resp_;
  uint64_t seq_ = 0;
  std::vector<float> latencies_us_;
};

double Percentile(std::vector<float>& v, double q) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

bool KnownPattern(const std::string& p) {
  return p == "steady" || p == "burst" || p == "hold" || p == "leak" ||
         p == "destroy-under-traffic" || p == "unary";
}

}  // namespace

std::string TrafficResult::ToJson() const {
  std::string s = "{\n";
  auto num = [&](const char* k, double v, bool last = false) {
    absl::StrAppend(&s, "  \"", k, "\": ", absl::StrFormat("%.3f", v), last ? "\n" : ",\n");
  };
  auto integer = [&](const char* k, uint64_t v) { absl::StrAppend(&s, "  \"", k, "\": ", v, ",\n"); };
  std::string esc;
  for (char c : first_error) {
    if (c == '"' || c == '\\') esc.push_back('\\');
    if (c == '\n') { esc += "\\n"; continue; }
    esc.push_back(c);
  }
  absl::StrAppend(&s, "  \"pattern\": \"", pattern, "\",\n");
  integer("streams", streams);
  integer("batch", batch);
  integer("device_id", device_id);
  integer("pool_id", pool_id);
  num("duration_s", duration_s);
  integer("batches", batches);
  integer("page_ops", page_ops);
  num("page_ops_per_sec", page_ops_per_sec);
  num("rpc_p50_us", rpc_p50_us);
  num("rpc_p99_us", rpc_p99_us);
  integer("errors", errors);
  integer("expected_refusals", expected_refusals);
  integer("violations", violations);
  integer("inflight", inflight);
  integer("held_at_destroy", held_at_destroy);
  integer("pages_unmapped_at_destroy", pages_unmapped_at_destroy);
  absl::StrAppend(&s, "  \"first_error\": \"", esc, "\",\n  \"timeline\": [");
  for (size_t i = 0; i < timeline.size(); ++i) {
    const TrafficSample& t = timeline[i];
    absl::StrAppend(&s, i == 0 ? "\n" : ",\n",
                    absl::StrFormat("    {\"t_s\": %.3f, \"page_ops_per_sec\": %.1f, "
                                    "\"held\": %d, \"errors\": %d}",
                                    t.t_s, t.page_ops_per_sec, t.held, t.errors));
  }
  absl::StrAppend(&s, timeline.empty() ? "]\n}\n" : "\n  ]\n}\n");
  return s;
}

namespace {

std::string HtmlEscape(const std::string& in) {
  std::string out;
  for (char c : in) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// A line chart of (x, y) points as inline SVG, with the y range from 0 to the maximum.
std::string SvgChart(const std::string& title, const std::string& unit,
                     const std::vector<std::pair<double, double>>& pts) {
  constexpr double kW = 640, kH = 220, kL = 70, kR = 20, kT = 30, kB = 35;
  double xmax = 1, ymax = 1;
  for (const auto& [x, y] : pts) {
    xmax = std::max(xmax, x);
    ymax = std::max(ymax, y);
  }
  auto px = [&](double x) { return kL + (kW - kL - kR) * x / xmax; };
  auto py = [&](double y) { return kH - kB - (kH - kT - kB) * y / ymax; };
  std::string s = absl::StrFormat(
      "<svg width=\"%.0f\" height=\"%.0f\" xmlns=\"http://www.w3.org/2000/svg\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<text x=\"%.0f\" y=\"18\" font-weight=\"bold\">%s</text>\n"
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#444\"/>\n"
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#444\"/>\n"
      "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.0f %s</text>\n"
      "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">0</text>\n"
      "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.1f s</text>\n",
      kW, kH, kL, HtmlEscape(title), kL, kT, kL, kH - kB, kL, kH - kB, kW - kR, kH - kB, kL - 4,
      kT + 4, ymax, HtmlEscape(unit), kL - 4, kH - kB, kW - kR, kH - kB + 16, xmax);
  std::string points;
  for (const auto& [x, y] : pts) absl::StrAppend(&points, absl::StrFormat("%.1f,%.1f ", px(x), py(y)));
  absl::StrAppend(&s, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"",
                  points, "\"/>\n");
  for (const auto& [x, y] : pts) {
    absl::StrAppend(&s, absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" "
                                        "fill=\"#1f77b4\"/>\n", px(x), py(y)));
  }
  absl::StrAppend(&s, "</svg>\n");
  return s;
}

}  // namespace

std::string TrafficResult::ToHtml() const {
  std::vector<std::pair<double, double>> ops, held_pts;
  for (const TrafficSample& t : timeline) {
    ops.emplace_back(t.t_s, t.page_ops_per_sec);
    held_pts.emplace_back(t.t_s, double(std::max<int64_t>(0, t.held)));
  }
  std::string s = absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ppctl traffic ",
      HtmlEscape(pattern),
      "</title>\n<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;"
      "text-align:left}th{background:#eee}.bad{color:#b00;font-weight:bold}</style></head><body>\n",
      "<h1>ppctl traffic ", HtmlEscape(pattern), "</h1>\n<table>\n");
  auto row = [&s](const std::string& k, const std::string& v, bool bad = false) {
    absl::StrAppend(&s, "<tr><th>", k, "</th><td", bad ? " class=\"bad\"" : "", ">",
                    HtmlEscape(v), "</td></tr>\n");
  };
  row("pool / device", absl::StrCat(pool_id, " / ", device_id));
  row("streams x batch", absl::StrCat(streams, " x ", batch));
  row("duration", absl::StrFormat("%.2f s", duration_s));
  row("page ops", absl::StrFormat("%d (%.0f ops/s)", page_ops, page_ops_per_sec));
  row("batches", absl::StrCat(batches));
  row("rpc latency", absl::StrFormat("p50 %.1f us, p99 %.1f us", rpc_p50_us, rpc_p99_us));
  row("inflight at the end", absl::StrCat(inflight));
  row("errors", absl::StrCat(errors, first_error.empty() ? "" : " (first: " + first_error + ")"),
      errors > 0);
  if (pattern == "destroy-under-traffic") {
    row("held at destroy", absl::StrCat(held_at_destroy));
    row("unmapped by the destroy", absl::StrCat(pages_unmapped_at_destroy));
    row("refusals after the destroy", absl::StrCat(expected_refusals));
  }
  row("violations", absl::StrCat(violations, violations == 0 ? " (clean)" : " (UNSAFE)"),
      violations > 0);
  absl::StrAppend(&s, "</table>\n<h2>Throughput</h2>\n",
                  SvgChart("page ops per second", "ops/s", ops), "<h2>Pages held</h2>\n",
                  SvgChart("pages held by the client", "pages", held_pts), "</body></html>\n");
  return s;
}

std::string TrafficResult::Summary() const {
  std::string s = absl::StrFormat(
      "traffic %s: %u streams x batch %u, %.1f s on pool %d (device %d)\n"
      "  page ops:   %d (%.0f ops/s), %d batches\n"
      "  rpc:        p50 %.1f us, p99 %.1f us\n"
      "  inflight:   %d pages in the pool at the end (kernel count: cache and ring included)\n"
      "  errors:     %d",
      pattern, streams, batch, duration_s, pool_id, device_id, page_ops, page_ops_per_sec, batches,
      rpc_p50_us, rpc_p99_us, inflight, errors);
  if (!first_error.empty()) absl::StrAppend(&s, " (first: ", first_error, ")");
  absl::StrAppend(&s, "\n");
  if (pattern == "destroy-under-traffic") {
    absl::StrAppend(&s, "  destroy:    ", held_at_destroy, " pages held by the client, ",
                    pages_unmapped_at_destroy, " unmapped by the destroy, ", expected_refusals,
                    " refusals after it (expected)\n");
  }
  absl::StrAppend(&s, "  violations: ", violations, violations == 0 ? " (clean)" : " (UNSAFE)",
                  "\n");
  return s;
}

absl::StatusOr<TrafficResult> RunTraffic(Client& client, const TrafficOptions& o) {
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
  TrafficResult res;
  res.pattern = o.pattern;
  res.streams = o.streams;
  res.batch = o.batch;
  bool created = false;
  if (o.pool_id == 0) {
    v1::CreateDeviceRequest dr;
    dr.set_name(absl::StrCat("ppctl-", o.pattern));
    dr.set_iommu_mode(o.iommu_mode);
    auto d = client.CreateDevice(dr);
    if (!d.ok()) return d.status();
    res.device_id = d->device().id();
    v1::CreatePoolRequest pr;
    pr.set_device_id(res.device_id);
    pr.set_order(o.order);
    pr.set_strategy(o.strategy);
    pr.set_napi_id(1);
    auto p = client.CreatePool(pr);
    if (!p.ok()) return p.status();
    res.pool_id = p->pool().id();
    created = true;
  } else {
    auto p = client.GetPool(o.pool_id);
    if (!p.ok()) return p.status();
    res.pool_id = o.pool_id;
    res.device_id = p->pool().device_id();
  }

  Shared sh;
  std::vector<std::unique_ptr<StreamWorker>> workers;
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < o.streams; ++i) {
    workers.push_back(std::make_unique<StreamWorker>(client, o, res.pool_id, sh));
  }
  auto start = Clock::now();
  absl::Status thread_error;
  for (auto& w : workers) {
    try {
      threads.emplace_back([&w] { w->Run(); });
    } catch (const std::system_error& e) {
      // Out of threads: stop the streams already started and report it (never abort).
      thread_error = absl::ResourceExhaustedError(absl::StrCat(
          "cannot start stream ", threads.size() + 1, " of ", o.streams, ": ", e.what()));
      break;
    }
  }
  if (!thread_error.ok()) {
    sh.stop = true;
    for (auto& t : threads) t.join();
    return thread_error;
  }

  const bool dut = o.pattern == "destroy-under-traffic";
  const double run_s = dut ? o.duration_s / 2 : o.duration_s;
  auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(run_s));
  uint64_t last_ops = 0;
  auto last = start;
  auto sample = [&] {
    auto now = Clock::now();
    uint64_t ops = sh.page_ops.load();
    double dt = std::chrono::duration<double>(now - last).count();
    TrafficSample ts;
    ts.t_s = std::chrono::duration<double>(now - start).count();
    ts.page_ops_per_sec = dt > 0 ? double(ops - last_ops) / dt : 0;
    ts.held = sh.held.load();
    ts.errors = sh.errors.load();
    res.timeline.push_back(ts);
    if (o.progress) {
      o.progress(absl::StrFormat("[%5.1f s] %.0f page ops/s, %d batches, %d held, %d errors",
                                 ts.t_s, ts.page_ops_per_sec, sh.batches.load(), ts.held,
                                 ts.errors));
    }
    last_ops = ops;
    last = now;
  };
  while (Clock::now() < deadline) {
    auto next = std::min(deadline, last + std::chrono::seconds(1));
    std::this_thread::sleep_until(next);
    if (Clock::now() >= last + std::chrono::seconds(1)) sample();
  }
  if (Clock::now() - last >= std::chrono::milliseconds(200)) sample();  // the last partial second
  absl::Status setup_error;
  if (dut) {
    res.held_at_destroy = uint64_t(std::max<int64_t>(0, sh.held.load()));
    sh.destroying = true;
    if (o.unbind) {
      auto u = client.UnbindDevice(res.device_id);
      if (u.ok()) res.pages_unmapped_at_destroy = u->pages_unmapped();
      else setup_error = u.status();
    } else {
      auto d = client.DestroyPool(res.pool_id);
      if (d.ok()) res.pages_unmapped_at_destroy = d->pages_unmapped();
      else setup_error = d.status();
    }
    sh.destroyed = true;
    // Keep the streams busy for the rest of the run only as long as they still hold pages.
  }
  sh.stop = true;
  for (auto& t : threads) t.join();
  auto end = Clock::now();
  if (!setup_error.ok()) return setup_error;

  res.duration_s = std::chrono::duration<double>(end - start).count();
  res.batches = sh.batches.load();
  res.page_ops = sh.page_ops.load();
  res.page_ops_per_sec = res.duration_s > 0 ? double(res.page_ops) / res.duration_s : 0;
  res.errors = sh.errors.load();
  res.expected_refusals = sh.expected.load();
  {
    std::lock_guard<std::mutex> l(sh.mu);
    res.first_error = sh.first_error;
    if (!sh.fatal.empty()) {
      ++res.errors;
      if (res.first_error.empty()) res.first_error = sh.fatal;
    }
  }
  std::vector<float> all;
  for (auto& w : workers) all.insert(all.end(), w->latencies().begin(), w->latencies().end());
  res.rpc_p50_us = Percentile(all, 0.50);
  res.rpc_p99_us = Percentile(all, 0.99);

  auto pool = client.GetPool(res.pool_id);
  if (pool.ok()) {
    res.inflight = pool->pool().inflight();
  } else if (pool.status().code() != absl::StatusCode::kNotFound) {
    return pool.status();
  }
  auto dom = client.GetDomain(res.device_id);
  if (!dom.ok()) return dom.status();
  res.violations = dom->domain().violations().total();

  if (created && !o.keep && o.pattern != "leak" && !dut && pool.ok()) {
    auto d = client.DestroyPool(res.pool_id);
    if (!d.ok()) return d.status();
  }
  return res;
}

}  // namespace pagepool::client
