// client/traffic with --window: every pattern that gives pages back, with 1, 4 and 16 batches in
// flight per stream, against an in-process pagepoold: no page lost or given back twice (zero
// errors and violations, nothing held by the client at the end, the pools gone or empty after the
// run's own destroy), and page ops counted as the daemon counted them. Also the timeline's fields
// and destroy-under-traffic's event and fresh pool.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "client/traffic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;

client::TrafficOptions Options(const std::string& pattern, uint32_t window) {
  client::TrafficOptions o;
  o.pattern = pattern;
  o.duration_s = 0.6;
  o.streams = 2;
  o.batch = 32;
  o.window = window;
  o.hold_s = 0.1;
  o.max_held = 1024;
  return o;
}

// "traffic: B batches, P page ops, R refused" of the daemon's summary.
void DaemonTraffic(const std::string& log, uint64_t* batches, uint64_t* page_ops) {
  const size_t at = log.find("traffic:");
  ASSERT_NE(at, std::string::npos) << log;
  std::string line = log.substr(at + 8, log.find('\n', at) - at - 8);
  ASSERT_EQ(sscanf(line.c_str(), " %lu batches, %lu page ops", batches, page_ops), 2) << line;
}

// Every pool of the run's devices is gone or has nothing in flight (a destroyed pool whose
// pages all came back is deleted, maybe on the daemon's next 1 s retry).
void ExpectPoolsEmpty(client::Client& c, const client::TrafficResult& r) {
  for (uint64_t device : {r.device_id, r.fresh_device_id}) {
    if (device == 0) continue;
    for (int i = 0;; ++i) {
      auto pools = c.ListPools(device);
      ASSERT_TRUE(pools.ok()) << pools.status();
      uint64_t inflight = 0;
      for (const auto& p : pools->pools()) inflight += p.inflight();
      if (inflight == 0) break;
      ASSERT_LT(i, 40) << "device " << device << ": " << inflight << " pages still in flight";
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

class TrafficWindowTest : public ::testing::TestWithParam<std::tuple<const char*, uint32_t>> {};

TEST_P(TrafficWindowTest, NoPageLostOrReturnedTwice) {
  const auto [pattern, window] = GetParam();
  auto d = InProcessDaemon::Start();
  ASSERT_TRUE(d.ok()) << d.status();
  auto r = client::RunTraffic((*d)->client(), Options(pattern, window));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->window, window);
  EXPECT_EQ(r->errors, 0u) << r->first_error;
  EXPECT_EQ(r->violations, 0u);
  EXPECT_EQ(r->held_at_end, 0) << "pages the client did not give back";
  EXPECT_GT(r->page_ops, 0u);
  ExpectPoolsEmpty((*d)->client(), *r);
  (*d)->Stop();
  uint64_t batches = 0, page_ops = 0;
  DaemonTraffic((*d)->log(), &batches, &page_ops);
  EXPECT_EQ(r->batches, batches) << "every batch answered was counted once";
  EXPECT_EQ(r->page_ops, page_ops);
}

INSTANTIATE_TEST_SUITE_P(Patterns, TrafficWindowTest,
                         ::testing::Combine(::testing::Values("steady", "burst", "hold",
                                                              "destroy-under-traffic"),
                                            ::testing::Values(1u, 4u, 16u)),
                         [](const auto& info) {
                           std::string name = std::get<0>(info.param);
                           for (char& c : name) c = c == '-' ? '_' : c;
                           return name + "_window" + std::to_string(std::get<1>(info.param));
                         });

class TrafficTimelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = InProcessDaemon::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    d_ = std::move(*d);
  }
  std::unique_ptr<InProcessDaemon> d_;
};

