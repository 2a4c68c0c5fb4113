#include "client/compare.h"

#include <netdb.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/format.h"
#include <sys/socket.h>

namespace pagepool::client {
namespace v1 = ::pagepool::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr char kTraceHeader[] = "ppctl-compare-trace v1";
// Pages a late Return gives back per call (below any sensible --max-pages-per-call).
constexpr uint32_t kReturnChunk = 4096;
// How long the /metrics scrape may take.
constexpr int kMetricsTimeoutMs = 5000;

// splitmix64: the same numbers from the same seed on every platform (std's distributions are not).
class TraceRandom {
 public:
  explicit TraceRandom(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); REQUIRES n > 0.
  uint32_t Below(uint32_t n) {
    return static_cast<uint32_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }

 private:
  uint64_t state_;
};

// Removes the items at `a` and `b` (distinct positions, < items->size()) by the trace's rule: in
// decreasing position order, each by moving the last item into its place.
template <typename T>
void RemoveAt(std::vector<T>* items, const std::vector<uint32_t>& a, const std::vector<uint32_t>& b,
              std::vector<uint32_t>* scratch) {
  scratch->assign(a.begin(), a.end());
  scratch->insert(scratch->end(), b.begin(), b.end());
  std::sort(scratch->begin(), scratch->end(), std::greater<uint32_t>());
  for (uint32_t p : *scratch) {
    (*items)[p] = items->back();
    items->pop_back();
  }
}

// Recomputes the derived fields of a trace; INVALID_ARGUMENT (via `where`) for a bad batch.
absl::Status Derive(CompareTrace* t, const std::function<std::string(size_t batch_index)>& where) {
  t->page_ops = t->held_at_end = t->peak_held = t->max_batch_pages = 0;
  uint64_t held = 0;
  std::vector<char> seen;
  for (size_t i = 0; i < t->batches.size(); ++i) {
    const TraceBatch& b = t->batches[i];
    const size_t gives = b.recycle.size() + b.return_pages.size();
    if (b.allocate == 0 && gives == 0) {
      return absl::InvalidArgumentError(absl::StrCat(where(i), ": an empty batch"));
    }
    seen.assign(held, 0);
    for (const auto* list : {&b.recycle, &b.return_pages}) {
      for (uint32_t p : *list) {
        if (p >= held) {
          return absl::InvalidArgumentError(
              absl::StrCat(where(i), ": position ", p, " is not below the ", held, " pages held"));
        }
        if (seen[p]) {
          return absl::InvalidArgumentError(
              absl::StrCat(where(i), ": position ", p, " is named twice"));
        }
        seen[p] = 1;
      }
    }
    held = held - gives + b.allocate;
    t->page_ops += b.allocate + gives;
    t->peak_held = std::max(t->peak_held, held);
    t->max_batch_pages = std::max({t->max_batch_pages, b.allocate, static_cast<uint32_t>(gives)});
  }
  if (t->batches.empty()) return absl::InvalidArgumentError(absl::StrCat(where(0), ": no batch"));
  t->held_at_end = held;
  return absl::OkStatus();
}

// Median of `v` (the lower middle for an even count); 0 for none.
template <typename T>
T Median(std::vector<T> v) {
  if (v.empty()) return T();
  std::sort(v.begin(), v.end());
  return v[(v.size() - 1) / 2];
}

std::string JsonString(const std::string& in) {
  std::string out = "\"";
  for (char c : in) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
    } else {
      out.push_back(c);
    }
  }
  return out + "\"";
}

// "12,345,678".
std::string Grouped(uint64_t v) {
  std::string digits = absl::StrCat(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string Millis(uint64_t ns) { return absl::StrFormat("%.3f ms", double(ns) / 1e6); }

// "v" when every round agrees, else "min-max".
template <typename Get>
std::string RoundsValue(const CompareRow& row, Get get) {
  if (row.rounds.empty()) return "-";
  uint64_t lo = get(row.rounds[0]), hi = lo;
  for (const CompareRound& r : row.rounds) {
    lo = std::min<uint64_t>(lo, get(r));
    hi = std::max<uint64_t>(hi, get(r));
  }
  return lo == hi ? absl::StrCat(lo) : absl::StrCat(lo, "-", hi);
}

// GET http://address/metrics; the body.
absl::StatusOr<std::string> FetchMetrics(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics '", address, "' is not HOST:PORT (or off)"));
  }
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics ", address, ": cannot resolve: ", gai_strerror(rc)));
  }
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof(err);
      if (poll(&p, 1, kMetricsTimeoutMs) == 1 &&
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0) {
        errno = err;
        rc = err == 0 ? 0 : -1;
      } else {
        errno = ETIMEDOUT;
      }
    }
    if (rc != 0) {
      error = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("metrics ", address, ": ", error));
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
  std::string response;
  size_t sent = 0;
  const auto deadline = Clock::now() + std::chrono::milliseconds(kMetricsTimeoutMs);
  while (true) {
    const int left =
        int(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0) {
      close(fd);
      return absl::DeadlineExceededError(
          absl::StrCat("metrics ", address, ": no answer in ", kMetricsTimeoutMs, " ms"));
    }
    pollfd p{fd, short(sent < request.size() ? POLLOUT : POLLIN), 0};
    if (poll(&p, 1, left) <= 0) continue;
    if (sent < request.size()) {
      ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) break;
      if (n > 0) sent += size_t(n);
      continue;
    }
    char buf[16384];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      break;
    }
    response.append(buf, size_t(n));
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.compare(0, 5, "HTTP/") != 0 || body == std::string::npos ||
      response.find(" 200 ") > response.find("\r\n")) {
    return absl::UnavailableError(absl::StrCat("metrics ", address, ": not a /metrics answer: ",
                                               response.substr(0, response.find("\r\n"))));
  }
  return response.substr(body + 4);
}

