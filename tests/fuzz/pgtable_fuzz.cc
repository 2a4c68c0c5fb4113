// File: tests/fuzz/pgtable_fuzz.cc
//
// Fuzzes the I/O page table of one device against PgtableReference (tests/support/
// pgtable_reference.h). The first byte picks the device: IOMMU mode (strict, lazy, passthrough),
// free_empty_tables on or off, address width 39/48/57 (one device per configuration, kept for the
// process: see DeviceFor). The rest is a sequence of operations:
//
//   * on the domain directly (not in passthrough): Map and Unmap of ranges in the lower half of the
//     IOVA space (4 KiB runs, 2 MiB and 1 GiB blocks, 2 MiB of 4 KiB leaves, exact earlier
//     mappings, ranges that cut blocks or hit holes; misaligned, empty and out-of-range arguments,
//     which must be refused and change nothing), Translate (reads and writes, protections),
//     ForEachPresent over the whole space, SweepDirty, FlushQueues, and a flush and Quiesce after
//     which nothing may be pending (every table unlinked was released; one in 64 of these waits for
//     the grace period, which takes tens of milliseconds);
//   * through the DMA-API facade (every mode): MapPage, UnmapPage, UnmapPages, SyncForDevice and
//     SyncForCpu of live mappings (IOVAs from the domain's allocator, at the top of the space), all
//     used as the DMA API allows, so the mapping checker must count no violation.
//
// After every operation: each status is the one the reference predicts, translations of the
// touched range agree, mapped_pages equals the reference's and table_bytes is exactly 4096 * the
// reference's tables (at least that with free_empty_tables off). At the end everything is unmapped:
// the dump is empty, the table is back to its root (free_empty_tables), the flush queues are empty,
// every table allocated but the linked ones was freed, and the checker knows no live mapping and
// has counted no violation.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dma/device.h"
#include "dma/iommu_domain.h"
#include "dma/types.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/support/pgtable_reference.h"

namespace pagepool::dma {
namespace {

using fuzz::FuzzInput;
using Code = absl::StatusCode;

constexpr uint64_t k4K = kPageSize;
constexpr uint64_t k2M = kSize2M;
constexpr uint64_t k1G = kSize1G;
constexpr uint64_t kPhysLimit = uint64_t{1} << 52;  // dma/internal/pt_table.h
constexpr size_t kMaxOps = 4000;

enum Op : uint8_t {
  kMap,
  kUnmapExact,
  kUnmapRange,
  kMapInvalid,
  kUnmapInvalid,
  kTranslate,
  kDump,
  kSweep,
  kFlush,
  kQuiesce,
  kDevMap,
  kDevUnmap,
  kDevUnmapBatch,
  kDevSync,
  kDevBadMap,
  kOpCount,
};

uint32_t ProtFor(DmaDirection dir) {
  switch (dir) {
    case DmaDirection::kToDevice: return kProtRead;
    case DmaDirection::kFromDevice: return kProtWrite;
    case DmaDirection::kBidirectional: break;
  }
  return kProtRead | kProtWrite;
}

struct DevMapping {
  DmaAddr addr;
  PhysAddr phys;
  uint64_t size;  // bytes as given to MapPage
  DmaDirection dir;
};

class PgtableFuzzer {
 public:
  PgtableFuzzer(Device* dev, FuzzInput* in)
      : dev_(dev),
        d_(dev->domain()),
        in_(in),
        ref_(d_ != nullptr ? d_->levels() : 3),
        limit_(uint64_t{1} << dev->address_width()),
        half_(limit_ / 2) {}

  void Run() {
    for (size_t n = 0; n < kMaxOps && !in_->empty(); ++n) {
      const uint8_t op = in_->U8() % kOpCount;
      if (d_ == nullptr && op < kDevMap) continue;  // passthrough: no table, DMA API only
      Step(static_cast<Op>(op));
      if (d_ != nullptr) CheckStats(n);
    }
    TearDown();
  }

