// File: tests/pool/phys_memory_test.cc
#include "pool/phys_memory.h"

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/pool_fixtures.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

using ::pagepool::testing::kGiB;
using ::pagepool::testing::kMiB;

std::unique_ptr<PhysMemory> MakeMemory(uint64_t bytes, unsigned nodes = 1) {
  absl::StatusOr<std::unique_ptr<PhysMemory>> m = PhysMemory::Create({bytes, nodes});
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(*m);
}

uint64_t ResidentBytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * uint64_t(sysconf(_SC_PAGESIZE));
}

TEST(PhysMemoryTest, RecordIsAtMost32Bytes) { EXPECT_LE(sizeof(PageRecord), 32u); }

TEST(PhysMemoryTest, DefaultIsFourGiBWithFrameZeroReserved) {
  auto m = MakeMemory(PhysMemoryConfig{}.bytes);
  EXPECT_EQ(m->frames(), uint64_t{1} << 20);
  EXPECT_EQ(m->bytes(), 4 * kGiB);
  EXPECT_EQ(m->frames_free(), m->frames() - 1);
  EXPECT_EQ(PhysMemory::PhysOf(5), 5u << 12);
}

TEST(PhysMemoryTest, SixtyFourGiBTableIsCheapToCreate) {
  const uint64_t before = ResidentBytes();
  const auto start = std::chrono::steady_clock::now();
  auto m = MakeMemory(64 * kGiB);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(m->frames(), uint64_t{16} << 20);
  EXPECT_EQ(m->stats().record_bytes_reserved, (uint64_t{16} << 20) * sizeof(PageRecord));
  // Allocate a little: only the touched block's records cost memory.
  std::vector<FrameNumber> frames(64);
  EXPECT_EQ(m->AllocBulk(absl::MakeSpan(frames)), 64u);
  EXPECT_LT(ResidentBytes() - std::min(before, ResidentBytes()), 16 * kMiB);
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count(), 200);
  for (FrameNumber f : frames) EXPECT_TRUE(m->FreePages(f, 0).ok());
}

