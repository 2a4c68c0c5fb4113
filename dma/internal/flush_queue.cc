#include "dma/internal/flush_queue.h"

#include <atomic>
#include <chrono>
#include <utility>

namespace pagepool::dma::internal {

FlushQueue::FlushQueue(base::Clock* clock, unsigned size, uint64_t timeout_ns, FlushFn flush,
                       IdleFn on_timer)
    : clock_(clock),
      size_(size == 0 ? 1 : size),
      timeout_ns_(timeout_ns),
      flush_(std::move(flush)),
      shards_(new Shard[kShards]),
      on_timer_(std::move(on_timer)) {
  if (on_timer_) timer_ = std::thread([this] { TimerLoop(); });
}

FlushQueue::~FlushQueue() {
  if (!timer_.joinable()) return;
  {
    base::MutexLock l(&timer_mu_);
    stop_ = true;
  }
  timer_cv_.SignalAll();
  timer_.join();
}

void FlushQueue::ArmTimer() {
  {
    base::MutexLock l(&timer_mu_);
    if (armed_) return;
    armed_ = true;
    armed_hint_.store(true, std::memory_order_seq_cst);
  }
  timer_cv_.Signal();
}

void FlushQueue::TimerLoop() {
  for (;;) {
    {
      base::MutexLock l(&timer_mu_);
      while (!armed_ && !stop_) timer_cv_.Wait(&timer_mu_);  // armed by the first Add
      // One timeout of real time; the destructor's signal ends it early.
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::nanoseconds(timeout_ns_);
      for (;;) {
        if (stop_) return;
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) break;
        timer_cv_.WaitFor(&timer_mu_,
                          static_cast<uint64_t>(std::chrono::nanoseconds(deadline - now).count()));
      }
      armed_ = false;
      armed_hint_.store(false, std::memory_order_seq_cst);
    }
    // Entries queued meanwhile, or not yet expired by the (injected) clock: re-arm. An Add that saw
    // the timer still armed queued its entry before the shard scan below takes its shard lock, so
    // the scan sees it (and re-arms) or flushes it.
    if (FlushExpired()) ArmTimer();
    on_timer_();
  }
}

bool FlushQueue::FlushExpired() {
  const uint64_t now = clock_->NowNanos();
  std::vector<FqEntry> batch;
  bool remain = false;
  for (unsigned i = 0; i < kShards; ++i) {
    Shard& s = shards_[i];
    base::MutexLock l(&s.mu);
    if (s.entries.empty()) continue;
    if (now - s.oldest_ns < timeout_ns_) {
      remain = true;
      continue;
    }
    batch.insert(batch.end(), s.entries.begin(), s.entries.end());
    s.entries.clear();
  }
  if (!batch.empty()) flush_(batch);
  return remain;
}

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
    if (s.entries.size() < size_ && now - s.oldest_ns < timeout_ns_) {
      if (timer_.joinable() && !armed_hint_.load(std::memory_order_seq_cst)) {
        // Lock order: a shard's mu, then timer_mu_ (the timer thread never holds both).
        ArmTimer();
      }
      return;
    }
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
