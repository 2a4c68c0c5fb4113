// File: tests/fuzz/traffic_fuzz.cc
//
// Fuzzes Runtime::Traffic, the batch behind the Traffic stream, with one TrafficCache as one stream
// has. Each input gets a fresh Runtime (64 MiB, small limits); its first bytes choose the device
// (IOMMU mode, address width) and the stream's max_held. The rest is a sequence of:
//
//   * a raw batch: length-prefixed bytes parsed as pagepool.v1.TrafficRequest (bytes that do not
//     parse are skipped: the service ends the stream on them before the runtime sees them);
//   * a built batch: a pool (mostly one created here), a seq, pages to allocate, and recycle and
//     return lists taken mostly from pages this input holds, with stale generations, pages named
//     twice, pages of another pool and unknown frames mixed in, napi_local or not;
//   * a pool created (XARRAY or SCAN, order 0-3, sometimes a tiny ID space or ring), a pool
//     destroyed, or the device unbound, in the middle of the traffic.
//
// Every answer is checked: its seq; all or none of the pages asked for; the page operations
// returned equal the pages allocated, recycled and returned; errors count exactly the refused pages
// plus a failed allocation (or one error for a batch refused whole); error_code set exactly when
// errors is; no page given back that the input did not hold at that generation in that pool; a live
// pool refuses none that it did; no frame handed out while the input still holds it; the cache's
// held count follows the stream's pages and its limit. At the end the input gives back everything
// it holds and Shutdown reports zero mapping-checker violations.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "pagepool/v1/pagepool.pb.h"
#include "server/runtime.h"
#include "tests/fuzz/fuzz_support.h"

namespace pagepool::server {
namespace {

namespace v1 = ::pagepool::v1;
using fuzz::FuzzInput;

constexpr size_t kMaxOps = 256;
constexpr uint32_t kMaxPagesPerCall = 512;

enum Op : uint8_t { kRaw, kBuilt, kBuilt2, kBuilt3, kCreatePool, kDestroyPool, kUnbind, kOpCount };

struct Held {
  uint64_t pool;
  uint32_t generation;
};

class TrafficFuzzer {
 public:
  explicit TrafficFuzzer(FuzzInput* in) : in_(in) {
    RuntimeOptions ro;
    ro.memory_bytes = uint64_t{64} << 20;
    ro.max_devices = 2;
    ro.max_pools = 6;
    ro.max_pages_per_call = kMaxPagesPerCall;
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(ro);
    FUZZ_CHECK(rt.ok()) << rt.status();
    rt_ = *std::move(rt);
    const uint8_t config = in_->U8();
    v1::CreateDeviceRequest cd;
    cd.set_name("eth0");
    cd.set_iommu_mode(static_cast<v1::IommuMode>(1 + config % 3));
    const uint32_t widths[] = {48, 39, 57};
    cd.set_address_width(widths[(config >> 2) % 3]);
    if (config & 0x40) cd.set_free_empty_tables(false);
    v1::Device dev;
    absl::Status s = rt_->CreateDevice(cd, &dev);
    FUZZ_CHECK(s.ok()) << s;
    device_id_ = dev.id();
    const uint64_t limits[] = {0, 0, 64, 1024};
    max_held_ = limits[(config >> 4) % 4];
    cache_ = std::make_unique<Runtime::TrafficCache>(max_held_);
    CreatePool();
  }

