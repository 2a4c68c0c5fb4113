// File: client/internal/latency_histogram.h
//
// LatencyHistogram: a fixed log-bucket histogram of latencies in nanoseconds, written by one
// thread and read by another without locks (relaxed atomics), so a sampler can take percentiles
// over an interval while the traffic runs. Buckets: exact below 16 ns, then 16 buckets per power
// of two (a bucket is at most 1/16 = 6.25% wide) up to 2^40 ns (about 18 minutes); slower values
// land in the last bucket. LatencyCounts is a summed snapshot of one or more histograms; the
// difference of two snapshots is the histogram of the interval between them.
//
// Thread safety: Record from one thread at a time (the owner); AddTo from any thread, concurrently
// with Record (it may see a Record half-way: the counts are each exact, the set is not a cut).
#ifndef PAGEPOOL_CLIENT_INTERNAL_LATENCY_HISTOGRAM_H_
#define PAGEPOOL_CLIENT_INTERNAL_LATENCY_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

namespace pagepool::client::internal {

inline constexpr int kLatencySubBits = 4;  // 16 buckets per power of two
inline constexpr int kLatencyMaxExponent = 40;
inline constexpr int kLatencyBuckets = (kLatencyMaxExponent - kLatencySubBits + 2)
                                       << kLatencySubBits;

// The bucket of `ns`, and the smallest and largest value a bucket holds.
int LatencyBucket(uint64_t ns);
uint64_t LatencyBucketLow(int bucket);
uint64_t LatencyBucketHigh(int bucket);

// Counts per bucket, summed over histograms and/or subtracted between snapshots.
struct LatencyCounts {
  LatencyCounts() : counts(kLatencyBuckets, 0) {}
  // this - earlier, bucket by bucket. REQUIRES: earlier was taken before this, of the same set.
  LatencyCounts Since(const LatencyCounts& earlier) const;
  uint64_t Total() const;
  // The value below which a fraction q (0..1) of the counts lie, in microseconds: the midpoint of
  // the bucket holding that rank (within 3.2% of the exact value). 0 when empty.
  double PercentileUs(double q) const;

  std::vector<uint64_t> counts;
};

class LatencyHistogram {
 public:
  // Context: the owning thread only.
  void Record(uint64_t ns) {
    std::atomic<uint64_t>& b = buckets_[LatencyBucket(ns)];
    b.store(b.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  // Adds this histogram's counts into `into`. Context: any thread.
  void AddTo(LatencyCounts* into) const;

 private:
  std::array<std::atomic<uint64_t>, kLatencyBuckets> buckets_{};
};

}  // namespace pagepool::client::internal

#endif  // PAGEPOOL_CLIENT_INTERNAL_LATENCY_HISTOGRAM_H_