TEST_F(TrafficTimelineTest, TenSamplesASecondWithEveryField) {
  auto o = Options("steady", 4);
  o.duration_s = 1.2;
  auto r = client::RunTraffic(d_->client(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_GE(r->timeline.size(), 10u);
  ASSERT_LE(r->timeline.size(), 14u);
  double prev = 0;
  for (const client::TrafficSample& s : r->timeline) {
    SCOPED_TRACE(s.t_s);
    EXPECT_GT(s.t_s, prev);
    EXPECT_LT(s.t_s - prev, 0.2);
    prev = s.t_s;
    EXPECT_GT(s.page_ops_per_sec, 0);
    EXPECT_GT(s.rpc_p50_us, 0);
    EXPECT_LE(s.rpc_p50_us, s.rpc_p99_us);
    EXPECT_GT(s.inflight, 0u);     // pages out, in the cache and the ring
    EXPECT_GT(s.table_bytes, 0u);  // at least the root table
    EXPECT_GE(s.held, 0);
    EXPECT_EQ(s.errors, 0u);
  }
  EXPECT_GT(r->timeline.back().t_s, 1.1);
  EXPECT_EQ(r->strategy, "xarray");
  EXPECT_EQ(r->iommu_mode, "strict");
  EXPECT_TRUE(r->events.empty());
  const std::string json = r->ToJson();
  for (const char* key :
       {"\"strategy\": \"xarray\"", "\"iommu_mode\": \"strict\"", "\"window\": 4", "\"events\": []",
        "\"rpc_p50_us\": ", "\"inflight\": ", "\"table_bytes\": ", "\"held_at_end\": 0"}) {
    EXPECT_THAT(json, HasSubstr(key));
  }
}

TEST_F(TrafficTimelineTest, DestroyUnderTrafficRunsTheWholeDurationOnAFreshPool) {
  for (bool unbind : {false, true}) {
    SCOPED_TRACE(unbind ? "unbind" : "destroy");
    auto o = Options("destroy-under-traffic", 4);
    o.duration_s = 1.2;
    o.unbind = unbind;
    o.strategy = v1::STRATEGY_SCAN;
    auto r = client::RunTraffic(d_->client(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->errors, 0u) << r->first_error;
    EXPECT_EQ(r->violations, 0u);
    EXPECT_EQ(r->strategy, "scan");
    ASSERT_EQ(r->events.size(), 1u);
    const client::TrafficEvent& e = r->events[0];
    EXPECT_EQ(e.kind, unbind ? "unbind" : "destroy");
    EXPECT_NEAR(e.t_s, 0.6, 0.15);
    EXPECT_GT(e.duration_ms, 0);
    EXPECT_GE(e.inflight_at_destroy, r->held_at_destroy);
    EXPECT_EQ(e.pages_unmapped, e.inflight_at_destroy);
    EXPECT_GE(r->duration_s, 1.2);
    ASSERT_NE(r->fresh_pool_id, 0u);
    EXPECT_NE(r->fresh_pool_id, r->pool_id);
    if (unbind) {
      EXPECT_NE(r->fresh_device_id, r->device_id);
    } else {
      EXPECT_EQ(r->fresh_device_id, r->device_id);
    }
    // Traffic went on after the destroy, to the end.
    double ops_after = 0;
    for (const auto& s : r->timeline) {
      if (s.t_s > e.t_s + 0.2) ops_after += s.page_ops_per_sec;
    }
    EXPECT_GT(ops_after, 0);
    EXPECT_GT(r->timeline.back().t_s, 1.1);
    // The run destroyed its fresh pool: nothing live is left.
    auto fresh = d_->client().GetPool(r->fresh_pool_id);
    EXPECT_TRUE(!fresh.ok() || fresh->pool().destroyed());
    ExpectPoolsEmpty(d_->client(), *r);
    EXPECT_THAT(r->ToJson(),
                HasSubstr(unbind ? "{\"kind\": \"unbind\"" : "{\"kind\": \"destroy\""));
  }
}

TEST_F(TrafficTimelineTest, WindowOutsideItsRangeIsInvalid) {
  for (uint32_t w : {0u, client::kMaxTrafficWindow + 1}) {
    auto r = client::RunTraffic(d_->client(), Options("steady", w));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("window"));
  }
}

}  // namespace
}  // namespace pagepool
