#include "base/rcu.h"

#include <cstddef>
#include <future>

namespace pagepool::base::rcu {
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

namespace {

// A callback queued behind every earlier one; completes a promise when it runs. Standard layout,
// so the callback can get from its head back to the marker.
struct BarrierMarker {
  Head head;
  std::promise<void>* done;
};

void BarrierMarkerRun(Head* head) {
  CallbackBegin();
  auto* m = reinterpret_cast<BarrierMarker*>(reinterpret_cast<char*>(head) -
                                             offsetof(BarrierMarker, head));
  m->done->set_value();
  delete m->done;
  delete m;
}

}  // namespace

void Barrier() {
  // Not urcu_memb_barrier(): its completion record is calloc'ed here and freed by the call_rcu
  // thread with only liburcu's (uninstrumented) ordering in between, which TSan reports in every
  // binary that destroys a domain. Every call_rcu of this process goes to liburcu's default
  // call_rcu thread (nothing here creates per-CPU or per-thread call_rcu data), whose queue runs in
  // FIFO order, so a marker queued now runs after every callback queued before it.
  EnsureThreadRegistered();
  auto* m = new BarrierMarker{Head{}, new std::promise<void>()};
  std::future<void> done = m->done->get_future();
  CallRcu(&m->head, &BarrierMarkerRun);
  done.wait();
  internal::TsanAcquire();
}

}  // namespace pagepool::base::rcu
