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
    std::lock_guard<std::mutex> l(timer_mu_);
    stop_.store(true, std::memory_order_release);
    timer_armed_.store(true, std::memory_order_release);
  }
  timer_cv_.notify_all();
  timer_.join();
}

void FlushQueue::TimerLoop() {
  constexpr auto kStep = std::chrono::milliseconds(1);
  for (;;) {
    {
      std::unique_lock<std::mutex> l(timer_mu_);  // armed by the first Add
      timer_cv_.wait(l, [this] {
        return timer_armed_.load(std::memory_order_acquire) ||
               stop_.load(std::memory_order_acquire);
      });
    }
    if (stop_.load(std::memory_order_acquire)) return;
    // Sleep one timeout (real time), in steps so that the destructor need not wait for it.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(timeout_ns_);
    while (std::chrono::steady_clock::now() < deadline) {
      if (stop_.load(std::memory_order_acquire)) return;
      std::this_thread::sleep_for(kStep);
    }
    timer_armed_.store(false, std::memory_order_release);
    // Entries queued meanwhile, or not yet expired by the (injected) clock: re-arm.
    if (FlushExpired()) timer_armed_.store(true, std::memory_order_release);
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
      if (timer_.joinable() && !timer_armed_.load(std::memory_order_relaxed) &&
          !timer_armed_.exchange(true, std::memory_order_acq_rel)) {
        std::lock_guard<std::mutex> tl(timer_mu_);  // pairs with the timer's predicate check
        timer_cv_.notify_one();
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
