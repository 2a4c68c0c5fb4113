// File: base/condvar.h
//
// The condition variable that goes with base::Mutex: a thread waits, with the mutex held, until
// another thread changes the guarded state and signals. Like the mutex it is a futex word (a
// sequence number bumped by every signal), so a sleeping waiter costs no CPU and a signal with no
// waiter is one atomic increment and one futex wake.
//
// Usage, as with any condition variable: check the predicate in a loop (wake-ups may be spurious).
//
//   base::MutexLock l(&mu_);
//   while (!ready_) cv_.Wait(&mu_);
//
// ThreadSanitizer: the futex is invisible to it, but the waiter re-acquires the mutex after waking,
// and base::Mutex carries TSan's annotations, so the guarded state is ordered as TSan expects.
//
// Thread safety: any thread. Signal / SignalAll may be called with or without the mutex held; to
// avoid a lost wake-up the signaller changes the predicate under the mutex first.
#ifndef PAGEPOOL_BASE_CONDVAR_H_
#define PAGEPOOL_BASE_CONDVAR_H_

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "base/mutex.h"

namespace pagepool::base {

class CondVar {
 public:
  constexpr CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  // Releases `mu`, sleeps until a signal (or spuriously), re-acquires `mu`.
  // REQUIRES: the caller holds `mu`. Context: any thread not holding an RCU read lock.
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // As Wait, but returns at the latest after `timeout_ns` of real (monotonic) time.
  // REQUIRES: the caller holds `mu`. Context: any thread not holding an RCU read lock.
  void WaitFor(Mutex* mu, uint64_t timeout_ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Wakes one waiter / every waiter. Context: any thread.
  void Signal();
  void SignalAll();

 private:
  std::atomic<uint32_t> seq_{0};
};

}  // namespace pagepool::base

#endif  // PAGEPOOL_BASE_CONDVAR_H_