v1::Strategy StrategyOf(const std::string& name) {
  if (name == "xarray") return v1::STRATEGY_XARRAY;
  if (name == "scan") return v1::STRATEGY_SCAN;
  return v1::STRATEGY_NONE;
}

// A handle the client holds.
struct Held {
  uint64_t frame;
  uint32_t generation;
};

// One replay of a trace on one device and pool, with the device's teardown.
//
// Thread safety: one thread.
class RoundRun {
 public:
  RoundRun(Client& client, const CompareOptions& o, const CompareTrace& trace)
      : client_(client), o_(o), trace_(trace) {}
  ~RoundRun() { (void)CleanUp(); }

  // Creates the device and the pool.
  absl::Status SetUp(const std::string& strategy, const std::string& name, CompareResult* settings);
  // Replays the trace on the pool (timed); the held pages stay in held_.
  absl::Status Replay(CompareRound* r);
  // GetPool, /metrics, DestroyPool, UnbindDevice, the late returns, GetDomain.
  absl::Status Measure(CompareRound* r);
  // Unbinds the device (unless done) and returns the pages still held; the first failure.
  absl::Status CleanUp();
  // A warm-up's end: the held pages returned while the device is bound, then the unbind (no
  // violation).
  absl::Status ReturnThenUnbind() {
    if (absl::Status s = ReturnHeld(nullptr); !s.ok()) return s;
    return CleanUp();
  }
  // The device SetUp created (0 before).
  uint64_t device_id() const { return device_id_; }

 private:
  absl::Status ReturnHeld(uint64_t* returned);

  Client& client_;
  const CompareOptions& o_;
  const CompareTrace& trace_;
  uint64_t device_id_ = 0;
  uint64_t pool_id_ = 0;
  bool unbound_ = false;
  std::vector<Held> held_;
};

absl::Status RoundRun::SetUp(const std::string& strategy, const std::string& name,
                             CompareResult* settings) {
  v1::CreateDeviceRequest dr;
  dr.set_name(name);
  if (!o_.iommu_mode.empty()) {
    std::string upper = o_.iommu_mode;
    for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
    v1::IommuMode mode;
    if (!v1::IommuMode_Parse("IOMMU_MODE_" + upper, &mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--iommu-mode: '", o_.iommu_mode, "' is not strict, lazy or passthrough"));
    }
    dr.set_iommu_mode(mode);
  }
  if (o_.no_free_empty_tables) dr.set_free_empty_tables(false);
  auto d = client_.CreateDevice(dr);
  if (!d.ok()) return d.status();
  device_id_ = d->device().id();
  if (settings != nullptr) {
    settings->iommu_mode = EnumLabel(v1::IommuMode_Name(d->device().iommu_mode()), "IOMMU_MODE_");
    settings->free_empty_tables = d->device().free_empty_tables();
  }
  v1::CreatePoolRequest pr;
  pr.set_device_id(device_id_);
  pr.set_strategy(StrategyOf(strategy));
  pr.set_napi_id(1);
  auto p = client_.CreatePool(pr);
  if (!p.ok()) return p.status();
  pool_id_ = p->pool().id();
  return absl::OkStatus();
}

absl::Status RoundRun::Replay(CompareRound* r) {
  r->device_id = device_id_;
  r->pool_id = pool_id_;
  held_.clear();
  held_.reserve(trace_.peak_held);
  grpc::ClientContext ctx;
  auto stream = client_.stub()->Traffic(&ctx);
  v1::TrafficRequest req;
  v1::TrafficResponse resp;
  std::vector<uint32_t> scratch;
  absl::Status refused;
  uint64_t seq = 0;
  const auto start = Clock::now();
  for (const TraceBatch& b : trace_.batches) {
    req.Clear();
    req.set_pool_id(pool_id_);
    req.set_seq(++seq);
    req.set_allocate(b.allocate);
    req.set_napi_local(true);
    for (uint32_t p : b.recycle) {
      v1::PageHandle* h = req.add_recycle();
      h->set_frame(held_[p].frame);
      h->set_generation(held_[p].generation);
    }
    for (uint32_t p : b.return_pages) {
      v1::PageHandle* h = req.add_return_pages();
      h->set_frame(held_[p].frame);
      h->set_generation(held_[p].generation);
    }
    RemoveAt(&held_, b.recycle, b.return_pages, &scratch);
    if (!stream->Write(req) || !stream->Read(&resp)) break;
    for (const v1::Page& page : resp.allocated()) {
      held_.push_back({page.handle().frame(), page.handle().generation()});
    }
    if (resp.errors() != 0) {
      refused = absl::Status(static_cast<absl::StatusCode>(resp.error_code()),
                             absl::StrCat("Traffic batch ", seq, ": ", resp.error_message()));
      break;
    }
    if (uint32_t(resp.allocated_size()) != b.allocate) {
      refused = absl::InternalError(absl::StrCat("Traffic batch ", seq, ": asked for ", b.allocate,
                                                 " pages, got ", resp.allocated_size()));
      break;
    }
    r->page_ops += b.allocate + b.recycle.size() + b.return_pages.size();
    ++r->batches;
  }
  const auto end = Clock::now();
  stream->WritesDone();
  const absl::Status finished = FromGrpc(stream->Finish());
  if (!refused.ok()) return refused;
  if (!finished.ok()) {
    return absl::Status(finished.code(), absl::StrCat("Traffic: ", finished.message()));
  }
  if (r->batches != trace_.batches.size()) {
    return absl::UnavailableError("Traffic: the stream ended before the last batch");
  }
  r->traffic_ns =
      uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count());
  r->ns_per_page_op = r->page_ops ? double(r->traffic_ns) / double(r->page_ops) : 0;
  return absl::OkStatus();
}

