// Fault tests of pagepoold, in process (a Daemon on 127.0.0.1:0, clients on channels of their own):
// a Traffic client that goes away with pages held, simulated memory, IOVA space (a device with a
// small DMA mask) and in-flight ID space exhausted under load and the recovery once pages come
// back, a device unbound while several
// clients hold thousands of pages, and a WatchEvents reader too slow to keep up. SIGTERM/SIGINT
// under load and a killed client process are in signal_test.sh (the real binaries).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/daemon_harness.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;
using Stream = grpc::ClientReaderWriter<v1::TrafficRequest, v1::TrafficResponse>;

// One client with a Traffic stream of its own: allocates, holds and gives back through it.
class StreamClient {
 public:
  explicit StreamClient(const std::string& address) {
    client_ = *client::Client::Connect(address);
    stream_ = client_->stub()->Traffic(&ctx_);
  }

  // One batch; false if the stream broke.
  bool Batch(const v1::TrafficRequest& req, v1::TrafficResponse* resp) {
    return stream_->Write(req) && stream_->Read(resp);
  }
  // Allocates `n` pages of `pool` in batches of `batch` and keeps them; the first refusal's answer
  // goes to *refusal (when not null) and ends the loop. Returns the pages allocated.
  size_t Hold(uint64_t pool, size_t n, uint32_t batch, v1::TrafficResponse* refusal = nullptr) {
    size_t got = 0;
    v1::TrafficRequest req;
    v1::TrafficResponse resp;
    while (got < n) {
      req.Clear();
      req.set_pool_id(pool);
      req.set_allocate(batch);
      if (!Batch(req, &resp)) break;
      for (const auto& p : resp.allocated()) held_.push_back(p.handle());
      got += resp.allocated_size();
      if (resp.errors() > 0) {
        if (refusal != nullptr) *refusal = resp;
        break;
      }
    }
    return got;
  }
  // Returns every held page through the stream; the answer of the batch.
  v1::TrafficResponse ReturnAll(uint64_t pool) {
    v1::TrafficRequest req;
    req.set_pool_id(pool);
    for (const auto& h : held_) *req.add_return_pages() = h;
    v1::TrafficResponse resp;
    EXPECT_TRUE(Batch(req, &resp));
    held_.clear();
    return resp;
  }
  // Cuts the stream as a client that vanishes does (RST_STREAM), then drops the channel.
  void Vanish() {
    ctx_.TryCancel();
    stream_.reset();
    client_.reset();
  }
  std::vector<v1::PageHandle>& held() { return held_; }
  client::Client& client() { return *client_; }

 private:
  std::unique_ptr<client::Client> client_;
  grpc::ClientContext ctx_;
  std::unique_ptr<Stream> stream_;
  std::vector<v1::PageHandle> held_;
};

