// File: tests/fuzz/inflight_index_fuzz.cc
//
// Fuzzes pool::InflightIndex against a std::map. The first bytes pick the id limit (tiny limits
// around node boundaries, 64^2 and 64^3 boundaries, the default 2^32 - 1); the rest is a sequence
// of Alloc, AllocBulk (up to a few thousand pages), Load, Erase, CompareExchange (right and wrong
// expected entries, a non-null desired entry, id 0), ForEach (whole, stopped early, erasing as it
// walks) and stats reads. After every operation the index must agree with the map: each answer,
// the lowest-free-id rule, the limit (RESOURCE_EXHAUSTED exactly when every id up to it is in
// use, counted in alloc_failures), size() and the node accounting. At the end every entry is
// removed: the index is empty and keeps at most its small cache of nodes.
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pool/inflight_index.h"
#include "pool/phys_memory.h"
#include "tests/fuzz/fuzz_support.h"

namespace pagepool::pool {
namespace {

using fuzz::FuzzInput;

constexpr size_t kMaxOps = 2000;
constexpr uint32_t kRecords = 1 << 14;
constexpr uint64_t kKeepNodes = 4;  // InflightIndex::kKeepNodes

// Distinct fake records (the index never dereferences its entries).
PageRecord* Rec(uint32_t i) {
  static PageRecord* records = new PageRecord[kRecords];
  return &records[i % kRecords];
}

enum Op : uint8_t {
  kAlloc,
  kAllocBulk,
  kLoad,
  kErase,
  kCmpxchg,
  kForEach,
  kForEachStop,
  kForEachErase,
  kStats,
  kOpCount,
};

// The reference: the entries, and the lowest-free-id rule as a high-water mark plus the holes
// below it.
class Model {
 public:
  explicit Model(uint32_t limit) : limit_(limit) {}

  bool full() const { return holes_.empty() && high_ == limit_; }
  uint32_t NextId() const { return holes_.empty() ? high_ + 1 : *holes_.begin(); }
  void Insert(uint32_t id, PageRecord* page) {
    if (!holes_.empty() && *holes_.begin() == id) {
      holes_.erase(holes_.begin());
    } else {
      ++high_;
    }
    entries_[id] = page;
  }
  void Remove(uint32_t id) {
    entries_.erase(id);
    holes_.insert(id);
  }
  PageRecord* Get(uint32_t id) const {
    auto it = entries_.find(id);
    return it == entries_.end() ? nullptr : it->second;
  }
  const std::map<uint32_t, PageRecord*>& entries() const { return entries_; }

 private:
  const uint32_t limit_;
  std::map<uint32_t, PageRecord*> entries_;
  std::set<uint32_t> holes_;  // free ids below high_
  uint32_t high_ = 0;         // every id above is free
};

class IndexFuzzer {
 public:
  IndexFuzzer(uint32_t limit, FuzzInput* in)
      : limit_(limit), index_(limit), model_(limit), in_(in) {}

  void Run() {
    for (size_t n = 0; n < kMaxOps && !in_->empty(); ++n) {
      Step(static_cast<Op>(in_->U8() % kOpCount));
      CheckCounts();
    }
    // Remove everything, through Erase and CompareExchange alternately.
    bool erase = true;
    while (!model_.entries().empty()) {
      const auto [id, page] = *model_.entries().begin();
      if (erase) {
        FUZZ_CHECK(index_.Erase(id) == page) << "erase " << id;
      } else {
        FUZZ_CHECK(index_.CompareExchange(id, page)) << "cmpxchg " << id;
      }
      erase = !erase;
      model_.Remove(id);
    }
    CheckCounts();
    FUZZ_CHECK(index_.empty());
    const InflightIndexStats st = index_.stats();
    FUZZ_CHECK(st.entries == 0) << st.entries;
    FUZZ_CHECK(st.nodes <= kKeepNodes) << st.nodes << " nodes left in an empty index";
    uint64_t seen = 0;
    index_.ForEach([&](uint32_t, PageRecord*) {
      ++seen;
      return true;
    });
    FUZZ_CHECK(seen == 0) << seen;
  }