 private:
  // An IOVA in the lower half of the space: clustered so that tables are shared and emptied.
  uint64_t Iova(uint64_t align) {
    const uint64_t bases[] = {0, k1G - 16 * k2M, 7 * k1G - 16 * k2M, half_ - 4 * k1G};
    const uint64_t base = bases[in_->U8() % 4];
    uint64_t off;
    if (align == k4K) {
      off = uint64_t{in_->U16()} * k4K;  // within 256 MiB
    } else if (align == k2M) {
      off = uint64_t{in_->U8()} * k2M;  // within 512 MiB
    } else {
      off = static_cast<uint64_t>(in_->U8() % 4) * k1G;
    }
    return (base + off) & ~(align - 1);
  }

  uint64_t Phys(uint64_t align) {
    const uint64_t p = (uint64_t{in_->U32()} << 12) & (kPhysLimit - 1);
    return p & ~(align - 1);
  }

  // Translations of a few pages of [start, start + size) must agree with the reference.
  void CheckRange(uint64_t start, uint64_t size) {
    if (size == 0) return;
    const uint64_t pages = size / k4K;
    const uint64_t probes[] = {start, start + size - 1, start + (pages / 2) * k4K + 123};
    for (uint64_t a : probes) CheckTranslate(a, false, /*update_dirty=*/true);
  }

  void CheckTranslate(uint64_t a, bool write, bool update_dirty) {
    absl::StatusOr<PhysAddr> got = d_->Translate(a, write);
    const auto* want = a < limit_ ? ref_.Find(a) : nullptr;
    if (want == nullptr) {
      FUZZ_CHECK(got.status().code() == Code::kNotFound) << std::hex << a << " " << got.status();
      return;
    }
    const uint32_t need = write ? kProtWrite : kProtRead;
    if ((want->second.prot & need) == 0) {
      FUZZ_CHECK(got.status().code() == Code::kPermissionDenied)
          << std::hex << a << " " << got.status();
      return;
    }
    FUZZ_CHECK(got.ok()) << std::hex << a << " " << got.status();
    FUZZ_CHECK(*got == want->second.phys + (a - want->first))
        << std::hex << a << " got " << *got << " want " << want->second.phys + (a - want->first);
    if (write && update_dirty) ref_.SetDirty(want->first);
  }

  static bool ValidRange(uint64_t iova, uint64_t size, uint64_t limit) {
    return size != 0 && size % k4K == 0 && iova % k4K == 0 && iova < limit && size <= limit - iova;
  }

  void DirectMap(uint64_t iova, uint64_t phys, uint64_t size, uint32_t prot) {
    const bool overlap = ref_.AnyIn(iova, iova + size);
    absl::Status s = d_->Map(iova, phys, size, prot);
    if (overlap) {
      FUZZ_CHECK(s.code() == Code::kAlreadyExists) << s;
    } else {
      FUZZ_CHECK(s.ok()) << s;
      ref_.Map(iova, phys, size, prot);
      direct_.push_back({iova, size});
    }
    CheckRange(iova, size);
  }

  void DirectUnmap(uint64_t iova, uint64_t size) {
    const PgtableReference::UnmapResult want = ref_.Unmap(iova, size);
    absl::Status s = d_->Unmap(iova, size);
    switch (want) {
      case PgtableReference::UnmapResult::kOk: FUZZ_CHECK(s.ok()) << s; break;
      case PgtableReference::UnmapResult::kNotFound:
        FUZZ_CHECK(s.code() == Code::kNotFound) << s;
        break;
      case PgtableReference::UnmapResult::kCut:
        FUZZ_CHECK(s.code() == Code::kInvalidArgument) << s;
        break;
    }
    CheckRange(iova, size);
  }

