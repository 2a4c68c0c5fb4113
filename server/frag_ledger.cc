#include "server/frag_ledger.h"

#include "absl/strings/str_cat.h"

namespace pagepool::server {

void FragLedger::Add(absl::Span<const pool::PoolFrag> frags) {
  base::MutexLock l(&mu_);
  for (const pool::PoolFrag& f : frags) {
    Entry& e = held_[Key{f.handle.page.frame, f.handle.offset}];
    // A fragment of the page's previous life is never left here: its last reference was taken
    // before the pool could reuse the page.
    if (e.refs != 0 && e.generation != f.handle.page.generation) e.refs = 0;
    e.generation = f.handle.page.generation;
    e.size = f.handle.size;
    ++e.refs;
  }
}

absl::Status FragLedger::CheckLocked(const pool::FragHandle& f, uint32_t times) const {
  auto it = held_.find(Key{f.page.frame, f.offset});
  if (it == held_.end() || it->second.generation != f.page.generation) {
    return absl::FailedPreconditionError(
        absl::StrCat("no fragment of frame ", f.page.frame, " generation ", f.page.generation,
                     " is in flight at offset ", f.offset,
                     " (already given back: a double return; or never handed out at that offset)"));
  }
  const Entry& e = it->second;
  if (e.size != f.size) {
    return absl::FailedPreconditionError(absl::StrCat("the fragment at offset ", f.offset,
                                                      " of frame ", f.page.frame, " is ", e.size,
                                                      " bytes, not ", f.size));
  }
  if (times > e.refs) {
    return absl::FailedPreconditionError(
        absl::StrCat("the fragment at offset ", f.offset, " of frame ", f.page.frame, " is named ",
                     times, " times in the call but holds ", e.refs,
                     e.refs == 1 ? " reference" : " references", " (a double return)"));
  }
  return absl::OkStatus();
}

void FragLedger::TakeLocked(const pool::FragHandle& f) {
  auto it = held_.find(Key{f.page.frame, f.offset});
  if (--it->second.refs == 0) held_.erase(it);
}

absl::Status FragLedger::TakeAll(absl::Span<const pool::FragHandle> frags, int* bad) {
  // How often each fragment is named so far in the call; a fragment with an extra reference may
  // be named once per reference.
  absl::flat_hash_map<Key, uint32_t> named;
  base::MutexLock l(&mu_);
  for (size_t i = 0; i < frags.size(); ++i) {
    const uint32_t times = ++named[Key{frags[i].page.frame, frags[i].offset}];
    if (absl::Status s = CheckLocked(frags[i], times); !s.ok()) {
      *bad = static_cast<int>(i);
      refused_.fetch_add(1, std::memory_order_relaxed);
      return s;
    }
  }
  for (const pool::FragHandle& f : frags) TakeLocked(f);
  return absl::OkStatus();
}

absl::Status FragLedger::RefAll(absl::Span<const pool::FragHandle> frags, int* bad,
                                absl::FunctionRef<absl::Status(size_t)> ref,
                                absl::FunctionRef<void(size_t)> unref) {
  base::MutexLock l(&mu_);
  for (size_t i = 0; i < frags.size(); ++i) {
    if (absl::Status s = CheckLocked(frags[i], 1); !s.ok()) {
      *bad = static_cast<int>(i);
      refused_.fetch_add(1, std::memory_order_relaxed);
      return s;
    }
  }
  for (size_t i = 0; i < frags.size(); ++i) {
    if (absl::Status s = ref(i); !s.ok()) {
      for (size_t j = 0; j < i; ++j) unref(j);
      *bad = static_cast<int>(i);
      return s;
    }
  }
  for (const pool::FragHandle& f : frags) ++held_.find(Key{f.page.frame, f.offset})->second.refs;
  return absl::OkStatus();
}

absl::Status FragLedger::Take(const pool::FragHandle& frag) {
  base::MutexLock l(&mu_);
  if (absl::Status s = CheckLocked(frag, 1); !s.ok()) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    return s;
  }
  TakeLocked(frag);
  return absl::OkStatus();
}

size_t FragLedger::size() const {
  base::MutexLock l(&mu_);
  return held_.size();
}

}  // namespace pagepool::server