 private:
  // An id to look up: mostly a present one, else near one, 0, the limit and beyond.
  uint32_t PickId() {
    const uint8_t kind = in_->U8() % 8;
    if (kind < 4 && !model_.entries().empty()) {
      auto it = model_.entries().lower_bound(in_->U32() % (model_.NextId() + 1));
      if (it == model_.entries().end()) it = model_.entries().begin();
      return it->first;
    }
    switch (kind) {
      case 4: return 0;
      case 5: return limit_ - in_->U8() % 2;
      case 6: return limit_ == 0xffffffffu ? limit_ : limit_ + 1 + in_->U8() % 64;
      default: return in_->U32();
    }
  }

  void AllocOne() {
    PageRecord* page = Rec(next_rec_++);
    absl::StatusOr<uint32_t> id = index_.Alloc(page);
    if (model_.full()) {
      FUZZ_CHECK(id.status().code() == absl::StatusCode::kResourceExhausted) << id.status();
      ++failures_;
      return;
    }
    FUZZ_CHECK(id.ok()) << id.status();
    FUZZ_CHECK(*id == model_.NextId())
        << "Alloc gave " << *id << ", lowest free is " << model_.NextId();
    model_.Insert(*id, page);
  }

  void Step(Op op) {
    switch (op) {
      case kAlloc: AllocOne(); break;
      case kAllocBulk: {
        const uint32_t n = in_->Bool() ? in_->U8() % 130 : in_->U16() % 5000;
        std::vector<PageRecord*> pages(n);
        for (auto& p : pages) p = Rec(next_rec_++);
        std::vector<uint32_t> ids(n);
        const size_t got = index_.AllocBulk(pages, absl::MakeSpan(ids));
        for (size_t i = 0; i < n; ++i) {
          if (model_.full()) {
            FUZZ_CHECK(got == i) << "AllocBulk gave " << got << " ids, room for " << i;
            ++failures_;
            break;
          }
          FUZZ_CHECK(i < got) << "AllocBulk stopped at " << got << " of " << n << " with id "
                              << model_.NextId() << " free";
          FUZZ_CHECK(ids[i] == model_.NextId())
              << "AllocBulk page " << i << " got " << ids[i] << ", lowest free " << model_.NextId();
          model_.Insert(ids[i], pages[i]);
        }
        break;
      }
      case kLoad: {
        const uint32_t id = PickId();
        FUZZ_CHECK(index_.Load(id) == model_.Get(id)) << "Load " << id;
        break;
      }
      case kErase: {
        const uint32_t id = PickId();
        PageRecord* want = model_.Get(id);
        FUZZ_CHECK(index_.Erase(id) == want) << "Erase " << id;
        if (want != nullptr) model_.Remove(id);
        break;
      }
      case kCmpxchg: {
        const uint32_t id = PickId();
        PageRecord* have = model_.Get(id);
        const uint8_t kind = in_->U8() % 4;
        if (kind == 0) {  // wrong expected entry
          FUZZ_CHECK(!index_.CompareExchange(id, Rec(next_rec_++))) << id;
        } else if (kind == 1) {  // desired not null: refused
          FUZZ_CHECK(!index_.CompareExchange(id, have == nullptr ? Rec(1) : have, Rec(2))) << id;
        } else {
          const bool won = have != nullptr && index_.CompareExchange(id, have);
          FUZZ_CHECK(won == (have != nullptr)) << "CompareExchange " << id;
          if (won) model_.Remove(id);
          if (have != nullptr) FUZZ_CHECK(!index_.CompareExchange(id, have)) << "twice " << id;
        }
        break;
      }
      case kForEach: {
        auto it = model_.entries().begin();
        index_.ForEach([&](uint32_t id, PageRecord* page) {
          FUZZ_CHECK(it != model_.entries().end()) << "extra id " << id;
          FUZZ_CHECK(id == it->first && page == it->second) << id << " want " << it->first;
          ++it;
          return true;
        });
        FUZZ_CHECK(it == model_.entries().end()) << "ForEach missed id " << it->first;
        break;
      }
      case kForEachStop: {
        const uint32_t stop = in_->U16();
        uint32_t seen = 0;
        auto it = model_.entries().begin();
        index_.ForEach([&](uint32_t id, PageRecord* page) {
          FUZZ_CHECK(seen <= stop) << "ForEach went on after false";
          FUZZ_CHECK(it != model_.entries().end() && id == it->first) << id;
          ++it;
          return ++seen <= stop;
        });
        FUZZ_CHECK(seen == std::min<uint64_t>(stop + 1, model_.entries().size())) << seen;
        break;
      }
      case kForEachErase: {
        // Erase every entry whose id has a chosen residue, from inside the walk.
        const uint32_t mod = 1 + in_->U8() % 8;
        const uint32_t rem = in_->U8() % mod;
        const bool cmpxchg = in_->Bool();
        auto it = model_.entries().begin();
        std::vector<uint32_t> removed;
        index_.ForEach([&](uint32_t id, PageRecord* page) {
          FUZZ_CHECK(it != model_.entries().end() && id == it->first && page == it->second) << id;
          ++it;
          if (id % mod == rem) {
            if (cmpxchg) {
              FUZZ_CHECK(index_.CompareExchange(id, page)) << id;
            } else {
              FUZZ_CHECK(index_.Erase(id) == page) << id;
            }
            removed.push_back(id);
          }
          return true;
        });
        FUZZ_CHECK(it == model_.entries().end()) << "ForEach missed id " << it->first;
        for (uint32_t id : removed) model_.Remove(id);
        break;
      }
      case kStats: {
        const InflightIndexStats st = index_.stats();
        FUZZ_CHECK(st.node_bytes == st.nodes * InflightIndex::NodeSize());
        FUZZ_CHECK(st.node_bytes == index_.memory_bytes());
        FUZZ_CHECK(st.nodes_allocated >= st.nodes_freed + st.nodes)
            << st.nodes_allocated << " " << st.nodes_freed << " " << st.nodes;
        // A tree holding id n needs ceil(log64(n + 1)) levels at least, and a leaf per 64 ids.
        const uint64_t max_id = model_.entries().empty() ? 0 : model_.entries().rbegin()->first;
        uint64_t need = 0;
        for (uint64_t span = 1; span <= max_id; span <<= 6) ++need;
        FUZZ_CHECK(st.height >= need) << "height " << st.height << " for id " << max_id;
        FUZZ_CHECK(st.nodes * 64 >= st.entries) << st.nodes << " nodes, " << st.entries;
        break;
      }
      case kOpCount: break;
    }
  }

