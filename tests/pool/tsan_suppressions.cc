// File: tests/pool/tsan_suppressions.cc
//
// ThreadSanitizer suppressions compiled into the pool/ test binaries. liburcu is not instrumented:
// its call_rcu thread and grace-period machinery order memory with their own atomics and futexes,
// which TSan cannot see. The orderings this project relies on are annotated in base/rcu.h (every
// read-unlock releases, every Synchronize and callback start acquires, Barrier() waits on a marker
// callback); this only silences what happens inside liburcu itself.
#ifdef PAGEPOOL_TSAN
extern "C" const char* __tsan_default_suppressions() {
  return "called_from_lib:liburcu-memb.so\n"
         "called_from_lib:liburcu-common.so\n";
}
#endif
