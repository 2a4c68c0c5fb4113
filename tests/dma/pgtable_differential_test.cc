// Randomized differential test of the I/O page table against a std::map reference model
// (tests/support/pgtable_reference.h).
//
// Every operation (map of 4 KiB runs, 2 MiB blocks, 2 MiB of 4 KiB leaves, rare 1 GiB blocks; exact
// and random unmaps) is applied to both; statuses must agree, every translation the op touched is
// checked, and after every op table_bytes == 4096 * (non-empty tables + root), which holds exactly
// when free_empty_tables frees every table the moment it empties. IOVAs are clustered so that
// tables are shared, emptied and freed all the time.
//
// PAGEPOOL_DIFF_OPS overrides the op count (default 1,000,000; 500,000 under ASan, 200,000 under
// TSan).
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "dma/iommu_domain.h"
#include "gtest/gtest.h"
#include "tests/dma/dma_test_util.h"
#include "tests/support/pgtable_reference.h"

namespace pagepool::dma {
namespace {

uint64_t OpCount() { return ScaledCount("PAGEPOOL_DIFF_OPS", 1'000'000, 500'000, 200'000); }

using Reference = PgtableReference;

struct Live {
  uint64_t iova, size;
};

void RunDifferential(const DomainConfig& config, uint64_t ops, uint64_t seed) {
  absl::StatusOr<std::unique_ptr<IommuDomain>> created = IommuDomain::Create(config);
  ASSERT_TRUE(created.ok());
  IommuDomain& d = **created;
  Reference ref(d.levels());
  std::mt19937_64 rng(seed);
  auto rnd = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };

  // Clusters: around 0, straddling a 1 GiB boundary, straddling a 512 GiB boundary (a new L3).
  // (A 39-bit space ends at 512 GiB: its third cluster is the last 4 GiB instead.)
  const uint64_t bases[] = {0, 7 * k1G - 16 * k2M,
                            d.address_width() == 39 ? 508 * k1G : 512 * k1G - 2 * k1G};
  const uint64_t kHot = 32 * k2M;  // hot window: many pages per leaf table
  const uint64_t kWide = 4 * k1G;  // wide window: sparse, one or two pages per leaf table
  std::vector<Live> live;
  uint64_t next_phys = 0x10'0000'0000;