class FaultTest : public testing::DaemonTest {
 protected:
  void Start(server::DaemonOptions o = InProcessDaemon::DefaultOptions()) { StartDaemon(o); }
  using DaemonTest::NewPool;
  uint64_t NewPool(uint64_t dev, v1::Strategy s, uint32_t index_limit) {
    v1::CreatePoolRequest req;
    req.set_device_id(dev);
    req.set_strategy(s);
    req.set_dma_index_limit(index_limit);
    return NewPool(req);
  }
  v1::DomainInfo Domain(uint64_t dev) { return c().GetDomain(dev)->domain(); }
  // The pool's inflight once it has not moved for 200 ms (the daemon finishing cut batches).
  uint64_t SettledInflight(uint64_t pool) {
    uint64_t last = ~uint64_t{0};
    for (int i = 0; i < 50; ++i) {
      uint64_t now = c().GetPool(pool)->pool().inflight();
      if (now == last) return now;
      last = now;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return last;
  }

  // Four Traffic streams at once on `pool`, each trying to hold `want` pages in batches of
  // `batch` until it is refused: each must be refused with RESOURCE_EXHAUSTED saying `why`. The
  // streams keep what they got; `*held` is their total.
  std::vector<std::unique_ptr<StreamClient>> HoldUntilRefused(uint64_t pool, size_t want,
                                                              uint32_t batch,
                                                              const std::string& why,
                                                              size_t* held) {
    constexpr int kClients = 4;
    std::vector<std::unique_ptr<StreamClient>> clients;
    std::vector<v1::TrafficResponse> refusals(kClients);
    for (int i = 0; i < kClients; ++i)
      clients.push_back(std::make_unique<StreamClient>(d_->address()));
    std::vector<std::thread> threads;
    for (int i = 0; i < kClients; ++i) {
      threads.emplace_back([&, i] { clients[i]->Hold(pool, want, batch, &refusals[i]); });
    }
    for (auto& t : threads) t.join();
    *held = 0;
    for (int i = 0; i < kClients; ++i) {
      *held += clients[i]->held().size();
      EXPECT_EQ(refusals[i].error_code(), int(grpc::StatusCode::RESOURCE_EXHAUSTED)) << i;
      EXPECT_THAT(refusals[i].error_message(), HasSubstr(why));
    }
    return clients;
  }
  // Every stream gives back what it holds; none is refused.
  void ReturnAll(std::vector<std::unique_ptr<StreamClient>>& clients, uint64_t pool) {
    for (auto& cl : clients) {
      const size_t n = cl->held().size();
      v1::TrafficResponse r = cl->ReturnAll(pool);
      EXPECT_EQ(r.returned(), n);
      EXPECT_EQ(r.errors(), 0u) << r.error_message();
    }
  }
};

// The rule for a client that goes away mid-stream: its pages stay in flight (as the stack holds
// them), the daemon reaps nothing per client; whoever has the handles may return them later, and
// the pool's destroy unmaps the rest. Nothing is unmapped twice, nothing leaks past the destroy.
TEST_F(FaultTest, VanishedTrafficClientsPagesStayInFlightUntilReturnedOrDestroyed) {
  Start();
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  StreamClient a(d_->address());
  ASSERT_EQ(a.Hold(pool, 640, 64), 640u);
  std::vector<v1::PageHandle> known = a.held();
  // More batches whose answers the client never reads: the pages are handed out all the same.
  v1::TrafficRequest more;
  more.set_pool_id(pool);
  more.set_allocate(64);
  v1::TrafficResponse ignored;
  for (int i = 0; i < 4; ++i) more.set_seq(i), (void)a.Batch(more, &ignored);
  a.Vanish();

  const uint64_t inflight = SettledInflight(pool);
  EXPECT_GE(inflight, 640u + 4 * 64);
  EXPECT_GE(c().ListInflight(pool)->pages_size(), int(inflight));
  // Another client returns the pages whose handles it learned: answered as usual.
  v1::ReturnRequest ret;
  ret.set_pool_id(pool);
  for (const auto& h : known) *ret.add_pages() = h;
  auto r = c().Return(ret);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->returned(), 640u);
  EXPECT_EQ(r->unmapped(), 640u);
  // The pages nobody can name any more are unmapped by the pool's destroy.
  auto destroyed = c().DestroyPool(pool);
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_EQ(destroyed->inflight_at_destroy(), 4u * 64);
  EXPECT_GE(destroyed->pages_unmapped(), 4u * 64);
  v1::DomainInfo dom = Domain(dev);
  EXPECT_EQ(dom.violations().total(), 0u);
  EXPECT_EQ(dom.live_mappings(), 0u);
  EXPECT_EQ(dom.mapped_pages(), 0u);
  // The pages already returned cannot be returned twice, even by a retry.
  EXPECT_EQ(c().Return(ret).status().code(), absl::StatusCode::kFailedPrecondition);
}

// Streams allocate until simulated memory runs out: RESOURCE_EXHAUSTED in the answers (and for a
// unary Allocate), the daemon keeps serving, and once the pages come back allocation works again.
TEST_F(FaultTest, MemoryExhaustedUnderLoadThenRecovers) {
  Start();  // 0.25 GiB: 65536 frames
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev);
  size_t held = 0;
  auto clients = HoldUntilRefused(pool, 70000, 512, "out of simulated memory", &held);
  EXPECT_GT(held, 60000u);
  auto unary = c().Allocate(pool, 4096);
  EXPECT_EQ(unary.status().code(), absl::StatusCode::kResourceExhausted) << unary.status();
  ReturnAll(clients, pool);
  // Recovered: every client allocates again.
  for (auto& cl : clients) EXPECT_EQ(cl->Hold(pool, 4096, 512), 4096u);
  EXPECT_TRUE(c().Allocate(pool, 1024).ok());
  EXPECT_EQ(Domain(dev).violations().total(), 0u);
}

