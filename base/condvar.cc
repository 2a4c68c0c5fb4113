#include "base/condvar.h"

#include <time.h>
#include <unistd.h>

#include <linux/futex.h>
#include <sys/syscall.h>

namespace pagepool::base {
namespace {

// Sleeps while *word == expected, at most `timeout` (nullptr: no limit). EAGAIN (the word changed
// since it was read), EINTR and ETIMEDOUT all just return: callers re-check their predicate.
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected, const struct timespec* timeout) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, timeout,
          nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>* word, int n) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

}  // namespace

// The sequence number is read while the mutex is held: a signaller that changed the predicate under
// the mutex after this read bumps it, so the futex wait returns at once instead of missing the
// wake.
void CondVar::Wait(Mutex* mu) {
  const uint32_t seq = seq_.load(std::memory_order_acquire);
  mu->Unlock();
  FutexWait(&seq_, seq, nullptr);
  mu->Lock();
}

void CondVar::WaitFor(Mutex* mu, uint64_t timeout_ns) {
  const uint32_t seq = seq_.load(std::memory_order_acquire);
  mu->Unlock();
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
  FutexWait(&seq_, seq, &ts);
  mu->Lock();
}

void CondVar::Signal() {
  seq_.fetch_add(1, std::memory_order_release);
  FutexWake(&seq_, 1);
}

void CondVar::SignalAll() {
  seq_.fetch_add(1, std::memory_order_release);
  FutexWake(&seq_, 0x7fffffff);
}

}  // namespace pagepool::base