absl::Status RoundRun::Measure(CompareRound* r) {
  auto pool = client_.GetPool(pool_id_);
  if (!pool.ok()) return pool.status();
  const v1::PoolStats& st = pool->pool().stats();
  r->alloc_fast = st.alloc_fast();
  r->alloc_slow = st.alloc_slow();
  r->recycle_cached = st.recycle_cached();
  r->recycle_ring = st.recycle_ring();
  r->recycle_released = st.recycle_ring_full() + st.recycle_released_refcnt();
  r->inflight = pool->pool().inflight();
  if (o_.metrics != "off") {
    auto text = FetchMetrics(o_.metrics);
    if (!text.ok()) {
      return absl::Status(text.status().code(),
                          absl::StrCat(text.status().message(),
                                       " (index bytes come from pagepoold's /metrics: give its "
                                       "address with --metrics HOST:PORT, or --metrics off)"));
    }
    auto bytes = ParseIndexBytes(*text, pool_id_);
    if (!bytes) {
      return absl::NotFoundError(absl::StrCat("metrics ", o_.metrics,
                                              ": no pool_index_bytes of pool ", pool_id_,
                                              " (is it this daemon's /metrics?)"));
    }
    r->index_bytes = int64_t(*bytes);
  }
  auto d = client_.DestroyPool(pool_id_);
  if (!d.ok()) return d.status();
  r->inflight_at_destroy = d->inflight_at_destroy();
  r->destroy_ns = d->duration_ns();
  r->pages_unmapped = d->pages_unmapped();
  r->frames_scanned = d->frames_scanned();
  auto u = client_.UnbindDevice(device_id_);
  if (!u.ok()) return u.status();
  unbound_ = true;
  if (absl::Status s = ReturnHeld(&r->late_returned); !s.ok()) return s;
  auto dom = client_.GetDomain(device_id_);
  if (!dom.ok()) return dom.status();
  const v1::Violations& v = dom->domain().violations();
  r->violations = v.total();
  r->live_at_unbind = v.live_at_unbind();
  r->call_after_unbind = v.call_after_unbind();
  return absl::OkStatus();
}

absl::Status RoundRun::ReturnHeld(uint64_t* returned) {
  while (!held_.empty()) {
    const size_t n = std::min<size_t>(held_.size(), kReturnChunk);
    v1::ReturnRequest req;
    req.set_pool_id(pool_id_);
    for (size_t i = held_.size() - n; i < held_.size(); ++i) {
      v1::PageHandle* h = req.add_pages();
      h->set_frame(held_[i].frame);
      h->set_generation(held_[i].generation);
    }
    auto r = client_.Return(req);
    if (!r.ok()) return r.status();
    held_.resize(held_.size() - n);
    if (returned != nullptr) *returned += r->returned();
  }
  return absl::OkStatus();
}