// A pool whose in-flight index allows 2000 ids: streams run it out (RESOURCE_EXHAUSTED naming the
// ID space, the page unmapped as upstream), then recover once pages come back.
TEST_F(FaultTest, IndexIdSpaceExhaustedUnderLoadThenRecovers) {
  Start();
  uint64_t dev = NewDevice();
  uint64_t pool = NewPool(dev, v1::STRATEGY_XARRAY, 2000);
  std::vector<std::unique_ptr<StreamClient>> clients;
  std::vector<v1::TrafficResponse> refusals(2);
  for (int i = 0; i < 2; ++i) clients.push_back(std::make_unique<StreamClient>(d_->address()));
  std::thread t0([&] { clients[0]->Hold(pool, 4000, 64, &refusals[0]); });
  std::thread t1([&] { clients[1]->Hold(pool, 4000, 64, &refusals[1]); });
  t0.join();
  t1.join();
  for (const auto& r : refusals) {
    EXPECT_EQ(r.error_code(), int(grpc::StatusCode::RESOURCE_EXHAUSTED));
    EXPECT_THAT(r.error_message(), HasSubstr("ID space exhausted"));
  }
  EXPECT_LE(clients[0]->held().size() + clients[1]->held().size(), 2000u);
  EXPECT_EQ(c().Allocate(pool, 64).status().code(), absl::StatusCode::kResourceExhausted);
  for (auto& cl : clients) EXPECT_EQ(cl->ReturnAll(pool).errors(), 0u);
  EXPECT_EQ(clients[0]->Hold(pool, 1024, 64), 1024u);
  v1::DomainInfo dom = Domain(dev);
  EXPECT_EQ(dom.violations().total(), 0u);
  EXPECT_EQ(dom.live_mappings(), c().GetPool(pool)->pool().dma_mapped());
}

// The value of a sample line `name value` in Prometheus text (-1 if absent).
int64_t MetricValue(const std::string& text, const std::string& name) {
  const std::string key = "\n" + name + " ";
  const size_t at = text.find(key);
  return at == std::string::npos ? -1 : std::stoll(text.substr(at + key.size()));
}

// A device with a 20-bit DMA mask has 255 pages of IOVA: four streams run it out
// (RESOURCE_EXHAUSTED naming the IOVA space and the mask, no page handed out for the refused part),
// the daemon keeps serving, allocation works again once pages come back, and nothing leaks: no
// violation, every mapping accounted for, every frame free once the pool is destroyed.
TEST_F(FaultTest, IovaSpaceExhaustedUnderLoadThenRecovers) {
  Start();
  const int64_t frames_free =
      MetricValue(d_->daemon().RenderMetrics(), "pagepool_memory_frames_free");
  ASSERT_GT(frames_free, 0);
  v1::CreateDeviceRequest dreq;
  dreq.set_dma_mask_bits(20);
  auto created = c().CreateDevice(dreq);
  ASSERT_TRUE(created.ok()) << created.status();
  const uint64_t dev = created->device().id();
  uint64_t pool = NewPool(dev);
  size_t held = 0;
  auto clients =
      HoldUntilRefused(pool, 1000, 16, "IOVA space exhausted below the 20-bit DMA mask", &held);
  EXPECT_LE(held, 255u);
  EXPECT_GT(held, 255u - 128);  // the rest sits mapped in the pool's alloc cache
  auto unary = c().Allocate(pool, 16);
  EXPECT_EQ(unary.status().code(), absl::StatusCode::kResourceExhausted) << unary.status();
  v1::DomainInfo dom = Domain(dev);
  EXPECT_EQ(dom.live_mappings(), c().GetPool(pool)->pool().dma_mapped());
  EXPECT_LE(dom.live_mappings(), 255u);
  ReturnAll(clients, pool);
  // Recovered: the clients allocate again, up to the space the mask leaves.
  EXPECT_EQ(clients[0]->Hold(pool, 128, 16), 128u);
  EXPECT_EQ(clients[1]->Hold(pool, 64, 16), 64u);
  auto again = c().Allocate(pool, 32);
  ASSERT_TRUE(again.ok()) << again.status();
  for (const auto& p : again->pages()) EXPECT_LT(p.dma_addr(), uint64_t{1} << 20);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(clients[i]->ReturnAll(pool).errors(), 0u);
  v1::ReturnRequest ret;
  ret.set_pool_id(pool);
  for (const auto& p : again->pages()) *ret.add_pages() = p.handle();
  ASSERT_TRUE(c().Return(ret).ok());
  ASSERT_TRUE(c().DestroyPool(pool).ok());
  dom = Domain(dev);
  EXPECT_EQ(dom.violations().total(), 0u) << dom.violations().DebugString();
  EXPECT_EQ(dom.live_mappings(), 0u);
  EXPECT_EQ(dom.mapped_pages(), 0u);
  // Every frame is free again (frame 0 is reserved at creation: the count at the start).
  EXPECT_EQ(MetricValue(d_->daemon().RenderMetrics(), "pagepool_memory_frames_free"), frames_free);
}