TEST(PhysMemoryTest, RejectsBadSizes) {
  EXPECT_EQ(PhysMemory::Create({kMiB, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PhysMemory::Create({uint64_t{1} << 50, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PhysMemory::Create({4 * kMiB, 2}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PhysMemoryTest, OrdersAreAlignedAndCoalesce) {
  auto m = MakeMemory(16 * kMiB);  // 4096 frames
  const uint64_t free0 = m->frames_free();
  for (unsigned order = 0; order <= PhysMemory::kMaxOrder; ++order) {
    absl::StatusOr<FrameNumber> f = m->AllocPages(order);
    ASSERT_TRUE(f.ok()) << order << " " << f.status();
    EXPECT_EQ(*f % (uint64_t{1} << order), 0u);
    EXPECT_EQ(m->OrderOf(*f), order);
    EXPECT_EQ(m->record(*f).page_ref.load(), 1);
    EXPECT_EQ(m->frames_free(), free0 - (uint64_t{1} << order));
    EXPECT_TRUE(m->FreePages(*f, order).ok());
    EXPECT_EQ(m->frames_free(), free0);
  }
  // Everything freed coalesces: three whole max-order blocks can be had again (block 0 keeps
  // the reserved frame 0).
  std::vector<FrameNumber> big;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<FrameNumber> f = m->AllocPages(PhysMemory::kMaxOrder);
    ASSERT_TRUE(f.ok()) << i;
    big.push_back(*f);
  }
  EXPECT_EQ(m->AllocPages(PhysMemory::kMaxOrder).status().code(),
            absl::StatusCode::kResourceExhausted);
  for (FrameNumber f : big) EXPECT_TRUE(m->FreePages(f, PhysMemory::kMaxOrder).ok());
}

TEST(PhysMemoryTest, OutOfMemoryIsResourceExhausted) {
  auto m = MakeMemory(4 * kMiB);  // 1024 frames, 1023 usable
  std::vector<FrameNumber> frames(2000);
  EXPECT_EQ(m->AllocBulk(absl::MakeSpan(frames)), 1023u);
  EXPECT_EQ(m->frames_free(), 0u);
  absl::StatusOr<FrameNumber> f = m->AllocPages(0);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(m->AllocBulk(absl::MakeSpan(frames)), 0u);
  EXPECT_GE(m->stats().alloc_failures, 1u);
  for (size_t i = 0; i < 1023; ++i) EXPECT_TRUE(m->FreePages(frames[i], 0).ok());
  EXPECT_EQ(m->frames_free(), 1023u);
}

TEST(PhysMemoryTest, BadFreesAreRefused) {
  auto m = MakeMemory(4 * kMiB);
  EXPECT_EQ(m->AllocPages(11).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<FrameNumber> f = m->AllocPages(1);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(m->FreePages(*f, 0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(m->FreePages(*f, 1).ok());
  EXPECT_EQ(m->FreePages(*f, 1).code(), absl::StatusCode::kFailedPrecondition);  // double free
  EXPECT_EQ(m->FreePages(m->frames(), 0).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PhysMemoryTest, GetPutPageFreesAtZero) {
  auto m = MakeMemory(4 * kMiB);
  const uint64_t free0 = m->frames_free();
  absl::StatusOr<FrameNumber> f = m->AllocPages(2);
  ASSERT_TRUE(f.ok());
  m->GetPage(*f);
  EXPECT_FALSE(m->PutPage(*f));
  EXPECT_EQ(m->frames_free(), free0 - 4);
  EXPECT_TRUE(m->PutPage(*f));
  EXPECT_EQ(m->frames_free(), free0);
}

TEST(PhysMemoryTest, GenerationSurvivesFreeAndReallocation) {
  auto m = MakeMemory(4 * kMiB);
  absl::StatusOr<FrameNumber> f = m->AllocPages(0);
  ASSERT_TRUE(f.ok());
  m->record(*f).owner_gen.store(PageRecord::MakeOwnerGen(7, 41));
  ASSERT_TRUE(m->FreePages(*f, 0).ok());
  absl::StatusOr<FrameNumber> g = m->AllocPages(0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*g, *f);  // LIFO free list
  const uint64_t og = m->record(*g).owner_gen.load();
  EXPECT_EQ(PageRecord::OwnerOf(og), 0u);
  EXPECT_EQ(PageRecord::GenerationOf(og), 41u);
}

TEST(PhysMemoryTest, RandomAllocFreeKeepsBlocksDisjoint) {
  auto m = MakeMemory(16 * kMiB);
  std::mt19937 rng(42);
  std::vector<std::pair<FrameNumber, unsigned>> live;
  std::vector<uint8_t> owned(m->frames(), 0);
  owned[0] = 1;
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const unsigned order = rng() % 5 == 0 ? rng() % 8 : 0;
      absl::StatusOr<FrameNumber> f = m->AllocPages(order);
      if (!f.ok()) {
        ASSERT_EQ(f.status().code(), absl::StatusCode::kResourceExhausted);
        continue;
      }
      for (uint64_t i = 0; i < (uint64_t{1} << order); ++i) {
        ASSERT_EQ(owned[*f + i], 0) << "frame handed out twice";
        owned[*f + i] = 1;
      }
      live.emplace_back(*f, order);
    } else {
      const size_t k = rng() % live.size();
      auto [f, order] = live[k];
      live[k] = live.back();
      live.pop_back();
      for (uint64_t i = 0; i < (uint64_t{1} << order); ++i) owned[f + i] = 0;
      ASSERT_TRUE(m->FreePages(f, order).ok());
    }
  }
  uint64_t used = 0;
  for (auto [f, order] : live) used += uint64_t{1} << order;
  EXPECT_EQ(m->frames_free(), m->frames() - 1 - used);
  for (auto [f, order] : live) ASSERT_TRUE(m->FreePages(f, order).ok());
  EXPECT_EQ(m->frames_free(), m->frames() - 1);
  // Fully coalesced again.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(m->AllocPages(PhysMemory::kMaxOrder).ok());
}

TEST(PhysMemoryTest, ScanWalksTouchedOrAllFrames) {
  auto m = MakeMemory(64 * kMiB);
  uint64_t seen = 0;
  EXPECT_EQ(m->ScanFrames([&](FrameNumber, PageRecord&) { ++seen; }), 1024u);
  EXPECT_EQ(seen, 1024u);
  seen = 0;
  EXPECT_EQ(m->ScanAllFrames([&](FrameNumber, PageRecord&) { ++seen; }), m->frames());
  EXPECT_EQ(seen, m->frames());
}

TEST(PhysMemoryTest, NumaNodesSplitFrames) {
  auto m = MakeMemory(8 * kMiB, 2);
  EXPECT_EQ(m->FrameNid(0), 0u);
  EXPECT_EQ(m->FrameNid(1024), 1u);
}

}  // namespace
}  // namespace pagepool::pool