absl::Status RoundRun::CleanUp() {
  absl::Status first;
  if (device_id_ != 0 && !unbound_) {
    auto u = client_.UnbindDevice(device_id_);
    if (u.ok() || u.status().code() == absl::StatusCode::kFailedPrecondition) unbound_ = true;
    first.Update(u.status());
  }
  if (pool_id_ != 0 && !held_.empty()) first.Update(ReturnHeld(nullptr));
  held_.clear();
  return first;
}

// Deletes the devices a compare made once it is over, however it ends, so that repeated compares
// do not fill pagepoold's --max-devices. Each was unbound and got its pages back; its detached
// pool goes at the daemon's next 1 s tick, so a delete refused for that is retried for a while.
// Best effort: a device left behind is only a slot.
class DeviceReaper {
 public:
  explicit DeviceReaper(Client& client) : client_(client) {}
  ~DeviceReaper() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (uint64_t id : devices_) {
      while (true) {
        auto d = client_.DeleteDevice(id);
        if (d.ok() || d.status().code() != absl::StatusCode::kFailedPrecondition ||
            std::chrono::steady_clock::now() > deadline) {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
  }
  void Add(uint64_t device_id) {
    if (device_id != 0) devices_.push_back(device_id);
  }

 private:
  Client& client_;
  std::vector<uint64_t> devices_;
};

// The status of a failed step, with the hint of what to change.
absl::Status WithHint(const absl::Status& s, const std::string& step) {
  const std::string hint = CompareLimitHint(s);
  return absl::Status(s.code(),
                      absl::StrCat(step, ": ", s.message(), hint.empty() ? "" : " -- ", hint));
}

}  // namespace

absl::StatusOr<CompareTrace> GenerateTrace(const TraceParams& p) {
  if (p.batch == 0) return absl::InvalidArgumentError("--batch must be at least 1");
  if (p.return_pct > 100) return absl::InvalidArgumentError("--return-pct must be 0..100");
  if (p.working_set < p.batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("--working-set ", p.working_set, " is below --batch ", p.batch));
  }
  TraceRandom rnd(p.seed);
  CompareTrace t;
  std::vector<uint32_t> held;  // page names; only the count matters to the positions
  uint32_t next_name = 0;
  std::vector<uint32_t> scratch;
  std::unordered_set<uint32_t> chosen;
  const auto apply = [&](TraceBatch b) {
    RemoveAt(&held, b.recycle, b.return_pages, &scratch);
    for (uint32_t i = 0; i < b.allocate; ++i) held.push_back(next_name++);
    t.batches.push_back(std::move(b));
  };
  // Churn: allocate `batch`, give back what passes the working set, at random positions.
  for (uint32_t i = 0; i < p.batches; ++i) {
    TraceBatch b;
    b.allocate = p.batch;
    const uint32_t h = uint32_t(held.size());
    const uint32_t give =
        h + p.batch > p.working_set ? std::min(h, h + p.batch - p.working_set) : 0;
    chosen.clear();
    while (chosen.size() < give) {
      const uint32_t pos = rnd.Below(h);
      if (!chosen.insert(pos).second) continue;
      (rnd.Below(100) < p.return_pct ? b.return_pages : b.recycle).push_back(pos);
    }
    apply(std::move(b));
  }
  // Drain: everything back, `batch` pages a batch, the same mix.
  while (!held.empty()) {
    TraceBatch b;
    const uint32_t n = std::min<uint32_t>(p.batch, uint32_t(held.size()));
    for (uint32_t k = 0; k < n; ++k) {
      const uint32_t pos = uint32_t(held.size()) - 1 - k;
      (rnd.Below(100) < p.return_pct ? b.return_pages : b.recycle).push_back(pos);
    }
    apply(std::move(b));
  }
  // Fill: drain the cache and the ring, then keep `inflight` pages.
  const uint32_t fill = std::max(p.inflight, kTraceMinFill);
  for (uint32_t done = 0; done < fill;) {
    TraceBatch b;
    b.allocate = std::min(p.batch, fill - done);
    done += b.allocate;
    apply(std::move(b));
  }
  while (held.size() > p.inflight) {
    TraceBatch b;
    const uint32_t n = std::min<uint32_t>(p.batch, uint32_t(held.size()) - p.inflight);
    for (uint32_t k = 0; k < n; ++k) b.return_pages.push_back(uint32_t(held.size()) - 1 - k);
    apply(std::move(b));
  }
  if (absl::Status s = Derive(&t, [](size_t i) { return absl::StrCat("generated batch ", i + 1); });
      !s.ok()) {
    return s;
  }
  return t;
}