  void Run() {
    for (size_t n = 0; n < kMaxOps && !in_->empty(); ++n) {
      switch (static_cast<Op>(in_->U8() % kOpCount)) {
        case kRaw: {
          const std::string_view bytes = in_->Bytes(8192);
          v1::TrafficRequest req;
          if (req.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
            // Whole pages only: the checks below follow pages by frame, and fragments share
            // theirs (service_fuzz and tests/server/frag_service_test.cc cover fragments).
            req.clear_frag_size();
            req.clear_recycle_frags();
            req.clear_return_frags();
            Batch(req);
          }
          break;
        }
        case kBuilt:
        case kBuilt2:
        case kBuilt3: Batch(Build()); break;
        case kCreatePool: CreatePool(); break;
        case kDestroyPool: {
          if (pools_.empty()) break;
          const uint64_t id = pools_[in_->Below(static_cast<uint32_t>(pools_.size()))];
          v1::DestroyPoolResponse resp;
          absl::Status s = rt_->DestroyPool(id, &resp);
          FUZZ_CHECK(s.ok() || s.code() == absl::StatusCode::kFailedPrecondition ||
                     s.code() == absl::StatusCode::kNotFound)
              << s;
          if (s.ok()) destroyed_.insert(id);
          break;
        }
        case kUnbind: {
          if (in_->U8() % 4 != 0) break;  // rare: the device is gone for the rest of the input
          v1::UnbindDeviceResponse resp;
          absl::Status s = rt_->UnbindDevice(device_id_, &resp);
          FUZZ_CHECK(s.ok() || s.code() == absl::StatusCode::kFailedPrecondition) << s;
          if (s.ok()) unbound_ = true;
          break;
        }
        case kOpCount: break;
      }
    }
    // Give back everything held, pool by pool.
    while (!held_.empty()) {
      v1::TrafficRequest req;
      req.set_pool_id(held_.begin()->second.pool);
      req.set_seq(++seq_);
      for (const auto& [frame, h] : held_) {
        if (h.pool != req.pool_id() || req.return_pages_size() >= 256) continue;
        v1::PageHandle* p = req.add_return_pages();
        p->set_frame(frame);
        p->set_generation(h.generation);
      }
      Batch(req);
    }
    const ShutdownReport rep = rt_->Shutdown();
    FUZZ_CHECK(rep.violations == 0) << "violations " << rep.violations;
  }

 private:
  void CreatePool() {
    v1::CreatePoolRequest cp;
    cp.set_device_id(device_id_);
    cp.set_order(in_->U8() % 4);
    cp.set_napi_id(in_->U8());
    cp.set_strategy(in_->Bool() ? v1::STRATEGY_SCAN : v1::STRATEGY_XARRAY);
    const uint8_t sizes = in_->U8();
    if (sizes & 1) cp.set_pool_size(1 + sizes % 64);
    if (sizes & 2) cp.set_dma_index_limit(1 + (sizes >> 2) % 40);
    if (sizes & 0x80) cp.mutable_flags()->set_dma_map(false);
    v1::Pool pool;
    absl::Status s = rt_->CreatePool(cp, &pool);
    if (s.ok()) {
      pools_.push_back(pool.id());
      return;
    }
    FUZZ_CHECK(s.code() == absl::StatusCode::kResourceExhausted ||
               s.code() == absl::StatusCode::kFailedPrecondition)
        << s;
  }

  void AddHandle(google::protobuf::RepeatedPtrField<v1::PageHandle>* list, uint64_t pool) {
    v1::PageHandle* h = list->Add();
    const uint8_t kind = in_->U8() % 16;
    std::vector<std::map<uint64_t, Held>::const_iterator> mine;
    for (auto it = held_.begin(); it != held_.end(); ++it) {
      if (it->second.pool == pool) mine.push_back(it);
    }
    if (kind < 11 && !mine.empty()) {  // a page held from this pool
      auto it = mine[in_->Below(static_cast<uint32_t>(mine.size()))];
      h->set_frame(it->first);
      h->set_generation(it->second.generation);
    } else if (kind < 13 && !held_.empty()) {  // a held page, maybe another pool's, maybe stale
      auto it = std::next(held_.begin(), in_->Below(static_cast<uint32_t>(held_.size())));
      h->set_frame(it->first);
      h->set_generation(it->second.generation + (kind == 12 ? 2 : 0));
    } else if (kind < 14 && !gone_.empty()) {  // a page given back already
      auto it = std::next(gone_.begin(), in_->Below(static_cast<uint32_t>(gone_.size())));
      h->set_frame(it->first);
      h->set_generation(it->second);
    } else {
      h->set_frame(in_->U32() % 20000);
      h->set_generation(in_->U8());
    }
  }