  void CheckCounts() {
    FUZZ_CHECK(index_.size() == model_.entries().size())
        << "size " << index_.size() << ", want " << model_.entries().size();
    FUZZ_CHECK(index_.empty() == model_.entries().empty());
    FUZZ_CHECK(index_.stats().alloc_failures == failures_)
        << "alloc_failures " << index_.stats().alloc_failures << ", want " << failures_;
  }

  const uint32_t limit_;
  InflightIndex index_;
  Model model_;
  FuzzInput* const in_;
  uint32_t next_rec_ = 1;
  uint64_t failures_ = 0;
};

}  // namespace
}  // namespace pagepool::pool

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pagepool::pool;
  pagepool::fuzz::FuzzInput in(data, size);
  const uint32_t limits[] = {1,    2,    63,   64,     65,     127,    128,         4095,
                             4096, 4097, 4160, 262143, 262144, 262145, 0xffffffffu, 0};
  uint32_t limit = limits[in.U8() % 16];
  if (limit == 0) limit = 1 + in.U32() % 70000;
  IndexFuzzer(limit, &in).Run();
  return 0;
}

namespace pagepool::fuzz {

std::vector<std::string> FuzzSeeds() {
  namespace p = pagepool::pool;
  std::vector<std::string> seeds;
  for (uint8_t limit = 0; limit < 16; ++limit) {
    SeedWriter w;
    w.U8(limit);
    if (limit == 15) w.U32(1000);
    // Fill past the limit (or a few levels), punch holes, reuse them, walk, erase while walking.
    w.U8(p::kAllocBulk).U8(0).U16(limit < 8 ? 200 : 4500);
    w.U8(p::kAlloc).U8(p::kStats);
    for (uint8_t i = 0; i < 6; ++i) w.U8(p::kErase).U8(0).U32(i * 37);
    w.U8(p::kCmpxchg).U8(1).U32(5).U8(2);
    w.U8(p::kCmpxchg).U8(5).U8(0).U8(0);
    w.U8(p::kLoad).U8(6).U8(1);
    w.U8(p::kForEach).U8(p::kForEachStop).U16(10);
    w.U8(p::kAlloc).U8(p::kAlloc).U8(p::kAllocBulk).U8(1).U8(100);
    w.U8(p::kForEachErase).U8(2).U8(1).U8(limit & 1);
    w.U8(p::kStats).U8(p::kAllocBulk).U8(1).U8(70).U8(p::kForEach);
    seeds.push_back(w.str());
  }
  return seeds;
}

}  // namespace pagepool::fuzz
