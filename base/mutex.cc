#include "base/mutex.h"

#include <unistd.h>

#include "base/cpu_relax.h"
#include <linux/futex.h>
#include <sys/syscall.h>

namespace pagepool::base {
namespace {

// Spins before sleeping: about a microsecond, longer than most critical sections here and far
// shorter than a futex round trip through the scheduler.
constexpr int kSpins = 128;

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void FutexWakeOne(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "the futex word is the atomic");

}  // namespace

void Mutex::LockSlow() {
  for (int i = 0; i < kSpins; ++i) {
    CpuRelax();
    uint32_t s = state_.load(std::memory_order_relaxed);
    if (s == kUnlocked && state_.compare_exchange_weak(s, kLocked, std::memory_order_acquire,
                                                       std::memory_order_relaxed)) {
      return;
    }
  }
  // Sleep. Whoever takes the lock from here on marks it contended, so the unlock that ends its
  // section wakes the next sleeper (one spurious wake at most when no one sleeps any more).
  while (state_.exchange(kContended, std::memory_order_acquire) != kUnlocked) {
    FutexWait(&state_, kContended);
  }
}

void Mutex::Wake() { FutexWakeOne(&state_); }

}  // namespace pagepool::base