  void Step(Op op) {
    switch (op) {
      case kMap: {
        const uint8_t kind = in_->U8() % 8;
        uint64_t iova, phys, size;
        if (kind < 5) {  // a run of 4 KiB pages
          size = (1 + in_->U8() % 64) * k4K;
          iova = Iova(k4K);
          phys = Phys(k4K);
        } else if (kind < 6) {  // 2 MiB blocks
          size = k2M * (1 + in_->U8() % 2);
          iova = Iova(k2M);
          phys = Phys(k2M);
        } else if (kind < 7) {  // 2 MiB of 4 KiB leaves: phys only 4 KiB aligned
          size = k2M;
          iova = Iova(k2M);
          phys = Phys(k2M) + k4K;
        } else {  // a 1 GiB block
          size = k1G;
          iova = Iova(k1G);
          phys = Phys(k1G);
        }
        if (phys + size > kPhysLimit) phys = 0;
        const uint32_t prot = 1 + in_->U8() % 3;
        DirectMap(iova, phys, size, prot);
        break;
      }
      case kUnmapExact: {  // an earlier direct mapping (may be gone or cut already)
        if (direct_.empty()) break;
        const size_t i = in_->Below(static_cast<uint32_t>(direct_.size()));
        const auto [iova, size] = direct_[i];
        direct_[i] = direct_.back();
        direct_.pop_back();
        DirectUnmap(iova, size);
        break;
      }
      case kUnmapRange: {  // holes, parts of blocks, several mappings, whole tables
        const uint8_t kind = in_->U8() % 4;
        const uint64_t size = kind == 0 ? k2M : (kind == 1 ? k1G : (1 + in_->U8() % 32) * k4K);
        DirectUnmap(Iova(size >= k2M ? size : k4K), size);
        break;
      }
      case kMapInvalid: {
        // Misaligned, empty, out of range or wrapping: refused, nothing changes.
        const uint64_t iova = in_->Bool() ? in_->U64() : Iova(k4K) + in_->U16() % k4K;
        const uint64_t sizes[] = {0, in_->U16(), ~uint64_t{0} & ~(k4K - 1), limit_};
        const uint64_t size = sizes[in_->U8() % 4];
        uint64_t phys = in_->Bool() ? in_->U64() : Phys(k4K);
        uint32_t prot = in_->U8() % 8;
        const bool phys_ok = phys % k4K == 0 && phys < kPhysLimit && size <= kPhysLimit - phys;
        const bool prot_ok = prot >= 1 && prot <= 3;
        const bool range_ok = ValidRange(iova, size, limit_);
        if (range_ok && phys_ok && prot_ok) {
          if (iova + size > half_ || size > 4 * k2M) break;  // a valid map after all: not here
          DirectMap(iova, phys, size, prot);
          break;
        }
        absl::Status s = d_->Map(iova, phys, size, prot);
        FUZZ_CHECK(s.code() == Code::kInvalidArgument) << s;
        break;
      }
      case kUnmapInvalid: {
        const uint64_t iova = in_->Bool() ? in_->U64() : Iova(k4K) + in_->U16() % k4K;
        const uint64_t sizes[] = {0, in_->U16(), ~uint64_t{0} & ~(k4K - 1), limit_};
        const uint64_t size = sizes[in_->U8() % 4];
        if (ValidRange(iova, size, limit_)) {
          if (iova + size > half_ || size > k1G) break;
          DirectUnmap(iova, size);
          break;
        }
        absl::Status s = d_->Unmap(iova, size);
        FUZZ_CHECK(s.code() == Code::kInvalidArgument) << s;
        break;
      }
      case kTranslate: {
        const uint8_t kind = in_->U8() % 4;
        const bool write = in_->Bool();
        uint64_t a;
        if (kind == 0 && !ref_.leaves().empty()) {  // inside a live leaf
          auto it = ref_.leaves().lower_bound(Iova(k4K));
          if (it == ref_.leaves().end()) it = ref_.leaves().begin();
          a = it->first + in_->U32() % PgtableReference::LeafSize(it->second.level);
        } else if (kind == 1 && !dev_live_.empty()) {
          const DevMapping& m = dev_live_[in_->Below(static_cast<uint32_t>(dev_live_.size()))];
          a = m.addr + in_->U32() % m.size;
        } else if (kind == 2) {
          a = in_->U64();
        } else {
          a = Iova(k4K) + in_->U16() % k4K;
        }
        CheckTranslate(a, write, /*update_dirty=*/true);
        break;
      }
      case kDump: CheckDump(); break;
      case kSweep: {
        std::vector<std::pair<DmaAddr, uint64_t>> got;
        const uint64_t n = d_->SweepDirty(
            0, ~uint64_t{0}, [&](DmaAddr iova, uint64_t size) { got.emplace_back(iova, size); });
        FUZZ_CHECK(n == got.size()) << n << " vs " << got.size();
        size_t i = 0;
        for (const auto& [iova, leaf] : ref_.leaves()) {
          if (!leaf.dirty) continue;
          FUZZ_CHECK(i < got.size()) << "dirty leaf " << std::hex << iova << " not reported";
          FUZZ_CHECK(got[i].first == iova &&
                     got[i].second == PgtableReference::LeafSize(leaf.level))
              << std::hex << "reported " << got[i].first << " want " << iova;
          ++i;
        }
        FUZZ_CHECK(i == got.size()) << "reported " << got.size() << " dirty leaves, want " << i;
        ref_.ClearDirty();
        break;
      }
      case kFlush: d_->FlushQueues(); break;
      case kQuiesce: {
        // A grace period takes tens of milliseconds: one Quiesce in 64 waits for one (the first of
        // the process included), the others only flush.
        d_->FlushQueues();
        if (quiesce_calls_++ % 64 != 0) break;
        d_->Quiesce();
        const DomainStats st = d_->stats();
        FUZZ_CHECK(st.pending_free_pages == 0) << st.pending_free_pages;
        FUZZ_CHECK(st.tables_released == st.tables_freed)
            << st.tables_released << " released, " << st.tables_freed << " freed";
        break;
      }
      case kDevMap: {
        const DmaDirection dir = static_cast<DmaDirection>(in_->U8() % 3);
        const uint64_t size = in_->Bool() ? (1 + in_->U8() % 16) * k4K : 1 + in_->U16();
        uint64_t phys = Phys(k4K);
        if (d_ == nullptr) {
          for (const DevMapping& m : dev_live_) {
            if (m.phys == phys) return;  // passthrough: one live mapping per bus address here
          }
        }
        absl::StatusOr<DmaAddr> got = dev_->MapPage(phys, size, dir);
        if (d_ == nullptr) {
          if (phys + size > limit_) {
            FUZZ_CHECK(got.status().code() == Code::kInvalidArgument) << got.status();
            return;
          }
          FUZZ_CHECK(got.ok()) << got.status();
          FUZZ_CHECK(*got == phys) << std::hex << *got << " " << phys;
        } else {
          FUZZ_CHECK(got.ok()) << got.status();
          const uint64_t mapped = (size + k4K - 1) & ~(k4K - 1);
          FUZZ_CHECK(*got >= half_ && *got % k4K == 0) << std::hex << *got;
          FUZZ_CHECK(!ref_.AnyIn(*got, *got + mapped)) << std::hex << *got << " given twice";
          ref_.Map(*got, phys, mapped, ProtFor(dir));
          CheckRange(*got, mapped);
        }
        dev_live_.push_back(DevMapping{*got, phys, size, dir});
        break;
      }
      case kDevUnmap: {
        if (dev_live_.empty()) break;
        const size_t i = in_->Below(static_cast<uint32_t>(dev_live_.size()));
        const DevMapping m = dev_live_[i];
        dev_live_[i] = dev_live_.back();
        dev_live_.pop_back();
        absl::Status s = dev_->UnmapPage(m.addr, m.size, m.dir);
        FUZZ_CHECK(s.ok()) << s;
        DevForget(m);
        break;
      }
      case kDevUnmapBatch: {
        // Every live mapping of the size and direction of one of them.
        if (dev_live_.empty()) break;
        const DevMapping pick = dev_live_[in_->Below(static_cast<uint32_t>(dev_live_.size()))];
        std::vector<DmaAddr> addrs;
        std::vector<DevMapping> gone;
        for (size_t i = 0; i < dev_live_.size();) {
          if (dev_live_[i].size == pick.size && dev_live_[i].dir == pick.dir) {
            addrs.push_back(dev_live_[i].addr);
            gone.push_back(dev_live_[i]);
            dev_live_[i] = dev_live_.back();
            dev_live_.pop_back();
          } else {
            ++i;
          }
        }
        absl::Status s = dev_->UnmapPages(addrs, pick.size, pick.dir);
        FUZZ_CHECK(s.ok()) << s;
        for (const DevMapping& m : gone) DevForget(m);
        break;
      }
      case kDevSync: {
        if (dev_live_.empty()) break;
        const DevMapping& m = dev_live_[in_->Below(static_cast<uint32_t>(dev_live_.size()))];
        const uint64_t offset = in_->U32() % m.size;
        const uint64_t size = in_->U32() % (m.size - offset + 1);
        DmaDirection dir = m.dir;
        if (dir == DmaDirection::kBidirectional) dir = static_cast<DmaDirection>(in_->U8() % 3);
        absl::Status s = in_->Bool() ? dev_->SyncForDevice(m.addr, offset, size, dir)
                                     : dev_->SyncForCpu(m.addr, offset, size, dir);
        FUZZ_CHECK(s.ok()) << s;
        break;
      }
      case kDevBadMap: {
        // Arguments MapPage must refuse without mapping or counting anything.
        const uint8_t kind = in_->U8() % 3;
        absl::StatusOr<DmaAddr> got =
            kind == 0 ? dev_->MapPage(Phys(k4K), 0, DmaDirection::kToDevice)
            : kind == 1
                ? dev_->MapPage(Phys(k4K) + 1 + in_->U8() % (k4K - 1), k4K, DmaDirection::kToDevice)
                : dev_->MapPage(Phys(k4K), k4K, static_cast<DmaDirection>(3 + in_->U8() % 8));
        FUZZ_CHECK(got.status().code() == Code::kInvalidArgument) << got.status();
        break;
      }
      case kOpCount: break;
    }
  }