// Several clients hold thousands of pages of two pools (XARRAY and SCAN) on one device while one
// keeps streaming; the device is unbound. No DMA-API call follows the unbind (zero violations),
// every later give-back is answered correctly, and nothing stays mapped.
TEST_F(FaultTest, UnbindWhileSeveralClientsHoldThousandsOfPages) {
  Start();
  uint64_t dev = NewDevice();
  const uint64_t pools[2] = {NewPool(dev), NewPool(dev, v1::STRATEGY_SCAN)};
  constexpr int kHolders = 4;
  std::vector<std::unique_ptr<StreamClient>> holders;
  for (int i = 0; i < kHolders; ++i) {
    holders.push_back(std::make_unique<StreamClient>(d_->address()));
    ASSERT_EQ(holders[i]->Hold(pools[i % 2], 2048, 256), 2048u);
  }
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> busy_batches{0};
  StreamClient busy(d_->address());
  std::thread churn([&] {
    v1::TrafficRequest req;
    v1::TrafficResponse resp;
    std::vector<v1::PageHandle> prev;
    while (!stop) {
      req.Clear();
      req.set_pool_id(pools[0]);
      req.set_allocate(64);
      for (const auto& h : prev) *req.add_recycle() = h;
      if (!busy.Batch(req, &resp)) break;
      prev.clear();
      for (const auto& p : resp.allocated()) prev.push_back(p.handle());
      ++busy_batches;
    }
  });
  while (busy_batches < 50) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto unbound = c().UnbindDevice(dev);
  ASSERT_TRUE(unbound.ok()) << unbound.status();
  EXPECT_EQ(unbound->pools_destroyed(), 2u);
  EXPECT_GE(unbound->inflight_at_destroy(), uint64_t{kHolders} * 2048);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the churn goes on, refused
  stop = true;
  churn.join();
  for (int i = 0; i < kHolders; ++i) {
    SCOPED_TRACE(i);
    v1::TrafficResponse r = holders[i]->ReturnAll(pools[i % 2]);
    EXPECT_EQ(r.returned(), 2048u);
    EXPECT_EQ(r.errors(), 0u) << r.error_message();
    v1::TrafficRequest again;
    again.set_pool_id(pools[i % 2]);
    again.set_allocate(1);
    v1::TrafficResponse refused;
    if (c().GetPool(pools[i % 2]).ok()) {  // still findable: allocation refused, not served
      ASSERT_TRUE(holders[i]->Batch(again, &refused));
      EXPECT_EQ(refused.error_code(), int(grpc::StatusCode::FAILED_PRECONDITION));
    }
  }
  v1::DomainInfo dom = Domain(dev);
  EXPECT_EQ(dom.violations().total(), 0u) << dom.violations().DebugString();
  EXPECT_EQ(dom.live_mappings(), 0u);
  EXPECT_EQ(dom.mapped_pages(), 0u);
}

// A raw HTTP/2 client that opens one WatchEvents call with a stream window of 1 KiB and then never
// reads and never grants more window: the slowest possible reader, which no gRPC client library
// can be made to be (they keep taking data off the wire).
class StalledWatcher {
 public:
  explicit StalledWatcher(uint16_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    std::string out = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    Frame(&out, 0x4, 0, 0, std::string("\x00\x04\x00\x00\x04\x00", 6));  // INITIAL_WINDOW 1024
    Frame(&out, 0x4, 0x1, 0, "");                                        // ack theirs
    std::string headers;
    for (auto [name, value] : {std::pair<std::string, std::string>{":method", "POST"},
                               {":scheme", "http"},
                               {":path", "/pagepool.v1.PagePoolService/WatchEvents"},
                               {":authority", "127.0.0.1"},
                               {"content-type", "application/grpc"},
                               {"te", "trailers"}}) {
      headers += '\0';  // literal header field without indexing, new name, no Huffman
      headers += char(name.size());
      headers += name;
      headers += char(value.size());
      headers += value;
    }
    Frame(&out, 0x1, 0x4, 1, headers);                                 // HEADERS, END_HEADERS
    Frame(&out, 0x0, 0x1, 1, std::string("\x00\x00\x00\x00\x00", 5));  // empty request, END_STREAM
    ok_ = ok_ && write(fd_, out.data(), out.size()) == ssize_t(out.size());
  }
  ~StalledWatcher() { close(fd_); }
  size_t Drain() {
    char buf[65536];
    size_t total = 0;
    ssize_t n;
    while ((n = recv(fd_, buf, sizeof buf, MSG_DONTWAIT)) > 0) total += n;
    return total;
  }
  bool ok() const { return ok_; }

