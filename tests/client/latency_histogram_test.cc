// client/internal/latency_histogram: bucket bounds, percentiles within the bucket error, and
// interval percentiles from the difference of two snapshots.
#include "client/internal/latency_histogram.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace pagepool::client::internal {
namespace {

TEST(LatencyHistogramTest, BucketsTileTheRangeWithoutGaps) {
  EXPECT_EQ(LatencyBucket(0), 0);
  EXPECT_EQ(LatencyBucket(15), 15);
  EXPECT_EQ(LatencyBucketLow(0), 0u);
  for (int b = 0; b + 1 < kLatencyBuckets; ++b) {
    SCOPED_TRACE(b);
    ASSERT_LE(LatencyBucketLow(b), LatencyBucketHigh(b));
    ASSERT_EQ(LatencyBucketHigh(b) + 1, LatencyBucketLow(b + 1));
    ASSERT_EQ(LatencyBucket(LatencyBucketLow(b)), b);
    ASSERT_EQ(LatencyBucket(LatencyBucketHigh(b)), b);
    // At most 1/16 of its lower bound wide.
    ASSERT_LE(double(LatencyBucketHigh(b) - LatencyBucketLow(b)),
              std::max(0.0, double(LatencyBucketLow(b)) / 16));
  }
  EXPECT_EQ(LatencyBucket(uint64_t{1} << 50), kLatencyBuckets - 1);  // the last bucket holds more
  EXPECT_EQ(LatencyBucket(UINT64_MAX), kLatencyBuckets - 1);
}

TEST(LatencyHistogramTest, PercentilesWithinTheBucketError) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> dist(std::log(150e3), 0.8);  // ~150 us, long tail
  LatencyHistogram h;
  std::vector<uint64_t> all;
  for (int i = 0; i < 100000; ++i) {
    uint64_t ns = uint64_t(dist(rng));
    h.Record(ns);
    all.push_back(ns);
  }
  std::sort(all.begin(), all.end());
  LatencyCounts c;
  h.AddTo(&c);
  EXPECT_EQ(c.Total(), all.size());
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    SCOPED_TRACE(q);
    const double exact_us = double(all[size_t(q * double(all.size() - 1) + 0.5)]) / 1000;
    EXPECT_NEAR(c.PercentileUs(q), exact_us, exact_us * 0.035);
  }
  EXPECT_EQ(LatencyCounts().PercentileUs(0.5), 0);
}

TEST(LatencyHistogramTest, IntervalFromTwoSnapshotsOfSeveralHistograms) {
  LatencyHistogram a, b;
  for (int i = 0; i < 1000; ++i) a.Record(10'000);  // 10 us: before the interval
  LatencyCounts before;
  a.AddTo(&before);
  b.AddTo(&before);
  for (int i = 0; i < 100; ++i) a.Record(1'000'000);  // 1 ms, in the interval
  for (int i = 0; i < 100; ++i) b.Record(2'000'000);  // 2 ms
  LatencyCounts now;
  a.AddTo(&now);
  b.AddTo(&now);
  const LatencyCounts interval = now.Since(before);
  EXPECT_EQ(interval.Total(), 200u);
  EXPECT_NEAR(interval.PercentileUs(0.25), 1000, 35);
  EXPECT_NEAR(interval.PercentileUs(0.99), 2000, 70);
  EXPECT_NEAR(now.PercentileUs(0.5), 10, 0.4);  // the whole run: mostly 10 us
}

}  // namespace
}  // namespace pagepool::client::internal