  void DevForget(const DevMapping& m) {
    if (d_ == nullptr) return;
    const uint64_t mapped = (m.size + k4K - 1) & ~(k4K - 1);
    FUZZ_CHECK(ref_.Unmap(m.addr, mapped) == PgtableReference::UnmapResult::kOk)
        << std::hex << m.addr;
    CheckRange(m.addr, mapped);
  }

  void CheckDump() {
    auto it = ref_.leaves().begin();
    uint64_t n = 0;
    d_->ForEachPresent(0, ~uint64_t{0}, [&](const PresentEntry& e) {
      FUZZ_CHECK(it != ref_.leaves().end()) << "extra leaf at " << std::hex << e.iova;
      FUZZ_CHECK(e.iova == it->first && e.phys == it->second.phys &&
                 e.size == PgtableReference::LeafSize(it->second.level) &&
                 e.prot == it->second.prot && e.dirty == it->second.dirty)
          << std::hex << "leaf " << e.iova << " phys " << e.phys << " size " << e.size << " prot "
          << e.prot << " dirty " << e.dirty << "; want " << it->first << " phys " << it->second.phys
          << " prot " << it->second.prot << " dirty " << it->second.dirty;
      ++it;
      ++n;
      return true;
    });
    FUZZ_CHECK(n == ref_.leaves().size()) << n << " leaves, want " << ref_.leaves().size();
  }