  v1::TrafficRequest Build() {
    v1::TrafficRequest req;
    const uint8_t p = in_->U8();
    if (p % 8 == 7 || pools_.empty()) {
      req.set_pool_id(p % 16);
    } else {
      req.set_pool_id(pools_[p % pools_.size()]);
    }
    req.set_seq(in_->U8() == 0 ? in_->U64() : ++seq_);
    const uint8_t a = in_->U8();
    req.set_allocate(a < 200 ? a % 64 : (a < 250 ? a % 16 * 32 : in_->U32() % 2048));
    const unsigned recycles = in_->U8() % 24;
    for (unsigned i = 0; i < recycles; ++i) AddHandle(req.mutable_recycle(), req.pool_id());
    const unsigned returns = in_->U8() % 24;
    for (unsigned i = 0; i < returns; ++i) AddHandle(req.mutable_return_pages(), req.pool_id());
    req.set_napi_local(in_->Bool());
    return req;
  }

  void Batch(const v1::TrafficRequest& req) {
    // Which handles may be given back: held from this pool at this generation, first mention.
    std::vector<v1::PageHandle> valid;
    std::set<uint64_t> named;
    auto classify = [&](const v1::PageHandle& h) {
      auto it = held_.find(h.frame());
      const bool ok = it != held_.end() && it->second.pool == req.pool_id() &&
                      it->second.generation == h.generation() && named.insert(h.frame()).second;
      if (ok) valid.push_back(h);
    };
    for (const v1::PageHandle& h : req.recycle()) classify(h);
    for (const v1::PageHandle& h : req.return_pages()) classify(h);
    const uint64_t handles = uint64_t(req.recycle_size()) + uint64_t(req.return_pages_size());
    const uint64_t held_before = cache_->held();

    v1::TrafficResponse out;
    const uint64_t ops = rt_->Traffic(req, &out, cache_.get());

    FUZZ_CHECK(out.seq() == req.seq()) << out.seq() << " vs " << req.seq();
    const uint64_t given_back =
        out.recycled_cached() + out.recycled_ring() + out.recycled_released() + out.returned();
    const uint64_t allocated = static_cast<uint64_t>(out.allocated_size());
    FUZZ_CHECK(allocated == 0 || allocated == req.allocate())
        << "asked " << req.allocate() << ", got " << allocated;
    FUZZ_CHECK(ops == given_back + allocated)
        << "ops " << ops << ", given back " << given_back << ", allocated " << allocated;
    FUZZ_CHECK((out.errors() == 0) == (out.error_code() == 0))
        << "errors " << out.errors() << ", code " << out.error_code();
    FUZZ_CHECK(out.error_code() >= 0 && out.error_code() <= 16) << out.error_code();
    FUZZ_CHECK(given_back <= valid.size())
        << given_back << " pages given back, only " << valid.size() << " were in flight";
    const bool alloc_failed = req.allocate() > 0 && allocated == 0;
    const uint64_t per_page = handles - given_back + (alloc_failed ? 1 : 0);
    const bool whole = ops == 0 && out.errors() == 1 &&
                       (out.error_code() == static_cast<int>(absl::StatusCode::kNotFound) ||
                        out.error_code() == static_cast<int>(absl::StatusCode::kResourceExhausted));
    FUZZ_CHECK(out.errors() == per_page || whole)
        << "errors " << out.errors() << ", refused pages " << handles - given_back
        << ", allocation failed " << alloc_failed << ": " << out.error_message();
    // A live pool on a bound device takes back every page it handed out.
    const bool live = !unbound_ && destroyed_.count(req.pool_id()) == 0;
    if (live && !whole) {
      FUZZ_CHECK(given_back == valid.size())
          << "pool " << req.pool_id() << " refused " << valid.size() - given_back
          << " pages in flight: " << out.error_message();
    }
    // The pages named validly are not the input's any more (given back, or refused by a destroyed
    // pool: they stay with it), unless the batch was refused whole.
    if (whole) valid.clear();
    for (const v1::PageHandle& h : valid) {
      held_.erase(h.frame());
      gone_[h.frame()] = h.generation();
    }
    if (given_back > 0 || allocated > 0) {
      const uint64_t want = (held_before - std::min(held_before, given_back)) + allocated;
      FUZZ_CHECK(cache_->held() == want) << "held " << cache_->held() << ", want " << want;
    }
    if (alloc_failed && max_held_ != 0 &&
        held_before - std::min(held_before, given_back) + req.allocate() > max_held_) {
      FUZZ_CHECK(out.errors() >= 1);
    }
    if (max_held_ != 0) FUZZ_CHECK(cache_->held() <= max_held_) << cache_->held();
    for (const v1::Page& p : out.allocated()) {
      const v1::PageHandle& h = p.handle();
      FUZZ_CHECK(held_.count(h.frame()) == 0)
          << "frame " << h.frame() << " handed out while still held (pool " << held_[h.frame()].pool
          << ")";
      FUZZ_CHECK(h.generation() % 2 == 1) << "even generation " << h.generation();
      held_[h.frame()] = Held{req.pool_id(), h.generation()};
      gone_.erase(h.frame());
    }
  }

