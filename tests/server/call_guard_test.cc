// Tests of server/call_guard: the token compare, peer addresses, the stream limiter; then, over the
// wire against an in-process daemon, the bearer token on every kind of call (health and reflection
// open), the stream limits and the pages one Traffic stream may hold.
#include "server/call_guard.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client/health.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;

TEST(CallGuardTest, ConstantTimeEqualsComparesWholeStrings) {
  EXPECT_TRUE(server::ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(server::ConstantTimeEquals("secreT", "secret"));
  EXPECT_FALSE(server::ConstantTimeEquals("secret-and-more", "secret"));
  EXPECT_FALSE(server::ConstantTimeEquals("sec", "secret"));
  EXPECT_FALSE(server::ConstantTimeEquals("", "secret"));
  EXPECT_TRUE(server::ConstantTimeEquals("", ""));
  EXPECT_FALSE(server::ConstantTimeEquals(std::string("secre\0", 6), "secret"));
}

TEST(CallGuardTest, PeerAddressDropsThePort) {
  EXPECT_EQ(server::PeerAddress("ipv4:127.0.0.1:5000"), "ipv4:127.0.0.1");
  EXPECT_EQ(server::PeerAddress("ipv6:[::1]:5000"), "ipv6:[::1]");
  EXPECT_EQ(server::PeerAddress("unix:/tmp/sock"), "unix:/tmp/sock");
  EXPECT_EQ(server::PeerAddress(""), "");
}

TEST(CallGuardTest, TokenFileIsTrimmedAndMustHoldAToken) {
  char path[] = "/tmp/pagepool-token-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << "  s3cr3t\n";
  auto t = server::BearerToken::ReadFile(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "s3cr3t");
  std::ofstream(path) << "\n \n";
  EXPECT_EQ(server::BearerToken::ReadFile(path).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::remove(path);
  EXPECT_EQ(server::BearerToken::ReadFile(path).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CallGuardTest, StreamLimiterCountsInAllAndPerPeer) {
  server::StreamLimiter limiter(3, 2);
  auto a1 = limiter.Acquire("ipv4:10.0.0.1:1000", "Traffic");
  auto a2 = limiter.Acquire("ipv4:10.0.0.1:1001", "Traffic");
  ASSERT_TRUE(a1.ok() && a2.ok());
  auto a3 = limiter.Acquire("ipv4:10.0.0.1:1002", "Traffic");
  EXPECT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(a3.status().message()), HasSubstr("--max-streams-per-peer"));
  auto b1 = limiter.Acquire("ipv4:10.0.0.2:1000", "WatchEvents");
  ASSERT_TRUE(b1.ok());
  auto b2 = limiter.Acquire("ipv4:10.0.0.2:1001", "WatchEvents");
  EXPECT_EQ(b2.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(b2.status().message()), HasSubstr("(3, --max-streams)"));
  EXPECT_EQ(limiter.open(), 3u);
  { server::StreamLimiter::Slot gone = *std::move(a1); }  // released here
  EXPECT_EQ(limiter.open(), 2u);
  EXPECT_TRUE(limiter.Acquire("ipv4:10.0.0.1:1003", "Traffic").ok());  // and released at once
  EXPECT_EQ(limiter.open(), 2u);
}

class GuardedDaemonTest : public ::testing::Test {
 protected:
  void Start(server::DaemonOptions o) {
    auto d = InProcessDaemon::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    d_ = std::move(*d);
  }
  client::Client& c() { return d_->client(); }
  std::unique_ptr<InProcessDaemon> d_;
};

// With --auth-token-file every PagePoolService call, unary or stream, needs the token; health and
// reflection do not.
TEST_F(GuardedDaemonTest, BearerTokenIsCheckedOnEveryCallButHealthAndReflection) {
  char path[] = "/tmp/pagepool-token-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << "t0ken\n";
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.auth_token_file = path;
  Start(o);
  std::remove(path);
  auto stub = c().stub();
  auto with = [](grpc::ClientContext* ctx, const char* value) {
    if (value != nullptr) ctx->AddMetadata("authorization", value);
  };
  for (const char* auth : {static_cast<const char*>(nullptr), "Bearer wrong", "t0ken",
                           "Basic t0ken", "Bearer t0ken-and-more", "Bearer "}) {
    SCOPED_TRACE(auth == nullptr ? "(none)" : auth);
    grpc::ClientContext unary;
    with(&unary, auth);
    v1::ListDevicesResponse devices;
    grpc::Status st = stub->ListDevices(&unary, v1::ListDevicesRequest(), &devices);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(st.error_message(), HasSubstr("ListDevices"));
    grpc::ClientContext traffic;
    with(&traffic, auth);
    auto rw = stub->Traffic(&traffic);
    v1::TrafficResponse resp;
    EXPECT_FALSE(rw->Read(&resp));
    EXPECT_EQ(rw->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext watch;
    with(&watch, auth);
    auto events = stub->WatchEvents(&watch, v1::WatchEventsRequest());
    v1::Event ev;
    EXPECT_FALSE(events->Read(&ev));
    EXPECT_EQ(events->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext dump;
    with(&dump, auth);
    v1::DumpPageTableRequest dreq;
    dreq.set_device_id(1);
    auto entries = stub->DumpPageTable(&dump, dreq);
    v1::DumpPageTableResponse dresp;
    EXPECT_FALSE(entries->Read(&dresp));
    EXPECT_EQ(entries->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // The right token (the scheme is case-insensitive).
  for (const char* auth : {"Bearer t0ken", "bearer t0ken"}) {
    grpc::ClientContext ok;
    ok.AddMetadata("authorization", auth);
    v1::CreateDeviceResponse dev;
    EXPECT_TRUE(stub->CreateDevice(&ok, v1::CreateDeviceRequest(), &dev).ok()) << auth;
  }
  grpc::ClientContext traffic;
  traffic.AddMetadata("authorization", "Bearer t0ken");
  auto rw = stub->Traffic(&traffic);
  v1::TrafficRequest req;
  req.set_pool_id(999);
  req.set_allocate(1);
  v1::TrafficResponse resp;
  ASSERT_TRUE(rw->Write(req) && rw->Read(&resp));
  EXPECT_EQ(resp.error_code(), int(grpc::StatusCode::NOT_FOUND));  // through: the pool is unknown
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
  // Health stays open: a Kubernetes probe sends no metadata.
  auto health = client::CheckHealth(c(), "");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::ServingStatus::kServing);
  EXPECT_EQ(d_->daemon().rpc_stats().Finished(server::RpcMethod::kListDevices,
                                              absl::StatusCode::kUnauthenticated),
            6u);
}

// One client address may keep --max-streams-per-peer streams open; one more is refused with
// RESOURCE_EXHAUSTED naming the limit, and a place frees up when a stream ends.
TEST_F(GuardedDaemonTest, StreamsPerPeerAreLimited) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.max_streams_per_peer = 3;
  Start(o);
  auto stub = c().stub();
  ASSERT_TRUE(c().CreateDevice(v1::CreateDeviceRequest()).ok());
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::Event>>> open;
  v1::WatchEventsRequest replay;
  replay.set_include_existing(true);
  for (int i = 0; i < 3; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    open.push_back(stub->WatchEvents(ctxs.back().get(), replay));
  }
  // The three are open once the server has answered something on them: the replayed device.
  v1::Event ev;
  for (auto& r : open) ASSERT_TRUE(r->Read(&ev));
  grpc::ClientContext fourth;
  auto rw = stub->Traffic(&fourth);
  v1::TrafficResponse resp;
  EXPECT_FALSE(rw->Read(&resp));
  grpc::Status st = rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("(3, --max-streams-per-peer)"));
  // Unary calls are not streams: still served.
  EXPECT_TRUE(c().ListDevices().ok());
  ctxs[0]->TryCancel();
  while (open[0]->Read(&ev)) {
  }
  (void)open[0]->Finish();
  // The place is free once the server has let the cancelled stream go.
  bool served = false;
  for (int i = 0; i < 100 && !served; ++i) {
    served = c().ListInflight(12345).status().code() == absl::StatusCode::kNotFound;
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(served);
  for (size_t i = 1; i < open.size(); ++i) ctxs[i]->TryCancel();
  for (size_t i = 1; i < open.size(); ++i) {
    while (open[i]->Read(&ev)) {
    }
    (void)open[i]->Finish();
  }
}

// A Traffic stream may hold at most --max-held-per-stream pages: past that its allocations are
// refused with RESOURCE_EXHAUSTED naming the limit, and giving pages back makes room again.
TEST_F(GuardedDaemonTest, PagesHeldPerTrafficStreamAreLimited) {
  server::DaemonOptions o = InProcessDaemon::DefaultOptions();
  o.max_held_per_stream = 1000;
  Start(o);
  uint64_t dev = c().CreateDevice(v1::CreateDeviceRequest())->device().id();
  v1::CreatePoolRequest preq;
  preq.set_device_id(dev);
  uint64_t pool = c().CreatePool(preq)->pool().id();
  grpc::ClientContext ctx;
  auto rw = c().stub()->Traffic(&ctx);
  v1::TrafficRequest req;
  v1::TrafficResponse resp;
  std::vector<v1::PageHandle> held;
  for (int i = 0; i < 4; ++i) {
    req.Clear();
    req.set_pool_id(pool);
    req.set_allocate(250);
    ASSERT_TRUE(rw->Write(req) && rw->Read(&resp));
    ASSERT_EQ(resp.errors(), 0u) << resp.error_message();
    for (const auto& p : resp.allocated()) held.push_back(p.handle());
  }
  req.set_allocate(1);
  ASSERT_TRUE(rw->Write(req) && rw->Read(&resp));
  EXPECT_EQ(resp.error_code(), int(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_THAT(resp.error_message(), HasSubstr("holds 1000 pages"));
  EXPECT_THAT(resp.error_message(), HasSubstr("--max-held-per-stream"));
  EXPECT_EQ(resp.allocated_size(), 0);
  // Give 100 back in the same batch as an allocation of 100: room again.
  req.Clear();
  req.set_pool_id(pool);
  for (int i = 0; i < 100; ++i) *req.add_return_pages() = held[i];
  req.set_allocate(100);
  ASSERT_TRUE(rw->Write(req) && rw->Read(&resp));
  EXPECT_EQ(resp.errors(), 0u) << resp.error_message();
  EXPECT_EQ(resp.allocated_size(), 100);
  // Another stream has a limit of its own.
  grpc::ClientContext ctx2;
  auto rw2 = c().stub()->Traffic(&ctx2);
  req.Clear();
  req.set_pool_id(pool);
  req.set_allocate(500);
  ASSERT_TRUE(rw2->Write(req) && rw2->Read(&resp));
  EXPECT_EQ(resp.errors(), 0u) << resp.error_message();
  rw->WritesDone();
  rw2->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
  EXPECT_TRUE(rw2->Finish().ok());
}

}  // namespace
}  // namespace pagepool
