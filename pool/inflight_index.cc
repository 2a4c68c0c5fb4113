// File: pool/inflight_index.cc
#include "pool/inflight_index.h"

#include <algorithm>
#include <bit>
#include <new>

#include "absl/strings/str_cat.h"
#include "base/rcu.h"

namespace pagepool::pool {
namespace {

// Counters written only under the index lock (read anywhere): no locked instruction needed.
inline void LockedAdd(std::atomic<uint64_t>& c, uint64_t d) {
  c.store(c.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
}
inline void LockedSub(std::atomic<uint64_t>& c, uint64_t d) {
  c.store(c.load(std::memory_order_relaxed) - d, std::memory_order_relaxed);
}

}  // namespace

namespace internal {

constexpr unsigned kChunkShift = 6;  // XA_CHUNK_SHIFT
constexpr unsigned kChunkSize = 1u << kChunkShift;
constexpr unsigned kChunkMask = kChunkSize - 1;

// xa_node. `slots` is read lock-free by RCU readers; every other field is the writers' (index
// lock). A node's `shift` is set before the node is published and never changes.
struct IndexNode {
  std::atomic<void*> slots[kChunkSize];
  uint64_t free_mask =
      ~uint64_t{0};  // XA_FREE_MARK: bit i set when slot i (or its subtree) has room
  IndexNode* parent = nullptr;
  uint8_t shift = 0;
  uint8_t offset = 0;  // slot in the parent
  uint8_t count = 0;   // non-null slots
  base::rcu::Head rcu;

