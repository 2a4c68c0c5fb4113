#include "dma/internal/flush_queue.h"

#include <atomic>
#include <utility>

namespace pagepool::dma::internal {

FlushQueue::FlushQueue(base::Clock* clock, unsigned size, uint64_t timeout_ns, FlushFn flush)
    : clock_(clock),
      size_(size == 0 ? 1 : size),
      timeout_ns_(timeout_ns),
      flush_(std::move(flush)),
      shards_(new Shard[kShards]) {}

FlushQueue::~FlushQueue() = default;

unsigned FlushQueue::ShardOfThisThread() {
  static std::atomic<unsigned> next{0};
  thread_local unsigned shard = next.fetch_add(1, std::memory_order_relaxed) % kShards;
  return shard;
}

void FlushQueue::Add(FqEntry entry) {
  Shard& s = shards_[ShardOfThisThread()];
  const uint64_t now = clock_->NowNanos();
  std::vector<FqEntry> batch;
  {
    base::MutexLock l(&s.mu);
    if (s.entries.empty()) {
      s.oldest_ns = now;
      s.entries.reserve(size_);
    }
    s.entries.push_back(entry);
    if (s.entries.size() < size_ && now - s.oldest_ns < timeout_ns_) return;
    batch.swap(s.entries);
  }
  flush_(batch);
}

void FlushQueue::FlushAll() {
  std::vector<FqEntry> batch;
  for (unsigned i = 0; i < kShards; ++i) {
    Shard& s = shards_[i];
    base::MutexLock l(&s.mu);
    batch.insert(batch.end(), s.entries.begin(), s.entries.end());
    std::vector<FqEntry>().swap(s.entries);  // an idle queue keeps no memory (Add reserves again)
  }
  if (!batch.empty()) flush_(batch);
}

}  // namespace pagepool::dma::internal