std::string FormatTrace(const CompareTrace& t) {
  std::string out = absl::StrCat(kTraceHeader, "\n# ", t.batches.size(), " batches, ", t.page_ops,
                                 " page ops, ", t.held_at_end, " pages held at the end\n");
  for (const TraceBatch& b : t.batches) {
    std::string line;
    if (b.allocate != 0) absl::StrAppend(&line, "A ", b.allocate);
    for (const auto& [tag, list] : {std::pair{"R", &b.recycle}, std::pair{"T", &b.return_pages}}) {
      if (list->empty()) continue;
      absl::StrAppend(&line, line.empty() ? "" : " ", tag);
      for (uint32_t pos : *list) absl::StrAppend(&line, " ", pos);
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

absl::StatusOr<CompareTrace> ParseTrace(const std::string& text, const std::string& name) {
  CompareTrace t;
  std::vector<size_t> line_of;  // line number of each batch
  bool header = false;
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    const std::string where = absl::StrCat("trace ", name, " line ", line_no);
    if (!header) {
      if (line != kTraceHeader) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": not a ppctl compare trace (the first line must be '", kTraceHeader, "')"));
      }
      header = true;
      continue;
    }
    TraceBatch b;
    std::vector<uint32_t>* list = nullptr;
    bool allocate_next = false, allocated = false;
    for (absl::string_view tok : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
      if (tok == "A" || tok == "R" || tok == "T") {
        if (allocate_next)
          return absl::InvalidArgumentError(absl::StrCat(where, ": A needs a count"));
        if ((tok == "A" && allocated) || (tok == "R" && !b.recycle.empty()) ||
            (tok == "T" && !b.return_pages.empty())) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": ", tok, " given twice"));
        }
        allocate_next = tok == "A";
        list = tok == "R" ? &b.recycle : tok == "T" ? &b.return_pages : nullptr;
        continue;
      }
      uint32_t v = 0;
      if (!absl::SimpleAtoi(tok, &v)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": '", tok, "' is neither A, R, T nor a number"));
      }
      if (allocate_next) {
        b.allocate = v;
        allocate_next = false;
        allocated = true;
      } else if (list != nullptr) {
        list->push_back(v);
      } else {
        return absl::InvalidArgumentError(absl::StrCat(where, ": number ", v, " before A, R or T"));
      }
    }
    if (allocate_next) return absl::InvalidArgumentError(absl::StrCat(where, ": A needs a count"));
    t.batches.push_back(std::move(b));
    line_of.push_back(line_no);
  }
  if (!header) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace ", name, ": empty, not a ppctl compare trace"));
  }
  if (t.batches.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("trace ", name, ": no batch"));
  }
  if (absl::Status s =
          Derive(&t, [&](size_t i) { return absl::StrCat("trace ", name, " line ", line_of[i]); });
      !s.ok()) {
    return s;
  }
  return t;
}

std::optional<uint64_t> ParseIndexBytes(const std::string& metrics_text, uint64_t pool_id) {
  const std::string prefix = "pagepool_pool_index_bytes{";
  const std::string label = absl::StrCat("pool_id=\"", pool_id, "\"");
  for (absl::string_view line : absl::StrSplit(metrics_text, '\n')) {
    if (!absl::ConsumePrefix(&line, prefix)) continue;
    const size_t close = line.find('}');
    if (close == absl::string_view::npos) continue;
    const absl::string_view labels = line.substr(0, close);
    bool match = false;
    for (absl::string_view l : absl::StrSplit(labels, ',')) match = match || l == label;
    if (!match) continue;
    uint64_t v = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(close + 1)), &v)) return v;
  }
  return std::nullopt;
}

std::string DefaultMetricsAddress(const std::string& grpc_target) {
  absl::string_view target = grpc_target;
  absl::ConsumePrefix(&target, "dns:///");
  absl::ConsumePrefix(&target, "ipv4:");
  absl::ConsumePrefix(&target, "ipv6:");
  if (absl::StartsWith(target, "unix:")) return "";
  const size_t colon = target.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return "";
  const absl::string_view host = target.substr(0, colon);
  if (host.find(':') != absl::string_view::npos && host.front() != '[') return "";
  return absl::StrCat(host, ":9464");
}

std::string CompareLimitHint(const absl::Status& s) {
  const absl::string_view m = s.message();
  const auto has = [&](absl::string_view w) { return m.find(w) != absl::string_view::npos; };
  if (absl::IsUnavailable(s)) {
    return "is pagepoold running at --target (or the address given)?";
  }
  if (!absl::IsResourceExhausted(s)) return "";
  if (has("--max-devices")) {
    return "a compare needs 3 x --repeat + --warmup devices at once besides the daemon's others "
           "(it deletes its own when done): start pagepoold with a higher --max-devices, delete "
           "unbound devices (ppctl delete-device), or lower --repeat";
  }
  if (has("--max-held-per-stream")) {
    return "the traffic holds up to --inflight pages (or --working-set, if higher) on one stream: "
           "start pagepoold with a higher --max-held-per-stream, or lower --inflight";
  }
  if (has("--max-pages-per-call")) {
    return "lower --batch, or start pagepoold with a higher --max-pages-per-call";
  }
  if (has("--max-message-bytes")) {
    return "lower --batch, or start pagepoold with a higher --max-message-bytes";
  }
  if (has("--max-pools")) return "start pagepoold with a higher --max-pools";
  if (has("out of simulated memory")) {
    return "lower --inflight, or start pagepoold with more --memory-gib";
  }
  if (has("IOVA space")) return "lower --inflight";
  if (has("ID space")) return "lower --inflight";
  return "";
}

