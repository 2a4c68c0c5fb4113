#include "client/internal/latency_histogram.h"

#include <bit>

namespace pagepool::client::internal {

namespace {
constexpr uint64_t kSub = uint64_t{1} << kLatencySubBits;
}  // namespace

int LatencyBucket(uint64_t ns) {
  if (ns < kSub) return int(ns);
  const int e = std::bit_width(ns) - 1;  // 2^e <= ns < 2^(e+1), e >= kLatencySubBits
  if (e > kLatencyMaxExponent) return kLatencyBuckets - 1;
  const int sub = int((ns >> (e - kLatencySubBits)) & (kSub - 1));
  return ((e - kLatencySubBits + 1) << kLatencySubBits) + sub;
}

uint64_t LatencyBucketLow(int bucket) {
  if (bucket < int(kSub)) return uint64_t(bucket);
  const int e = (bucket >> kLatencySubBits) + kLatencySubBits - 1;
  const uint64_t sub = uint64_t(bucket) & (kSub - 1);
  return (kSub + sub) << (e - kLatencySubBits);
}

uint64_t LatencyBucketHigh(int bucket) {
  if (bucket < int(kSub)) return uint64_t(bucket);
  const int e = (bucket >> kLatencySubBits) + kLatencySubBits - 1;
  return LatencyBucketLow(bucket) + (uint64_t{1} << (e - kLatencySubBits)) - 1;
}

LatencyCounts LatencyCounts::Since(const LatencyCounts& earlier) const {
  LatencyCounts d;
  for (int i = 0; i < kLatencyBuckets; ++i) d.counts[i] = counts[i] - earlier.counts[i];
  return d;
}

uint64_t LatencyCounts::Total() const {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}

double LatencyCounts::PercentileUs(double q) const {
  const uint64_t total = Total();
  if (total == 0) return 0;
  // The rank of the nearest-rank percentile, 1-based.
  uint64_t rank = uint64_t(q * double(total - 1) + 0.5) + 1;
  uint64_t seen = 0;
  for (int i = 0; i < kLatencyBuckets; ++i) {
    seen += counts[i];
    if (seen >= rank) {
      return (double(LatencyBucketLow(i)) + double(LatencyBucketHigh(i))) / 2 / 1000;
    }
  }
  return double(LatencyBucketHigh(kLatencyBuckets - 1)) / 1000;
}

void LatencyHistogram::AddTo(LatencyCounts* into) const {
  for (int i = 0; i < kLatencyBuckets; ++i) {
    into->counts[i] += buckets_[i].load(std::memory_order_relaxed);
  }
}

}  // namespace pagepool::client::internal