  void CheckStats(size_t op) {
    const DomainStats st = d_->stats();
    if (d_->free_empty_tables()) {
      FUZZ_CHECK(st.table_bytes == 4096 * ref_.tables())
          << "op " << op << ": table_bytes " << st.table_bytes << ", want 4096 * " << ref_.tables();
    } else {
      FUZZ_CHECK(st.table_bytes >= 4096 * ref_.tables()) << "op " << op;
    }
    FUZZ_CHECK(st.mapped_pages == ref_.pages())
        << "op " << op << ": mapped_pages " << st.mapped_pages << ", want " << ref_.pages();
  }

  void TearDown() {
    for (const DevMapping& m : dev_live_) {
      absl::Status s = dev_->UnmapPage(m.addr, m.size, m.dir);
      FUZZ_CHECK(s.ok()) << s;
      DevForget(m);
    }
    dev_live_.clear();
    if (d_ != nullptr) {
      while (!ref_.leaves().empty()) {
        const auto [iova, leaf] = *ref_.leaves().begin();
        DirectUnmap(iova, PgtableReference::LeafSize(leaf.level));
      }
      CheckDump();
      d_->FlushQueues();
      const DomainStats st = d_->stats();
      if (d_->free_empty_tables()) FUZZ_CHECK(st.table_pages == 1) << st.table_pages;
      FUZZ_CHECK(st.mapped_pages == 0) << st.mapped_pages;
      FUZZ_CHECK(st.fq_pending == 0) << st.fq_pending;
      FUZZ_CHECK(st.tables_allocated == st.tables_freed + st.table_pages)
          << st.tables_allocated << " allocated, " << st.tables_freed << " freed, "
          << st.table_pages << " linked";
      FUZZ_CHECK(st.tables_released <= st.tables_freed)
          << st.tables_released << " released, " << st.tables_freed << " freed";
    }
    FUZZ_CHECK(dev_->live_mappings() == 0) << dev_->live_mappings();
    FUZZ_CHECK(dev_->violations().Total() == 0) << "violations " << dev_->violations().Total();
  }