void SummarizeCompareRows(std::vector<CompareRow>* rows) {
  for (CompareRow& row : *rows) {
    std::vector<uint64_t> destroy;
    std::vector<double> per_op;
    for (const CompareRound& r : row.rounds) {
      destroy.push_back(r.destroy_ns);
      per_op.push_back(r.ns_per_page_op);
    }
    row.destroy_ns_best = destroy.empty() ? 0 : *std::min_element(destroy.begin(), destroy.end());
    row.destroy_ns_median = Median(destroy);
    row.ns_per_op_best = per_op.empty() ? 0 : *std::min_element(per_op.begin(), per_op.end());
    row.ns_per_op_median = Median(per_op);
  }
  const auto none = std::find_if(rows->begin(), rows->end(),
                                 [](const CompareRow& r) { return r.strategy == "none"; });
  for (CompareRow& row : *rows) {
    if (none == rows->end()) break;
    row.ratio_best = none->ns_per_op_best > 0 ? row.ns_per_op_best / none->ns_per_op_best : 0;
    row.ratio_median =
        none->ns_per_op_median > 0 ? row.ns_per_op_median / none->ns_per_op_median : 0;
    row.extra_ns_best = row.ns_per_op_best - none->ns_per_op_best;
    row.extra_ns_median = row.ns_per_op_median - none->ns_per_op_median;
  }
}

bool CompareResult::TrackedViolations() const {
  for (const CompareRow& row : rows) {
    if (row.strategy == "none") continue;
    for (const CompareRound& r : row.rounds) {
      if (r.violations != 0) return true;
    }
  }
  return false;
}