 private:
  static void Frame(std::string* out, uint8_t type, uint8_t flags, uint32_t stream,
                    const std::string& payload) {
    const uint32_t n = payload.size();
    const char head[9] = {char(n >> 16),      char(n >> 8),      char(n),
                          char(type),         char(flags),       char(stream >> 24),
                          char(stream >> 16), char(stream >> 8), char(stream)};
    out->append(head, 9);
    out->append(payload);
  }
  int fd_ = -1;
  bool ok_ = false;
};

// A WatchEvents reader that stops reading altogether (a stopped or wedged process: it neither
// reads nor answers pings). gRPC 1.51 keeps taking the stream's writes although the peer's window
// is shut (measured: 80,000 events written for 1.4 KB delivered), so the per-watcher queue never
// fills and the answers pile up inside gRPC; the keepalive ping (--keepalive-ms) is what ends it:
// the peer does not answer, the connection is closed, the watcher's stream is cancelled and its
// buffers freed. A reader that keeps up on the same daemon sees every event.
TEST_F(FaultTest, StalledWatcherIsDisconnectedByTheKeepalive) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.keepalive_ms = 300;
  Start(o);
  grpc::ClientContext fast_ctx;
  auto fast = c().stub()->WatchEvents(&fast_ctx, v1::WatchEventsRequest());
  // The fast reader may subscribe after the first events: it must see every event from its first
  // on, with no gap.
  std::atomic<uint64_t> fast_seen{0}, fast_first{0}, fast_last{0};
  std::thread fast_reader([&] {
    v1::Event ev;
    while (fast->Read(&ev)) {
      if (fast_seen++ == 0) fast_first = ev.seq();
      fast_last = ev.seq();
    }
  });
  struct Joiner {
    grpc::ClientContext& ctx;
    std::thread& t;
    ~Joiner() {
      ctx.TryCancel();
      t.join();
    }
  } joiner{fast_ctx, fast_reader};
  const uint16_t port = uint16_t(std::stoi(d_->address().substr(d_->address().rfind(':') + 1)));
  StalledWatcher slow(port);
  ASSERT_TRUE(slow.ok());
  uint64_t dev = NewDevice();
  uint64_t published = 1;
  auto cancelled = [&] {
    return d_->daemon().rpc_stats().Finished(server::RpcMethod::kWatchEvents,
                                             absl::StatusCode::kCancelled);
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (cancelled() == 0 && std::chrono::steady_clock::now() < deadline) {
    uint64_t pool = NewPool(dev);
    ASSERT_TRUE(c().DestroyPool(pool).ok());
    published += 2;  // POOL_ADD, POOL_DELETE
  }
  EXPECT_EQ(cancelled(), 1u) << "the stalled watcher was never disconnected";
  EXPECT_LT(slow.Drain(), 4096u);  // it never took more than its 1 KiB window
  // The reader that kept up saw every event since it subscribed, and is still connected.
  for (int i = 0; i < 300 && fast_last < published; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(fast_last, published);
  EXPECT_EQ(fast_seen, fast_last - fast_first + 1);
}

// A watcher more than --max-watch-queue events behind is ended with RESOURCE_EXHAUSTED naming how
// many events it lost (they used to be dropped silently), counted in /metrics. Here the
// include_existing replay of 1 device and 20 pools comes faster than one write completes and
// overflows a queue of 8 at once; the client reads the loss in the call's status.
TEST_F(FaultTest, WatcherOverflowedByTheReplayReadsTheLossInItsStatus) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.max_watch_queue = 8;
  Start(o);
  uint64_t dev = NewDevice();
  for (int i = 0; i < 20; ++i) NewPool(dev);
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.set_include_existing(true);
  auto reader = c().stub()->WatchEvents(&ctx, req);
  v1::Event ev;
  int read = 0;
  while (reader->Read(&ev)) ++read;
  grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // The first event was being written; the next 8 were queued; the 10th overflowed: 9 + the 11
  // replayed after it were lost.
  EXPECT_EQ(read, 1);
  EXPECT_THAT(st.error_message(),
              HasSubstr("fell 8 events behind (--max-watch-queue) and lost 20 events (from the "
                        "include_existing replay on); watch again with include_existing"));
  EXPECT_EQ(d_->daemon().rpc_stats().watch_events_dropped(), 20u);
  const std::string metrics = d_->daemon().RenderMetrics();
  EXPECT_THAT(metrics, HasSubstr("pagepool_watch_events_dropped_total 20"));
  EXPECT_THAT(metrics, HasSubstr("pagepool_rpc_finished_total{method=\"WatchEvents\",code=\""
                                 "RESOURCE_EXHAUSTED\"} 1"));
}

}  // namespace
}  // namespace pagepool
