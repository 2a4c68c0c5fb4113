// Client library tests: every traffic pattern of RunTraffic against an in-process pagepoold on
// 127.0.0.1:0, and the result's JSON and summary (--window and the timeline:
// traffic_window_test.cc; client/format: format_test.cc).
#include "client/client.h"

#include "client/traffic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"

namespace pagepool {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;
using testing::InProcessDaemon;

class TrafficTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto o = InProcessDaemon::DefaultOptions();
    o.memory_gib = 1;
    auto d = InProcessDaemon::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    d_ = std::move(*d);
  }
  client::TrafficOptions Options(const std::string& pattern) {
    client::TrafficOptions o;
    o.pattern = pattern;
    o.duration_s = 0.6;
    o.streams = 2;
    o.batch = 32;
    return o;
  }
  std::unique_ptr<InProcessDaemon> d_;
};

TEST_F(TrafficTest, Steady) {
  auto r = client::RunTraffic(d_->client(), Options("steady"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->page_ops, 0u);
  EXPECT_GT(r->page_ops_per_sec, 0);
  EXPECT_GT(r->rpc_p99_us, 0);
  EXPECT_LE(r->rpc_p50_us, r->rpc_p99_us);
  EXPECT_EQ(r->errors, 0u) << r->first_error;
  EXPECT_EQ(r->violations, 0u);
  // The run destroyed the pool it created, with nothing held by the client.
  auto pools = d_->client().ListPools(r->device_id);
  ASSERT_TRUE(pools.ok());
  for (const auto& p : pools->pools()) EXPECT_TRUE(p.destroyed());
  std::string json = r->ToJson();
  for (const char* key : {"\"page_ops_per_sec\": ", "\"rpc_p50_us\": ", "\"rpc_p99_us\": ",
                          "\"errors\": 0", "\"violations\": 0", "\"timeline\": ["}) {
    EXPECT_THAT(json, HasSubstr(key));
  }
  EXPECT_FALSE(r->timeline.empty());
}

TEST_F(TrafficTest, BurstHoldLeakUnary) {
  for (const char* pattern : {"burst", "hold", "unary"}) {
    SCOPED_TRACE(pattern);
    auto o = Options(pattern);
    o.hold_s = 0.2;
    o.max_held = 512;
    auto r = client::RunTraffic(d_->client(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_GT(r->page_ops, 0u);
    EXPECT_EQ(r->errors, 0u) << r->first_error;
    EXPECT_EQ(r->violations, 0u);
  }
  auto o = Options("leak");
  o.max_held = 96;
  auto r = client::RunTraffic(d_->client(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->errors, 0u);
  // Leaked pages stay in flight in the pool, which the run keeps.
  auto pool = d_->client().GetPool(r->pool_id);
  ASSERT_TRUE(pool.ok());
  EXPECT_FALSE(pool->pool().destroyed());
  EXPECT_GE(pool->pool().inflight(), 2u * 96);
}

TEST_F(TrafficTest, DestroyUnderTrafficIsClean) {
  for (bool unbind : {false, true}) {
    SCOPED_TRACE(unbind ? "unbind" : "destroy");
    auto o = Options("destroy-under-traffic");
    o.unbind = unbind;
    auto r = client::RunTraffic(d_->client(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->errors, 0u) << r->first_error;
    EXPECT_EQ(r->violations, 0u);
    EXPECT_GT(r->held_at_destroy, 0u);
    EXPECT_GE(r->pages_unmapped_at_destroy, r->held_at_destroy);
  }
}

TEST_F(TrafficTest, NoneStrategyWithUnbindShowsViolations) {
  auto o = Options("destroy-under-traffic");
  o.unbind = true;
  o.strategy = v1::STRATEGY_NONE;
  auto r = client::RunTraffic(d_->client(), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->violations, 0u);  // seed 002: late returns unmap on the unbound device
  EXPECT_THAT(r->Summary(), HasSubstr("UNSAFE"));
}

TEST_F(TrafficTest, BadOptionsAndUnknownPool) {
  auto o = Options("sideways");
  EXPECT_EQ(client::RunTraffic(d_->client(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options("steady");
  o.batch = 0;
  EXPECT_EQ(client::RunTraffic(d_->client(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options("steady");
  o.pool_id = 4242;
  EXPECT_EQ(client::RunTraffic(d_->client(), o).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace pagepool