  auto check_range = [&](uint64_t start, uint64_t size) {
    // Check a handful of pages of [start, start + size) against the reference.
    const uint64_t pages = size / k4K;
    const uint64_t probes = pages <= 4 ? pages : 4;
    for (uint64_t i = 0; i < probes; ++i) {
      const uint64_t a = start + (i == 0 ? 0 : (i == 1 ? size - k4K : rnd(pages) * k4K)) + rnd(k4K);
      absl::StatusOr<PhysAddr> got = d.Translate(a, rnd(2) == 0);
      const auto* want = ref.Find(a);
      if (want == nullptr) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kNotFound) << std::hex << a;
      } else {
        ASSERT_TRUE(got.ok()) << std::hex << a << " " << got.status();
        ASSERT_EQ(*got, want->second.phys + (a - want->first)) << std::hex << a;
      }
    }
  };

  for (uint64_t op = 0; op < ops; ++op) {
    const uint64_t base = bases[rnd(3)];
    const bool hot = rnd(4) != 0;
    const uint64_t window = hot ? kHot : kWide;
    const uint64_t r = rnd(100);
    const bool want_unmap = live.size() > 3000 ? r < 70 : (live.size() < 200 ? r < 30 : r < 50);
    if (!want_unmap) {
      uint64_t iova, phys, size;
      const uint64_t kind = rnd(100);
      if (kind < 80) {  // a run of 4 KiB pages
        size = (1 + rnd(rnd(8) == 0 ? 64 : 4)) * k4K;
        iova = base + rnd(window / k4K) * k4K;
        phys = next_phys;
      } else if (kind < 92) {  // a 2 MiB block
        size = k2M * (1 + rnd(2));
        iova = base + rnd(window / k2M) * k2M;
        phys = (next_phys + k2M - 1) & ~(k2M - 1);
      } else if (kind < 99) {  // 2 MiB of 4 KiB leaves (phys only 4K aligned)
        size = k2M;
        iova = base + rnd(window / k2M) * k2M;
        phys = ((next_phys + k2M - 1) & ~(k2M - 1)) + k4K;
      } else {  // a 1 GiB block
        size = k1G;
        iova = (base + rnd(kWide / k1G) * k1G + k1G - 1) & ~(k1G - 1);
        phys = (next_phys + k1G - 1) & ~(k1G - 1);
      }
      next_phys = phys + size + k4K * rnd(3);
      if (next_phys > (uint64_t{1} << 50)) next_phys = 0x10'0000'0000;
      const bool overlap = ref.AnyIn(iova, iova + size);
      absl::Status s = d.Map(iova, phys, size, kProtRead | kProtWrite);
      if (overlap) {
        ASSERT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << op << " " << s;
      } else {
        ASSERT_TRUE(s.ok()) << op << " " << s;
        ref.Map(iova, phys, size);
        live.push_back(Live{iova, size});
      }
      check_range(iova, size);
    } else {
      uint64_t iova, size;
      if (!live.empty() && rnd(10) < 8) {  // an exact earlier mapping (may be gone already)
        const size_t i = rnd(live.size());
        iova = live[i].iova;
        size = live[i].size;
        live[i] = live.back();
        live.pop_back();
      } else {  // a random range: holes, partial blocks, several mappings, whole tables
        size = rnd(4) == 0 ? k2M : (1 + rnd(16)) * k4K;
        iova = base + rnd(window / size) * size;
      }
      Reference::UnmapResult want = ref.Unmap(iova, size);
      absl::Status s = d.Unmap(iova, size);
      switch (want) {
        case Reference::UnmapResult::kOk: ASSERT_TRUE(s.ok()) << op << " " << s; break;
        case Reference::UnmapResult::kNotFound:
          ASSERT_EQ(s.code(), absl::StatusCode::kNotFound) << op << " " << s;
          break;
        case Reference::UnmapResult::kCut:
          ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << op << " " << s;
          break;
      }
      check_range(iova, size);
    }
    const DomainStats st = d.stats();
    if (config.free_empty_tables) {
      ASSERT_EQ(st.table_bytes, 4096 * ref.tables()) << "op " << op;
    } else {
      ASSERT_GE(st.table_bytes, 4096 * ref.tables()) << "op " << op;
    }
    ASSERT_EQ(st.mapped_pages, ref.pages()) << "op " << op;
    if (op % 50'000 == 49'999) {
      // A full dump must equal the reference.
      auto it = ref.leaves().begin();
      uint64_t n = 0;
      d.ForEachPresent(0, ~uint64_t{0}, [&](const PresentEntry& e) {
        EXPECT_NE(it, ref.leaves().end());
        if (it == ref.leaves().end()) return false;
        EXPECT_EQ(e.iova, it->first);
        EXPECT_EQ(e.phys, it->second.phys);
        EXPECT_EQ(e.size, PgtableReference::LeafSize(it->second.level));
        ++it;
        ++n;
        return true;
      });
      ASSERT_EQ(n, ref.leaves().size());
    }
  }
  // Tear everything down: only the root may remain.
  while (!ref.leaves().empty()) {
    const auto& [iova, leaf] = *ref.leaves().begin();
    const uint64_t size = PgtableReference::LeafSize(leaf.level);
    const uint64_t i = iova;
    ref.Unmap(i, size);
    ASSERT_TRUE(d.Unmap(i, size).ok());
  }
  d.FlushQueues();
  d.Quiesce();
  const DomainStats st = d.stats();
  if (config.free_empty_tables) {
    EXPECT_EQ(st.table_pages, 1u);
  }
  EXPECT_EQ(st.pending_free_pages, 0u);
  EXPECT_EQ(st.tables_allocated, st.tables_freed + st.table_pages);
  EXPECT_EQ(st.tables_released, st.tables_freed);
  EXPECT_GT(st.block_unmap_table, 0u);
  EXPECT_EQ(st.mapped_pages, 0u);
}

TEST(PgtableDifferential, StrictFreeTables48) {
  DomainConfig c;
  c.address_width = 48;
  RunDifferential(c, OpCount(), 0x5eed0001);
}

TEST(PgtableDifferential, LazyFreeTables39) {
  DomainConfig c;
  c.address_width = 39;
  c.mode = IommuMode::kLazy;
  RunDifferential(c, OpCount() / 5, 0x5eed0002);
}

TEST(PgtableDifferential, StrictKeepTables48) {
  // free_empty_tables off: translations must still agree; tables only go by live-free cases 2
  // and 3.
  DomainConfig c;
  c.address_width = 48;
  c.free_empty_tables = false;
  RunDifferential(c, OpCount() / 5, 0x5eed0004);
}

TEST(PgtableDifferential, StrictFreeTables57) {
  DomainConfig c;
  c.address_width = 57;
  RunDifferential(c, OpCount() / 5, 0x5eed0003);
}

}  // namespace
}  // namespace pagepool::dma