std::string CompareResult::Table() const {
  std::string out = absl::StrFormat(
      "ppctl compare: the same traffic against each strategy (%s: %s batches, %s page ops on one "
      "Traffic stream), %s pages left in flight at the destroy\n"
      "devices: iommu %s, free_empty_tables %s; %u measured round%s after %u warm-up, strategies "
      "in rotated order; times are the best of the rounds\n\n",
      traffic, Grouped(trace_batches), Grouped(trace_page_ops), Grouped(inflight), iommu_mode,
      free_empty_tables ? "on" : "off", repeat, repeat == 1 ? "" : "s", warmup);
  const std::vector<std::string> head = {
      "strategy",      "destroy",     "pages unmapped", "frames scanned", "ns/page op best/median",
      "tracking cost", "index bytes", "violations"};
  std::vector<std::vector<std::string>> cells = {head};
  for (const CompareRow& row : rows) {
    std::string cost = row.strategy == "none"
                           ? std::string("1.00x (baseline)")
                           : absl::StrFormat("%.2fx (%+.0f ns)", row.ratio_best, row.extra_ns_best);
    cells.push_back({
        row.strategy,
        Millis(row.destroy_ns_best),
        RoundsValue(row, [](const CompareRound& r) { return r.pages_unmapped; }),
        RoundsValue(row, [](const CompareRound& r) { return r.frames_scanned; }),
        absl::StrFormat("%.1f / %.1f", row.ns_per_op_best, row.ns_per_op_median),
        cost,
        index_bytes_known
            ? RoundsValue(row, [](const CompareRound& r) { return uint64_t(r.index_bytes); })
            : std::string("n/a"),
        RoundsValue(row, [](const CompareRound& r) { return r.violations; }),
    });
  }
  std::vector<size_t> width(head.size(), 0);
  for (const auto& line : cells) {
    for (size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
  }
  for (const auto& line : cells) {
    std::string text;
    for (size_t i = 0; i < line.size(); ++i) {
      // The first column to the left, the figures to the right.
      const std::string pad(width[i] - line[i].size(), ' ');
      absl::StrAppend(&text, i == 0 ? "" : "  ", i == 0 ? line[i] + pad : pad + line[i]);
    }
    absl::StrAppend(&out, text, "\n");
  }
  absl::StrAppend(&out,
                  "\ndestroy: DestroyPool's duration; ns/page op: the traffic's wall time on the "
                  "client over its page ops, best and median round; tracking cost: the best "
                  "against none's best\n");
  if (!index_bytes_known) {
    absl::StrAppend(&out, "index bytes: n/a (--metrics off)\n");
  }
  for (const CompareRow& row : rows) {
    if (row.rounds.empty()) continue;
    const CompareRound& r = row.rounds.back();
    if (r.violations == 0) continue;
    absl::StrAppendFormat(&out,
                          "violations of %s (last round): %d live at unbind, %d DMA-API calls "
                          "after unbind (the late returns of the %d pages held)\n",
                          row.strategy, r.live_at_unbind, r.call_after_unbind, r.late_returned);
  }
  return out;
}

std::string CompareResult::ToJson() const {
  std::string s = "{\n";
  absl::StrAppend(&s, "  \"traffic\": ", JsonString(traffic), ",\n");
  absl::StrAppend(&s, "  \"iommu_mode\": ", JsonString(iommu_mode), ",\n");
  absl::StrAppend(&s, "  \"free_empty_tables\": ", free_empty_tables ? "true" : "false", ",\n");
  absl::StrAppend(&s, "  \"trace_batches\": ", trace_batches, ",\n");
  absl::StrAppend(&s, "  \"trace_page_ops\": ", trace_page_ops, ",\n");
  absl::StrAppend(&s, "  \"inflight\": ", inflight, ",\n");
  absl::StrAppend(&s, "  \"repeat\": ", repeat, ",\n");
  absl::StrAppend(&s, "  \"warmup\": ", warmup, ",\n");
  absl::StrAppend(&s, "  \"times\": \"best and median of the rounds\",\n");
  absl::StrAppend(&s, "  \"strategies\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const CompareRow& row = rows[i];
    absl::StrAppend(&s, i == 0 ? "\n" : ",\n", "    {\n");
    absl::StrAppend(&s, "      \"strategy\": ", JsonString(row.strategy), ",\n");
    absl::StrAppendFormat(&s,
                          "      \"destroy_ns_best\": %d,\n      \"destroy_ns_median\": %d,\n"
                          "      \"ns_per_page_op_best\": %.3f,\n"
                          "      \"ns_per_page_op_median\": %.3f,\n"
                          "      \"tracking_ratio_best\": %.4f,\n"
                          "      \"tracking_ratio_median\": %.4f,\n"
                          "      \"tracking_extra_ns_best\": %.3f,\n"
                          "      \"tracking_extra_ns_median\": %.3f,\n",
                          row.destroy_ns_best, row.destroy_ns_median, row.ns_per_op_best,
                          row.ns_per_op_median, row.ratio_best, row.ratio_median, row.extra_ns_best,
                          row.extra_ns_median);
    absl::StrAppend(&s, "      \"rounds\": [");
    for (size_t k = 0; k < row.rounds.size(); ++k) {
      const CompareRound& r = row.rounds[k];
      absl::StrAppend(&s, k == 0 ? "\n" : ",\n");
      absl::StrAppendFormat(
          &s,
          "        {\"round\": %d, \"device_id\": %d, \"pool_id\": %d, \"batches\": %d, "
          "\"page_ops\": %d, \"traffic_ns\": %d, \"ns_per_page_op\": %.3f, \"alloc_fast\": %d, "
          "\"alloc_slow\": %d, \"recycle_cached\": %d, \"recycle_ring\": %d, "
          "\"recycle_released\": %d, \"inflight\": %d, \"index_bytes\": %s, "
          "\"inflight_at_destroy\": %d, \"destroy_ns\": %d, \"pages_unmapped\": %d, "
          "\"frames_scanned\": %d, \"late_returned\": %d, \"violations\": %d, "
          "\"live_at_unbind\": %d, \"call_after_unbind\": %d}",
          r.round, r.device_id, r.pool_id, r.batches, r.page_ops, r.traffic_ns, r.ns_per_page_op,
          r.alloc_fast, r.alloc_slow, r.recycle_cached, r.recycle_ring, r.recycle_released,
          r.inflight, r.index_bytes < 0 ? std::string("null") : absl::StrCat(r.index_bytes),
          r.inflight_at_destroy, r.destroy_ns, r.pages_unmapped, r.frames_scanned, r.late_returned,
          r.violations, r.live_at_unbind, r.call_after_unbind);
    }
    absl::StrAppend(&s, row.rounds.empty() ? "]\n" : "\n      ]\n", "    }");
  }
  absl::StrAppend(&s, rows.empty() ? "]\n" : "\n  ]\n", "}\n");
  return s;
}

absl::StatusOr<CompareResult> RunCompare(Client& client, const CompareTrace& trace,
                                         const std::string& traffic,
                                         const CompareOptions& options) {
  if (options.repeat == 0) return absl::InvalidArgumentError("--repeat must be at least 1");
  CompareResult res;
  res.traffic = traffic;
  res.trace_batches = trace.batches.size();
  res.trace_page_ops = trace.page_ops;
  res.inflight = trace.held_at_end;
  res.repeat = options.repeat;
  res.warmup = options.warmup;
  res.index_bytes_known = options.metrics != "off";
  const std::vector<std::string> order = {"xarray", "scan", "none"};
  for (const std::string& s : order) res.rows.push_back({s, {}});
  DeviceReaper reaper(client);
  const auto say = [&](const std::string& line) {
    if (options.progress) options.progress(line);
  };
  // One replay; `row` null for a warm-up.
  const auto one = [&](const std::string& strategy, uint32_t round,
                       CompareRow* row) -> absl::Status {
    const std::string name = row == nullptr ? absl::StrCat("compare-warmup-", round)
                                            : absl::StrCat("compare-", strategy, "-", round);
    say(absl::StrCat(name, ": replaying ", trace.batches.size(), " batches"));
    RoundRun run(client, options, trace);
    absl::Status set_up = run.SetUp(strategy, name, row == nullptr ? nullptr : &res);
    reaper.Add(run.device_id());
    if (!set_up.ok())
      return WithHint(set_up, absl::StrCat(name, ": setting up the device and pool"));
    CompareRound r;
    r.round = round;
    if (absl::Status s = run.Replay(&r); !s.ok()) {
      return WithHint(s, absl::StrCat(name, ": the traffic"));
    }
    if (row == nullptr) {
      absl::Status s = run.ReturnThenUnbind();
      return s.ok() ? s : WithHint(s, name);
    }
    if (absl::Status s = run.Measure(&r); !s.ok()) return WithHint(s, name);
    row->rounds.push_back(r);
    return absl::OkStatus();
  };
  for (uint32_t w = 0; w < options.warmup; ++w) {
    if (absl::Status s = one("none", w, nullptr); !s.ok()) return s;
  }
  for (uint32_t round = 0; round < options.repeat; ++round) {
    for (size_t k = 0; k < order.size(); ++k) {
      const size_t i = (k + round) % order.size();
      if (absl::Status s = one(order[i], round, &res.rows[i]); !s.ok()) return s;
    }
  }
  SummarizeCompareRows(&res.rows);
  return res;
}

int RunCompareCommand(CommandContext& ctx, const CompareArgs& args) {
  const auto usage = [&](const std::string& m) {
    ctx.err << "ppctl: compare: " << m << std::endl;
    return kExitUsage;
  };
  absl::StatusOr<CompareTrace> trace;
  std::string traffic;
  if (!args.replay_path.empty()) {
    std::ifstream in(args.replay_path);
    std::stringstream text;
    if (in.is_open()) text << in.rdbuf();
    if (!in.is_open() || in.bad()) {
      ctx.err << "ppctl: compare: cannot read --replay " << args.replay_path << std::endl;
      return kExitRefused;
    }
    trace = ParseTrace(text.str(), args.replay_path);
    traffic = absl::StrCat("replay ", args.replay_path);
  } else {
    trace = GenerateTrace(args.trace);
    traffic = absl::StrCat("seed ", args.trace.seed);
  }
  if (!trace.ok()) return usage(std::string(trace.status().message()));
  if (!args.record_path.empty()) {
    std::ofstream out(args.record_path);
    out << FormatTrace(*trace);
    if (!out) {
      ctx.err << "ppctl: compare: cannot write --record " << args.record_path << std::endl;
      return kExitRefused;
    }
  }
  CompareOptions options = args.options;
  if (options.repeat == 0) return usage("--repeat must be at least 1");
  if (!options.iommu_mode.empty()) {
    std::string upper = options.iommu_mode;
    for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
    v1::IommuMode mode;
    if (!v1::IommuMode_Parse("IOMMU_MODE_" + upper, &mode) || mode == v1::IOMMU_MODE_UNSPECIFIED) {
      return usage("--iommu-mode: '" + options.iommu_mode + "' is not strict, lazy or passthrough");
    }
  }
  options.metrics = args.metrics.empty() ? DefaultMetricsAddress(args.target) : args.metrics;
  if (options.metrics.empty()) {
    return usage("cannot tell the /metrics address from --target " + args.target +
                 ": give --metrics HOST:PORT, or --metrics off");
  }
  if (isatty(STDERR_FILENO)) {
    options.progress = [&ctx](const std::string& line) {
      ctx.err << "\r" << line << "\033[K" << std::flush;
    };
  }
  auto res = RunCompare(ctx.client, *trace, traffic, options);
  if (options.progress) ctx.err << "\r\033[K" << std::flush;
  if (!res.ok()) {
    ctx.err << "ppctl: compare: " << absl::StatusCodeToString(res.status().code()) << ": "
            << res.status().message();
    if (absl::IsUnavailable(res.status())) ctx.err << ctx.unavailable_hint;
    ctx.err << std::endl;
    return kExitRefused;
  }
  ctx.out << (ctx.json ? res->ToJson() : res->Table()) << std::flush;
  return res->TrackedViolations() ? kExitViolations : kExitOk;
}

}  // namespace pagepool::client
