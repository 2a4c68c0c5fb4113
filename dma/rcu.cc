#include "dma/rcu.h"

namespace pagepool::dma::rcu {
namespace internal {

#ifdef PAGEPOOL_TSAN
char tsan_token;
#endif

thread_local bool thread_registered = false;

namespace {

// Unregisters the thread from liburcu when it exits. Constructed only on registration, so threads
// that never touch RCU pay nothing.
struct ThreadRegistrar {
  ThreadRegistrar() { urcu_memb_register_thread(); }
  ~ThreadRegistrar() {
    urcu_memb_unregister_thread();
    thread_registered = false;
  }
};

}  // namespace

void RegisterThreadSlow() {
  thread_local ThreadRegistrar registrar;
  thread_registered = true;
}

}  // namespace internal

void Synchronize() {
  EnsureThreadRegistered();
  urcu_memb_synchronize_rcu();
  internal::TsanAcquire();
}

void CallRcu(Head* head, Callback fn) {
  EnsureThreadRegistered();
  internal::TsanRelease();  // what the caller wrote before queuing happens-before the callback
  urcu_memb_call_rcu(head, fn);
}

void Barrier() {
  EnsureThreadRegistered();
  urcu_memb_barrier();
  internal::TsanAcquire();
}

}  // namespace pagepool::dma::rcu
