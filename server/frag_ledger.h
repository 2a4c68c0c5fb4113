// File: server/frag_ledger.h
//
// FragLedger: the fragments of one pool that clients hold, one entry per fragment handed out
// (frame, offset), with the generation its page was split at, its size and the references held on
// it. The pool counts references per page (pp_ref_count, as the kernel does), so a fragment given
// back twice while another fragment of its page is still held would take that one's reference, and
// an offset no fragment was handed out at would drop one too. The daemon faces clients, not a
// driver: it checks every fragment give-back against this ledger first and refuses, with
// FAILED_PRECONDITION, a fragment that is not held at that offset, generation and size (a double
// return, a wrong offset, a stale handle), so the pool only ever sees puts that a correct driver
// would make. The ledger follows the pool's own count: the references it holds for a page are the
// page's pp_ref_count without the pool's bias, and a page's entries are gone exactly when its last
// reference is given back (before the pool may reuse the page).
//
// Thread safety: every method may be called from any thread; one mutex guards the entries.
#ifndef PAGEPOOL_SERVER_FRAG_LEDGER_H_
#define PAGEPOOL_SERVER_FRAG_LEDGER_H_

#include <atomic>
#include <cstdint>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "pool/page_pool.h"

namespace pagepool::server {

class FragLedger {
 public:
  // Records fragments handed out (one reference each).
  void Add(absl::Span<const pool::PoolFrag> frags);

  // All or nothing: when every fragment of `frags` is held (at that frame, offset, generation and
  // size, and named no more often than references are held on it), takes one reference of each
  // (an entry whose last reference goes is erased) and returns OK. Otherwise takes nothing, sets
  // *bad to the index of the first bad fragment and returns its FAILED_PRECONDITION (the message
  // names the fragment, without its index), and counts one refusal.
  absl::Status TakeAll(absl::Span<const pool::FragHandle> frags, int* bad);
  // One fragment, as TakeAll.
  absl::Status Take(const pool::FragHandle& frag);
  // All or nothing, as TakeAll, but adds references: when every fragment of `frags` is held,
  // calls ref(i) for each in order, holding the ledger's mutex (so no take can interleave); if
  // ref(i) fails, unref(j) is called for every j < i, nothing is added and ref's status returned
  // (*bad = i). On success each fragment holds one more reference.
  absl::Status RefAll(absl::Span<const pool::FragHandle> frags, int* bad,
                      absl::FunctionRef<absl::Status(size_t)> ref,
                      absl::FunctionRef<void(size_t)> unref);

  // Counts a fragment give-back refused before the ledger was asked (a malformed handle, a page
  // not split into fragments at that generation).
  void CountRefusal() { refused_.fetch_add(1, std::memory_order_relaxed); }
  // Fragment give-backs refused (by this ledger, and those counted by CountRefusal).
  uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }
  // Fragments with references held (entries).
  size_t size() const;

 private:
  struct Entry {
    uint32_t generation = 0;
    uint32_t size = 0;
    uint32_t refs = 0;
  };
  using Key = std::pair<uint64_t, uint32_t>;  // frame, offset

  // The status for a fragment that cannot be taken `times` more times, or OK.
  absl::Status CheckLocked(const pool::FragHandle& frag, uint32_t times) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TakeLocked(const pool::FragHandle& frag) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable base::Mutex mu_;
  absl::flat_hash_map<Key, Entry> held_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> refused_{0};
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_FRAG_LEDGER_H_
