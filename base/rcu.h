// File: base/rcu.h
//
// The one place pagepoold touches liburcu (the memb flavour: readers cost a compiler barrier, the
// writer side uses membarrier). Everything else uses these small wrappers:
//
//   rcu::ReadLock        RAII read-side critical section; registers the calling thread lazily.
//   rcu::Synchronize()   waits for a grace period (every reader that started before has ended).
//   rcu::CallRcu(h, fn)  runs fn(h) after a grace period, on liburcu's call_rcu thread.
//   rcu::Barrier()       waits until every callback queued so far has run (before teardown).
//
// Thread registration is automatic: the first ReadLock (or CallRcu/Barrier) on a thread registers
// it with liburcu, and a thread_local registrar unregisters it when the thread exits. pool/ and
// server/ threads therefore never call anything RCU-specific before using the domain.
//
// Fast path: outside ThreadSanitizer builds this header defines _LGPL_SOURCE before including
// liburcu, so the read-side lock and unlock are liburcu's inline versions (urcu/static/urcu-memb.h)
// rather than two calls into the shared library with a dynamic TLS lookup each (see BENCHMARKS.md).
// Only this header includes liburcu, so every translation unit sees the same ReadLock. Under
// PAGEPOOL_TSAN the library's out-of-line functions are used: the inline code syncs readers and
// writers with plain volatile accesses that TSan would report.
//
// ThreadSanitizer does not see liburcu's grace-period ordering (membarrier and futexes inside an
// uninstrumented library). Under PAGEPOOL_TSAN every read-unlock releases a token and every
// Synchronize / callback start acquires it, so the end of each reader happens-before the memory a
// callback frees. Without PAGEPOOL_TSAN the annotations compile to nothing.
//
// Thread safety: every function may be called from any thread. Synchronize() and Barrier() must not
// be called while the calling thread holds a ReadLock (they would wait for themselves).
#ifndef PAGEPOOL_BASE_RCU_H_
#define PAGEPOOL_BASE_RCU_H_

#if !defined(PAGEPOOL_TSAN) && !defined(_LGPL_SOURCE)
#define _LGPL_SOURCE 1
#define PAGEPOOL_RCU_DEFINED_LGPL_SOURCE 1
#endif
#include <urcu/urcu-memb.h>
#ifdef PAGEPOOL_RCU_DEFINED_LGPL_SOURCE
#undef _LGPL_SOURCE
#undef PAGEPOOL_RCU_DEFINED_LGPL_SOURCE
#endif

namespace pagepool::base::rcu {

// liburcu's callback head; embed it in the object to be freed.
using Head = ::rcu_head;
using Callback = void (*)(Head*);

namespace internal {

#ifdef PAGEPOOL_TSAN
extern "C" void __tsan_acquire(void* addr);  // NOLINT: TSan's annotation interface
extern "C" void __tsan_release(void* addr);  // NOLINT
extern char tsan_token;
inline void TsanRelease() { __tsan_release(&tsan_token); }
inline void TsanAcquire() { __tsan_acquire(&tsan_token); }
#else
inline void TsanRelease() {}
inline void TsanAcquire() {}
#endif

// Registers the calling thread with liburcu on first use (slow path out of line).
void RegisterThreadSlow();
extern thread_local bool thread_registered;

}  // namespace internal

// Registers the calling thread if it is not yet registered. Cheap after the first call.
// Context: any thread.
inline void EnsureThreadRegistered() {
  if (__builtin_expect(!internal::thread_registered, 0)) internal::RegisterThreadSlow();
}

// An RCU read-side critical section for the lifetime of the object. Nests.
// Context: any thread; must not block for long (it holds back every grace period).
class ReadLock {
 public:
  ReadLock() {
    EnsureThreadRegistered();
    urcu_memb_read_lock();
  }
  ~ReadLock() {
    internal::TsanRelease();
    urcu_memb_read_unlock();
  }
  ReadLock(const ReadLock&) = delete;
  ReadLock& operator=(const ReadLock&) = delete;
};

// True if the calling thread is inside a ReadLock.
inline bool ReadLockHeld() { return internal::thread_registered && urcu_memb_read_ongoing() != 0; }

// Waits for a grace period. REQUIRES: the caller holds no ReadLock.
void Synchronize();

// Queues fn(head) to run after a grace period on liburcu's call_rcu thread. The callback must start
// with CallbackBegin() (the TSan acquire). Context: any thread, inside or outside a ReadLock.
void CallRcu(Head* head, Callback fn);

// First statement of every callback handed to CallRcu.
inline void CallbackBegin() { internal::TsanAcquire(); }

// Waits until every callback queued by CallRcu so far has run (rcu_barrier; implemented with a
// marker callback on liburcu's default call_rcu thread, which pagepoold always uses). REQUIRES: the
// caller holds no ReadLock and is not itself a callback.
void Barrier();

}  // namespace pagepool::base::rcu

#endif  // PAGEPOOL_BASE_RCU_H_