  Device* const dev_;
  IommuDomain* const d_;
  FuzzInput* const in_;
  PgtableReference ref_;
  const uint64_t limit_;
  const uint64_t half_;
  std::vector<std::pair<uint64_t, uint64_t>> direct_;  // direct maps (iova, size), maybe gone
  std::vector<DevMapping> dev_live_;
  static inline uint64_t quiesce_calls_ = 0;
};

// One device per configuration for the whole process: destroying a domain waits for an RCU grace
// period (milliseconds), which would bound the fuzzer to tens of inputs a second. Every input
// leaves its device with nothing mapped (with free_empty_tables, the table back to its root), so
// the next input starts from the same table.
Device* DeviceFor(uint8_t config) {
  static std::unique_ptr<Device> devices[18];
  std::unique_ptr<Device>& dev = devices[config % 18];
  if (dev == nullptr) {
    DeviceConfig c;
    c.name = "fuzz";
    c.mode = static_cast<IommuMode>(config % 3);
    c.free_empty_tables = (config / 3) % 2 == 0;
    const unsigned widths[] = {48, 39, 57};
    c.address_width = widths[(config / 6) % 3];
    absl::StatusOr<std::unique_ptr<Device>> created = Device::Create(c);
    FUZZ_CHECK(created.ok()) << created.status();
    dev = *std::move(created);
  }
  return dev.get();
}

}  // namespace
}  // namespace pagepool::dma

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pagepool::dma;
  pagepool::fuzz::FuzzInput in(data, size);
  PgtableFuzzer(DeviceFor(in.U8()), &in).Run();
  return 0;
}

namespace pagepool::fuzz {

std::vector<std::string> FuzzSeeds() {
  std::vector<std::string> seeds;
  // One seed per device configuration: maps of each kind, translations, an exact unmap, a range
  // unmap, device maps and unmaps, dump, sweep, flush, quiesce.
  for (uint8_t config = 0; config < 18; ++config) {
    if ((config % 3) == 2 && config >= 6) continue;  // passthrough: one width is enough
    SeedWriter w;
    w.U8(config);
    for (uint8_t kind = 0; kind < 8; ++kind) {
      w.U8(dma::kMap).U8(kind).U8(0).U16(kind * 7).U8(1).U32(0x1000 + kind * 0x400).U8(kind % 3);
      w.U8(dma::kTranslate).U8(0).U8(1).U8(0).U16(0).U32(kind * 4096 + 5);
    }
    w.U8(dma::kDevMap).U8(0).U8(1).U8(3).U32(0x2000);
    w.U8(dma::kDevMap).U8(2).U8(0).U16(5000).U32(0x3000);
    w.U8(dma::kDevSync).U8(0).U32(0).U32(100).U8(1);
    w.U8(dma::kTranslate).U8(1).U8(1).U8(0).U32(17);
    w.U8(dma::kSweep).U8(dma::kDump);
    w.U8(dma::kUnmapExact).U8(0);
    w.U8(dma::kUnmapRange).U8(0).U8(0).U8(0);
    w.U8(dma::kMapInvalid).U8(0).U8(0).U16(7).U16(0).U16(5).U8(1).U8(0).U32(9).U8(3);
    w.U8(dma::kUnmapInvalid).U8(1).U64(0xfff).U16(3).U8(0);
    w.U8(dma::kDevUnmapBatch).U8(0).U8(dma::kDevBadMap).U8(2).U32(1).U8(1);
    w.U8(dma::kFlush).U8(dma::kQuiesce).U8(dma::kDevUnmap).U8(0).U8(dma::kDump);
    seeds.push_back(w.str());
  }
  return seeds;
}

}  // namespace pagepool::fuzz