  FuzzInput* const in_;
  std::unique_ptr<Runtime> rt_;
  std::unique_ptr<Runtime::TrafficCache> cache_;
  uint64_t device_id_ = 0;
  uint64_t max_held_ = 0;
  uint64_t seq_ = 0;
  bool unbound_ = false;
  std::vector<uint64_t> pools_;
  std::set<uint64_t> destroyed_;
  std::map<uint64_t, Held> held_;      // frame -> pool, generation: pages the input holds
  std::map<uint64_t, uint32_t> gone_;  // frame -> generation: pages given back
};

}  // namespace
}  // namespace pagepool::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pagepool::fuzz::FuzzInput in(data, size);
  pagepool::server::TrafficFuzzer(&in).Run();
  return 0;
}

namespace pagepool::fuzz {

std::vector<std::string> FuzzSeeds() {
  namespace v1 = ::pagepool::v1;
  using pagepool::server::kBuilt;
  using pagepool::server::kCreatePool;
  using pagepool::server::kDestroyPool;
  using pagepool::server::kRaw;
  using pagepool::server::kUnbind;
  std::vector<std::string> seeds;
  for (uint8_t config = 0; config < 12; ++config) {
    SeedWriter w;
    w.U8(static_cast<uint8_t>(config | (config % 4) << 4));
    w.U8(config % 4).U8(3).U8(config & 1).U8(config % 3 == 0 ? 0x0b : 0);  // the first pool
    // Steady traffic: allocate a batch, recycle and return the previous one.
    for (int i = 0; i < 8; ++i) {
      w.U8(kBuilt).U8(0).U8(1).U8(16);
      w.U8(8);
      for (int j = 0; j < 8; ++j) w.U8(0).U8(static_cast<uint8_t>(j));
      w.U8(4);
      for (int j = 0; j < 4; ++j) w.U8(static_cast<uint8_t>(j == 3 ? 11 : 0)).U8(9);
      w.U8(static_cast<uint8_t>(i & 1));
    }
    w.U8(kCreatePool).U8(0).U8(4).U8(0).U8(0);
    w.U8(kBuilt).U8(1).U8(1).U8(32).U8(0).U8(0).U8(0);
    if (config % 3 == 1) w.U8(kDestroyPool).U8(0);
    if (config % 4 == 3) w.U8(kUnbind).U8(0);
    w.U8(kBuilt).U8(0).U8(1).U8(4).U8(6);
    for (int j = 0; j < 6; ++j) w.U8(static_cast<uint8_t>(j * 3)).U8(1).U32(77).U8(1);
    w.U8(0).U8(0);
    v1::TrafficRequest raw;
    raw.set_pool_id(1);
    raw.set_seq(99);
    raw.set_allocate(5);
    raw.add_recycle()->set_frame(12345);
    w.U8(kRaw).Bytes(raw.SerializeAsString(), 8192);
    seeds.push_back(w.str());
  }
  return seeds;
}

}  // namespace pagepool::fuzz
