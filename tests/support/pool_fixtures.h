// File: tests/support/pool_fixtures.h
//
// What the pool/ tests and benchmarks set up alike: simulated memory, the settings of a Nic on one
// modelled IOMMU mode, NicFixture (a Nic with a fake clock and collected warnings, for gtest
// fixtures to derive from), names parsed back into enums, a device's domain drained to its resting
// state, and the mapping checker's violation counters written as one line for a failure message.
// Free of gtest, so the benchmarks under tests/bench/pool use it too.
//
// Thread safety: the free helpers keep no state; DrainDomain must not run while other threads use
// the device. A NicFixture belongs to its test's thread (the Nic itself is thread-safe).
#ifndef PAGEPOOL_TESTS_SUPPORT_POOL_FIXTURES_H_
#define PAGEPOOL_TESTS_SUPPORT_POOL_FIXTURES_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "dma/device.h"
#include "dma/iommu_domain.h"
#include "dma/iova_allocator.h"
#include "dma/types.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "pool/phys_memory.h"
#include "tests/support/fake_clock.h"

namespace pagepool::testing {

inline constexpr uint64_t kMiB = uint64_t{1} << 20;
inline constexpr uint64_t kGiB = uint64_t{1} << 30;

// PhysMemory::Create({bytes, numa_nodes}) as a shared_ptr (what Nic and PagePool take).
inline absl::StatusOr<std::shared_ptr<pool::PhysMemory>> MakeSharedMemory(uint64_t bytes,
                                                                          unsigned numa_nodes = 1) {
  absl::StatusOr<std::unique_ptr<pool::PhysMemory>> m =
      pool::PhysMemory::Create({bytes, numa_nodes});
  if (!m.ok()) return m.status();
  return std::shared_ptr<pool::PhysMemory>(std::move(*m));
}

// A Nic on a device named `name` in `mode`; pools created without their own clock and warn sink
// get these (nullptr / empty: the real clock and stderr).
inline pool::NicConfig MakeNicConfig(std::string name, dma::IommuMode mode,
                                     base::Clock* clock = nullptr, pool::WarnSink warn = {}) {
  pool::NicConfig config;
  config.device.name = std::move(name);
  config.device.mode = mode;
  config.clock = clock;
  config.warn = std::move(warn);
  return config;
}

// A Nic named "eth0" over simulated memory of its own, its pools on the fake clock_ and their
// warnings collected in warnings_. Derive a gtest fixture from it and call CreateNic in SetUp (a
// test may call it again to start over with other memory or another mode).
class NicFixture {
 protected:
  absl::Status CreateNic(uint64_t memory_bytes, unsigned numa_nodes, dma::IommuMode mode,
                         uint32_t ifindex = 0) {
    absl::StatusOr<std::shared_ptr<pool::PhysMemory>> m =
        MakeSharedMemory(memory_bytes, numa_nodes);
    if (!m.ok()) return m.status();
    memory_ = std::move(*m);
    pool::NicConfig config = MakeNicConfig(
        "eth0", mode, &clock_, [this](std::string_view line) { warnings_.emplace_back(line); });
    config.ifindex = ifindex;
    absl::StatusOr<std::unique_ptr<pool::Nic>> nic = pool::Nic::Create(memory_, config);
    if (!nic.ok()) return nic.status();
    nic_ = std::move(*nic);
    return absl::OkStatus();
  }

  FakeClock clock_;
  std::vector<std::string> warnings_;
  std::shared_ptr<pool::PhysMemory> memory_;
  std::unique_ptr<pool::Nic> nic_;
};

// The mode whose dma::IommuModeName is `name` ("strict", "lazy", "passthrough"); nullopt if none.
inline std::optional<dma::IommuMode> IommuModeFromName(std::string_view name) {
  for (dma::IommuMode m :
       {dma::IommuMode::kStrict, dma::IommuMode::kLazy, dma::IommuMode::kPassthrough}) {
    if (dma::IommuModeName(m) == name) return m;
  }
  return std::nullopt;
}

// The strategy whose pool::DestroyStrategyName is `name` ("xarray", "scan", "none"); nullopt if
// none.
inline std::optional<pool::DestroyStrategy> DestroyStrategyFromName(std::string_view name) {
  using pool::DestroyStrategy;
  for (DestroyStrategy s :
       {DestroyStrategy::kXarray, DestroyStrategy::kScan, DestroyStrategy::kNone}) {
    if (pool::DestroyStrategyName(s) == name) return s;
  }
  return std::nullopt;
}

// What a device's domain still holds once its flush queues are flushed, its deferred table frees
// have run (Quiesce) and its IOVA magazines are emptied. At rest: no live mapping, no mapped page,
// only the root table, nothing pending, no IOVA allocated.
struct DomainResidue {
  uint64_t live_mappings = 0;  // the device's checker, domain or not
  bool has_domain = false;     // false in passthrough: the fields below stay 0
  uint64_t mapped_pages = 0;
  uint64_t table_pages = 0;
  uint64_t pending_free_pages = 0;
  bool has_iova = false;
  uint64_t iova_allocated_pages = 0;
};

// Drains the device's domain (see DomainResidue) and reports what is left.
// REQUIRES: no other thread uses the device meanwhile.
inline DomainResidue DrainDomain(dma::Device& device) {
  DomainResidue r;
  r.live_mappings = device.live_mappings();
  dma::IommuDomain* domain = device.domain();
  if (domain == nullptr) return r;
  r.has_domain = true;
  domain->FlushQueues();
  domain->Quiesce();
  const dma::DomainStats s = domain->stats();
  r.mapped_pages = s.mapped_pages;
  r.table_pages = s.table_pages;
  r.pending_free_pages = s.pending_free_pages;
  if (domain->iova() != nullptr) {
    r.has_iova = true;
    domain->iova()->FlushCaches();
    r.iova_allocated_pages = domain->iova()->stats().allocated_pages;
  }
  return r;
}

// "double D unknown U live_at_unbind L after_unbind A sync_unknown S", for failure messages.
inline std::string ViolationSummary(const dma::CheckerCounters& v) {
  return absl::StrCat("double ", v.double_unmap, " unknown ", v.unknown_unmap, " live_at_unbind ",
                      v.live_at_unbind, " after_unbind ", v.call_after_unbind, " sync_unknown ",
                      v.sync_unknown);
}

}  // namespace pagepool::testing

#endif  // PAGEPOOL_TESTS_SUPPORT_POOL_FIXTURES_H_