  explicit IndexNode(unsigned s) : shift(uint8_t(s)) {
    for (auto& slot : slots) slot.store(nullptr, std::memory_order_relaxed);
  }
};

namespace {

// Id 0 is never handed out (XA_FLAGS_ALLOC1); its slot holds this marker so the lowest-free search
// needs no special case. Readers never return it.
void* const kReserved = reinterpret_cast<void*>(uintptr_t{1});

// Stores `page` in the empty slot i of `leaf` and takes the slot's free mark.
inline void StoreInLeaf(IndexNode* leaf, unsigned i, PageRecord* page) {
  leaf->slots[i].store(page, std::memory_order_release);
  ++leaf->count;
  leaf->free_mask &= ~(uint64_t{1} << i);
}

// A node that just became full clears its free mark in its parent, and so on up.
inline void ClearFullMarksUpward(IndexNode* node) {
  while (node->free_mask == 0 && node->parent != nullptr) {
    node->parent->free_mask &= ~(uint64_t{1} << node->offset);
    node = node->parent;
  }
}

// Frees a chain of retired nodes linked through `parent` (see InflightIndex::DeleteNodeLocked).
void FreeNodeChainCallback(base::rcu::Head* head) {
  base::rcu::CallbackBegin();
  IndexNode* node =
      reinterpret_cast<IndexNode*>(reinterpret_cast<char*>(head) - offsetof(IndexNode, rcu));
  while (node != nullptr) {
    IndexNode* next = node->parent;
    delete node;
    node = next;
  }
}

void DeleteTree(IndexNode* node) {
  if (node == nullptr) return;
  if (node->shift > 0) {
    for (auto& slot : node->slots) {
      DeleteTree(static_cast<IndexNode*>(slot.load(std::memory_order_relaxed)));
    }
  }
  delete node;
}

bool WalkNode(const IndexNode* node, uint64_t base,
              absl::FunctionRef<bool(uint32_t, PageRecord*)> fn) {
  for (unsigned i = 0; i < kChunkSize; ++i) {
    void* e = node->slots[i].load(std::memory_order_acquire);
    if (e == nullptr) continue;
    const uint64_t id = base | (uint64_t{i} << node->shift);
    if (node->shift == 0) {
      if (e == kReserved) continue;
      if (!fn(uint32_t(id), static_cast<PageRecord*>(e))) return false;
    } else if (!WalkNode(static_cast<const IndexNode*>(e), id, fn)) {
      return false;
    }
  }
  return true;
}

// A ForEachFrom walk: where it starts, how many entries it may still visit, and where to resume.
struct WalkFrom {
  uint64_t first_id;
  size_t max;  // 0: no limit
  size_t visited = 0;
  absl::FunctionRef<bool(uint32_t, PageRecord*)> fn;
  uint32_t resume = 0;  // 0: done
};

// Visits the entries of the subtree of `node` (first id `base`) at or above w->first_id. Returns
// false once the walk has stopped (w->resume set).
bool WalkNodeFrom(const IndexNode* node, uint64_t base, WalkFrom* w) {
  unsigned i = 0;
  if (w->first_id > base) {
    // Only the first node at each level on the way down starts mid-node; the first_id lies in its
    // span (the caller checked the root's reach, and a child is entered at the slot covering it).
    i = unsigned((w->first_id - base) >> node->shift);
  }
  for (; i < kChunkSize; ++i) {
    void* e = node->slots[i].load(std::memory_order_acquire);
    if (e == nullptr) continue;
    const uint64_t id = base | (uint64_t{i} << node->shift);
    if (node->shift == 0) {
      if (e == kReserved) continue;
      if (w->max != 0 && w->visited == w->max) {
        w->resume = uint32_t(id);  // the first entry left for the next piece
        return false;
      }
      ++w->visited;
      if (!w->fn(uint32_t(id), static_cast<PageRecord*>(e))) {
        w->resume = uint32_t(id + 1);  // 0 past the last possible id: done
        return false;
      }
    } else if (!WalkNodeFrom(static_cast<const IndexNode*>(e), id, w)) {
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace internal

using internal::IndexNode;
using internal::kChunkMask;
using internal::kChunkShift;
using internal::kChunkSize;

InflightIndex::InflightIndex(uint32_t limit) : limit_(limit == 0 ? 1 : limit) {}

InflightIndex::~InflightIndex() {
  {
    base::MutexLock l(&lock_);
    FlushRetiredLocked();
  }
  internal::DeleteTree(root_.load(std::memory_order_relaxed));
}

size_t InflightIndex::NodeSize() { return sizeof(IndexNode); }

void InflightIndex::DeleteNodeLocked(IndexNode* node) {
  if (node == hint_.leaf) hint_ = LeafHint();
  LockedSub(nodes_, 1);
  LockedAdd(nodes_freed_, 1);
  // Unlinked nodes are chained (through `parent`, which no reader looks at) and handed to RCU in
  // batches: one call_rcu (and at most one wake-up of liburcu's callback thread) per
  // kRetireBatch nodes rather than per node, which matters when a pool's ids churn around a node
  // boundary.
  node->parent = retired_;
  retired_ = node;
  if (++retired_count_ >= kRetireBatch) FlushRetiredLocked();
}

void InflightIndex::FlushRetiredLocked() {
  if (retired_ == nullptr) return;
  base::rcu::CallRcu(&retired_->rcu, &internal::FreeNodeChainCallback);
  retired_ = nullptr;
  retired_count_ = 0;
}

absl::StatusOr<uint32_t> InflightIndex::Alloc(PageRecord* page) {
  base::MutexLock l(&lock_);
  return AllocLocked(page, &hint_);
}

void InflightIndex::ForgetHintBelowLocked(uint64_t id) {
  // The hint stays right while no id below its leaf is free: a removal there drops it.
  if (id < hint_.base) hint_ = LeafHint();
}

size_t InflightIndex::AllocBulk(absl::Span<PageRecord* const> pages, absl::Span<uint32_t> ids) {
  base::MutexLock l(&lock_);
  LeafHint hint;
  size_t n = 0;
  const size_t count = std::min(pages.size(), ids.size());
  uint64_t shortcut = 0;  // entries added inline (AllocLocked counts its own)
  while (n < count) {
    // AllocLocked's shortcut, inline and with the leaf's mask and count in registers: the hinted
    // leaf gives ids while it keeps room after the id and stays below the limit (the leaf becoming
    // full, and every other case, go through AllocLocked).
    if (IndexNode* leaf = hint.leaf; leaf != nullptr) {
      uint64_t mask = leaf->free_mask;
      unsigned filled = 0;
      while (n < count && (mask & (mask - 1)) != 0) {
        const unsigned i = unsigned(std::countr_zero(mask));
        const uint64_t id = hint.base | i;
        if (id > limit_) break;
        leaf->slots[i].store(pages[n], std::memory_order_release);
        ids[n++] = uint32_t(id);
        mask &= mask - 1;
        ++filled;
      }
      leaf->free_mask = mask;
      leaf->count = uint8_t(leaf->count + filled);
      shortcut += filled;
      if (n == count) break;
    }
    absl::StatusOr<uint32_t> id = AllocLocked(pages[n], &hint);
    if (!id.ok()) break;
    ids[n++] = *id;
  }
  LockedAdd(entries_, shortcut);
  return n;
}

absl::StatusOr<uint32_t> InflightIndex::AllocLocked(PageRecord* page, LeafHint* hint) {
  uint32_t id = AllocFromHintLocked(page, *hint);
  if (id == 0) {
    absl::StatusOr<IndexNode*> root = RootWithRoomLocked();
    if (!root.ok()) return root.status();
    absl::StatusOr<uint32_t> stored = DescendAndStoreLocked(*root, page, hint);
    if (!stored.ok()) return stored.status();
    id = *stored;
  }
  LockedAdd(entries_, 1);
  return id;
}

uint32_t InflightIndex::AllocFromHintLocked(PageRecord* page, const LeafHint& hint) {
  // The leaf that held the previous lowest free id still holds the next one if it has room: every
  // id below the previous one is taken, and every id above this leaf is above its free slots.
  IndexNode* leaf = hint.leaf;
  if (leaf == nullptr || leaf->free_mask == 0) return 0;
  const unsigned i = unsigned(std::countr_zero(leaf->free_mask));
  const uint64_t id = hint.base | i;
  if (id > limit_) return 0;
  internal::StoreInLeaf(leaf, i, page);
  internal::ClearFullMarksUpward(leaf);
  return uint32_t(id);
}

absl::StatusOr<IndexNode*> InflightIndex::RootWithRoomLocked() {
  IndexNode* root = root_.load(std::memory_order_relaxed);
  if (root == nullptr) {
    root = NewNodeLocked(0);
    if (root == nullptr) return NodeOutOfMemory();
    root->slots[0].store(internal::kReserved, std::memory_order_relaxed);
    root->count = 1;
    root->free_mask = ~uint64_t{1};
    root_.store(root, std::memory_order_release);
  }
  // Grow upward while the tree is full and the limit allows ids beyond its reach (xas_expand).
  while (root->free_mask == 0) {
    const uint64_t capacity = uint64_t{1} << (root->shift + kChunkShift);
    if (capacity - 1 >= limit_) return IdSpaceFullLocked();
    IndexNode* top = NewNodeLocked(root->shift + kChunkShift);
    if (top == nullptr) return NodeOutOfMemory();
    top->slots[0].store(root, std::memory_order_relaxed);
    top->count = 1;
    top->free_mask = ~uint64_t{1};
    root->parent = top;
    root->offset = 0;
    root_.store(top, std::memory_order_release);
    root = top;
  }
  return root;
}

absl::StatusOr<uint32_t> InflightIndex::DescendAndStoreLocked(IndexNode* root, PageRecord* page,
                                                              LeafHint* hint) {
  // Descend along the lowest free mark, creating the nodes that are missing.
  IndexNode* node = root;
  uint64_t id = 0;
  for (;;) {
    const unsigned i = unsigned(std::countr_zero(node->free_mask));
    id |= uint64_t{i} << node->shift;
    if (id > limit_) return IdSpaceFullLocked();
    if (node->shift == 0) {
      hint->leaf = node;
      hint->base = id & ~uint64_t{kChunkMask};
      internal::StoreInLeaf(node, i, page);
      internal::ClearFullMarksUpward(node);
      return uint32_t(id);
    }
    IndexNode* child = static_cast<IndexNode*>(node->slots[i].load(std::memory_order_relaxed));
    if (child == nullptr) {
      child = NewNodeLocked(node->shift - kChunkShift);
      if (child == nullptr) return NodeOutOfMemory();
      child->parent = node;
      child->offset = uint8_t(i);
      node->slots[i].store(child, std::memory_order_release);
      ++node->count;
    }
    node = child;
  }
}

IndexNode* InflightIndex::NewNodeLocked(unsigned shift) {
  IndexNode* node = new (std::nothrow) IndexNode(shift);
  if (node != nullptr) {
    LockedAdd(nodes_, 1);
    LockedAdd(nodes_allocated_, 1);
  }
  return node;
}

absl::Status InflightIndex::IdSpaceFullLocked() {
  LockedAdd(alloc_failures_, 1);
  return absl::ResourceExhaustedError(
      absl::StrCat("in-flight index ID space full: every id 1..", limit_, " in use"));
}

absl::Status InflightIndex::NodeOutOfMemory() {
  return absl::ResourceExhaustedError("in-flight index: out of memory");
}

PageRecord* InflightIndex::Load(uint32_t id) const {
  base::rcu::ReadLock rcu;
  const IndexNode* node = root_.load(std::memory_order_acquire);
  if (node == nullptr || (uint64_t{id} >> (node->shift + kChunkShift)) != 0) return nullptr;
  while (node->shift > 0) {
    node = static_cast<const IndexNode*>(
        node->slots[(id >> node->shift) & kChunkMask].load(std::memory_order_acquire));
    if (node == nullptr) return nullptr;
  }
  void* e = node->slots[id & kChunkMask].load(std::memory_order_acquire);
  return e == internal::kReserved ? nullptr : static_cast<PageRecord*>(e);
}

IndexNode* InflightIndex::LeafForLocked(uint32_t id) const {
  IndexNode* node = root_.load(std::memory_order_relaxed);
  if (node == nullptr || (uint64_t{id} >> (node->shift + kChunkShift)) != 0) return nullptr;
  while (node != nullptr && node->shift > 0) {
    node = static_cast<IndexNode*>(
        node->slots[(id >> node->shift) & kChunkMask].load(std::memory_order_relaxed));
  }
  return node;
}

void InflightIndex::RemoveLocked(IndexNode* leaf, unsigned offset) {
  leaf->slots[offset].store(nullptr, std::memory_order_release);
  --leaf->count;
  // Set the free mark, and in every ancestor that had none.
  IndexNode* node = leaf;
  bool was_full = node->free_mask == 0;
  node->free_mask |= uint64_t{1} << offset;
  while (was_full && node->parent != nullptr) {
    IndexNode* p = node->parent;
    was_full = p->free_mask == 0;
    p->free_mask |= uint64_t{1} << node->offset;
    node = p;
  }
  // Unlink nodes left empty (the root always keeps the reserved id 0 path). A tree of at most
  // kKeepNodes nodes keeps its empty nodes: a pool whose ids churn across a node boundary (ids
  // 1..64 need two leaves and a root) would otherwise allocate, publish and RCU-free nodes on every
  // cycle. The kernel's xarray frees eagerly; this bounded cache is the model's only difference.
  if (nodes_.load(std::memory_order_relaxed) <= kKeepNodes) return;
  node = leaf;
  while (node->count == 0 && node->parent != nullptr) {
    IndexNode* p = node->parent;
    p->slots[node->offset].store(nullptr, std::memory_order_release);
    --p->count;
    DeleteNodeLocked(node);
    node = p;
  }
  ShrinkLocked();
}

void InflightIndex::ShrinkLocked() {
  // xas_shrink: a root whose only child is slot 0 is replaced by that child.
  for (;;) {
    IndexNode* root = root_.load(std::memory_order_relaxed);
    if (root == nullptr || root->shift == 0 || root->count != 1) return;
    IndexNode* child = static_cast<IndexNode*>(root->slots[0].load(std::memory_order_relaxed));
    if (child == nullptr) return;
    child->parent = nullptr;
    root_.store(child, std::memory_order_release);
    DeleteNodeLocked(root);  // readers holding the old root still see slot 0 -> child
  }
}

bool InflightIndex::CompareExchange(uint32_t id, PageRecord* expected, PageRecord* desired) {
  if (desired != nullptr || expected == nullptr || id == 0) return false;
  base::MutexLock l(&lock_);
  IndexNode* leaf = LeafForLocked(id);
  if (leaf == nullptr) return false;
  const unsigned offset = id & kChunkMask;
  if (leaf->slots[offset].load(std::memory_order_relaxed) != expected) return false;
  ForgetHintBelowLocked(id);
  if (leaf->free_mask != 0 && leaf->count > 1) [[likely]] {
    // RemoveLocked's common case, inline: no ancestor mark changes (the leaf already had room)
    // and the leaf stays linked (it keeps an entry).
    leaf->slots[offset].store(nullptr, std::memory_order_release);
    --leaf->count;
    leaf->free_mask |= uint64_t{1} << offset;
  } else {
    RemoveLocked(leaf, offset);
  }
  LockedSub(entries_, 1);
  return true;
}

PageRecord* InflightIndex::Erase(uint32_t id) {
  if (id == 0) return nullptr;
  base::MutexLock l(&lock_);
  IndexNode* leaf = LeafForLocked(id);
  if (leaf == nullptr) return nullptr;
  const unsigned offset = id & kChunkMask;
  void* e = leaf->slots[offset].load(std::memory_order_relaxed);
  if (e == nullptr) return nullptr;
  ForgetHintBelowLocked(id);
  RemoveLocked(leaf, offset);
  LockedSub(entries_, 1);
  return static_cast<PageRecord*>(e);
}

void InflightIndex::ForEach(absl::FunctionRef<bool(uint32_t id, PageRecord* page)> fn) const {
  base::rcu::ReadLock rcu;
  const IndexNode* root = root_.load(std::memory_order_acquire);
  if (root != nullptr) internal::WalkNode(root, 0, fn);
}

uint32_t InflightIndex::ForEachFrom(
    uint32_t first_id, size_t max,
    absl::FunctionRef<bool(uint32_t id, PageRecord* page)> fn) const {
  base::rcu::ReadLock rcu;
  const IndexNode* root = root_.load(std::memory_order_acquire);
  // Nothing at or above first_id when the tree does not reach it (it only grows to hold ids).
  if (root == nullptr || (uint64_t{first_id} >> (root->shift + kChunkShift)) != 0) return 0;
  internal::WalkFrom w{first_id, max, 0, fn};
  internal::WalkNodeFrom(root, 0, &w);
  return w.resume;
}

uint64_t InflightIndex::memory_bytes() const {
  return nodes_.load(std::memory_order_relaxed) * sizeof(IndexNode);
}

InflightIndexStats InflightIndex::stats() const {
  InflightIndexStats s;
  s.entries = entries_.load(std::memory_order_relaxed);
  s.nodes = nodes_.load(std::memory_order_relaxed);
  s.node_bytes = s.nodes * sizeof(IndexNode);
  {
    base::rcu::ReadLock rcu;
    const IndexNode* root = root_.load(std::memory_order_acquire);
    s.height = root == nullptr ? 0 : root->shift / kChunkShift + 1;
  }
  s.nodes_allocated = nodes_allocated_.load(std::memory_order_relaxed);
  s.nodes_freed = nodes_freed_.load(std::memory_order_relaxed);
  s.alloc_failures = alloc_failures_.load(std::memory_order_relaxed);
  s.bytes_per_entry = s.entries == 0 ? 0.0 : double(s.node_bytes) / double(s.entries);
  return s;
}

}  // namespace pagepool::pool
