// File: tests/dma/device_test.cc
//
// Device: map/unmap/sync in strict, lazy and passthrough modes, every error, calls after Unbind
// refused and counted, and the domain left empty by Unbind.
#include "dma/device.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dma/iommu_domain.h"
#include "dma/iova_allocator.h"
#include "dma/mapping_checker.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/dma/dma_test_util.h"

namespace pagepool::dma {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Device> MakeDevice(IommuMode mode, bool free_empty_tables = true,
                                   unsigned width = 48) {
  DeviceConfig c;
  c.name = "eth0";
  c.mode = mode;
  c.free_empty_tables = free_empty_tables;
  c.address_width = width;
  auto dev = Device::Create(c);
  EXPECT_TRUE(dev.ok()) << dev.status();
  return dev.ok() ? *std::move(dev) : nullptr;
}

class DeviceModeTest : public ::testing::TestWithParam<IommuMode> {};

INSTANTIATE_TEST_SUITE_P(Modes, DeviceModeTest,
                         ::testing::Values(IommuMode::kStrict, IommuMode::kLazy,
                                           IommuMode::kPassthrough),
                         [](const auto& info) { return std::string(IommuModeName(info.param)); });

TEST_P(DeviceModeTest, MapTranslateUnmap) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  EXPECT_TRUE(dev->bound());
  EXPECT_EQ(dev->name(), "eth0");
  EXPECT_EQ(dev->mode(), GetParam());
  const bool pt = GetParam() == IommuMode::kPassthrough;
  EXPECT_EQ(dev->domain() == nullptr, pt);

  const PhysAddr phys = 0x12345000;
  auto addr = dev->MapPage(phys, 4096, kFrom);
  ASSERT_TRUE(addr.ok()) << addr.status();
  EXPECT_EQ(*addr % kPageSize, 0u);
  EXPECT_NE(*addr, 0u);
  // A multi-page mapping with a partial last page.
  const PhysAddr phys2 = 0x40000000;
  auto addr2 = dev->MapPage(phys2, 3 * kPageSize + 1, kTo);
  ASSERT_TRUE(addr2.ok()) << addr2.status();
  EXPECT_EQ(*addr2 % (4 * kPageSize), 0u);  // size-aligned IOVA (or phys in passthrough)
  EXPECT_EQ(dev->live_mappings(), 2u);
  EXPECT_EQ(dev->map_calls(), 2u);

  if (pt) {
    EXPECT_EQ(*addr, phys);
    EXPECT_EQ(*addr2, phys2);
  } else {
    auto t = dev->domain()->Translate(*addr, /*write=*/true);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(*t, phys);
    for (uint64_t i = 0; i < 4; ++i) {
      auto t2 = dev->domain()->Translate(*addr2 + i * kPageSize, false);
      ASSERT_TRUE(t2.ok()) << "page " << i << ": " << t2.status();
      EXPECT_EQ(*t2, phys2 + i * kPageSize);
    }
    EXPECT_EQ(dev->domain_stats().mapped_pages, 5u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 1u + 4u);
  }

  EXPECT_TRUE(dev->SyncForCpu(*addr, 0, 4096, kFrom).ok());
  EXPECT_TRUE(dev->SyncForDevice(*addr2, 128, 1500, kTo).ok());
  EXPECT_EQ(dev->sync_calls(), 2u);

  EXPECT_TRUE(dev->UnmapPage(*addr, 4096, kFrom).ok());
  EXPECT_TRUE(dev->UnmapPage(*addr2, 3 * kPageSize + 1, kTo).ok());
  EXPECT_EQ(dev->unmap_calls(), 2u);
  EXPECT_EQ(dev->live_mappings(), 0u);
  EXPECT_EQ(dev->violations().Total(), 0u);

  if (pt) {
    DomainStats st = dev->domain_stats();
    EXPECT_EQ(st.maps, 2u);
    EXPECT_EQ(st.unmaps, 2u);
    EXPECT_EQ(st.mapped_pages, 0u);
    EXPECT_EQ(st.table_pages, 0u);
  } else {
    EXPECT_EQ(dev->domain()->Translate(*addr, false).status().code(), absl::StatusCode::kNotFound);
    dev->domain()->FlushQueues();
    dev->domain()->Quiesce();
    DomainStats st = dev->domain_stats();
    EXPECT_EQ(st.mapped_pages, 0u);
    EXPECT_EQ(st.table_pages, 1u);  // freeing empty tables: only the root is left
    EXPECT_EQ(st.iova_allocated_pages, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
  }
}

TEST_P(DeviceModeTest, IovaIsReusedAfterUnmap) {
  if (GetParam() == IommuMode::kPassthrough) GTEST_SKIP() << "no IOVA in passthrough";
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  for (int i = 0; i < 2000; ++i) {
    auto a = dev->MapPage(0x1000 * (i + 1), 4096, kBi);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(dev->UnmapPage(*a, 4096, kBi).ok());
  }
  dev->domain()->FlushQueues();
  EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
  EXPECT_GT(dev->domain()->iova()->stats().rcache_hits, 0u);
  EXPECT_EQ(dev->domain_stats().mapped_pages, 0u);
  EXPECT_EQ(dev->violations().Total(), 0u);
}

TEST_P(DeviceModeTest, InvalidArgumentsAreRefusedUncounted) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  auto r = dev->MapPage(0x1000, 0, kBi);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("eth0"));
  EXPECT_EQ(dev->MapPage(0x1001, 4096, kBi).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->MapPage(0x1000, 4096, static_cast<DmaDirection>(7)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->MapPage(0xfffffffffffff000ull, 0x2000, kBi).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->MapPage(0x1000, ~uint64_t{0}, kBi).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->UnmapPage(0x1000, 4096, static_cast<DmaDirection>(9)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->violations().Total(), 0u);
  EXPECT_EQ(dev->map_calls(), 0u);
  EXPECT_EQ(dev->live_mappings(), 0u);
  if (GetParam() != IommuMode::kPassthrough) {
    EXPECT_EQ(dev->domain_stats().mapped_pages, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
  }
}

TEST_P(DeviceModeTest, UnmapErrorsAreCounted) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  // Unknown address.
  absl::Status s = dev->UnmapPage(0x7770000, 4096, kBi);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("0x7770000"));
  EXPECT_EQ(dev->violations().unknown_unmap, 1u);

  auto a = dev->MapPage(0x200000, 8192, kFrom);
  ASSERT_TRUE(a.ok());
  // Size mismatch: refused, mapping still live and translating.
  s = dev->UnmapPage(*a, 4096, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("8192"));
  EXPECT_EQ(dev->violations().size_mismatch, 1u);
  // Direction mismatch.
  s = dev->UnmapPage(*a, 8192, kTo);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("to_device"));
  EXPECT_EQ(dev->violations().direction_mismatch, 1u);
  EXPECT_EQ(dev->live_mappings(), 1u);
  if (dev->domain() != nullptr) {
    auto t = dev->domain()->Translate(*a + 4096, /*write=*/true);  // FROM_DEVICE: device writes
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(*t, 0x201000u);
  }
  // Syncs: out of bounds, wrong direction, unknown.
  EXPECT_EQ(dev->SyncForCpu(*a, 8000, 500, kFrom).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->violations().size_mismatch, 2u);
  EXPECT_EQ(dev->SyncForDevice(*a, 0, 64, kTo).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->violations().direction_mismatch, 2u);
  EXPECT_EQ(dev->SyncForCpu(0x99999000, 0, 64, kFrom).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dev->violations().sync_unknown, 1u);
  EXPECT_EQ(dev->sync_calls(), 0u);
  // Good unmap, then double unmap.
  EXPECT_TRUE(dev->UnmapPage(*a, 8192, kFrom).ok());
  s = dev->UnmapPage(*a, 8192, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("double unmap"));
  CheckerCounters v = dev->violations();
  EXPECT_EQ(v.double_unmap, 1u);
  EXPECT_EQ(v.unknown_unmap, 1u);
  EXPECT_EQ(v.Total(), 7u);
  EXPECT_EQ(dev->unmap_calls(), 1u);
  if (dev->domain() != nullptr) {
    dev->domain()->FlushQueues();
    EXPECT_EQ(dev->domain_stats().mapped_pages, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
  }
}

TEST_P(DeviceModeTest, UnmapPagesCountsAsUnmapPageDoes) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  std::vector<DmaAddr> addrs;
  for (uint64_t i = 0; i < 600; ++i) {  // more than one of UnmapPages' internal chunks
    auto a = dev->MapPage(0x100000 + i * 0x2000, 4096, kFrom);
    ASSERT_TRUE(a.ok());
    addrs.push_back(*a);
  }
  ASSERT_TRUE(dev->UnmapPages(absl::MakeConstSpan(addrs).subspan(0, 10), 4096, kFrom).ok());
  EXPECT_EQ(dev->unmap_calls(), 10u);
  EXPECT_EQ(dev->live_mappings(), 590u);
  // A batch with a double unmap (addrs[0], already unmapped), an address twice, an unknown address
  // and a size mismatch: each refused and counted as UnmapPage would, the rest unmapped.
  std::vector<DmaAddr> batch(addrs.begin() + 10, addrs.end());
  batch.push_back(addrs[0]);
  batch.push_back(addrs[20]);
  batch.push_back(0x7770000);
  absl::Status s = dev->UnmapPages(batch, 4096, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("unmap_page on device eth0"));
  CheckerCounters v = dev->violations();
  EXPECT_EQ(v.double_unmap, 2u);
  EXPECT_EQ(v.unknown_unmap, 1u);
  EXPECT_EQ(v.Total(), 3u);
  EXPECT_EQ(dev->unmap_calls(), 600u);
  EXPECT_EQ(dev->live_mappings(), 0u);
  auto a = dev->MapPage(0x900000, 8192, kFrom);
  ASSERT_TRUE(a.ok());
  const DmaAddr one[] = {*a};
  EXPECT_EQ(dev->UnmapPages(one, 4096, kFrom).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->violations().size_mismatch, 1u);
  EXPECT_EQ(dev->live_mappings(), 1u);
  EXPECT_TRUE(dev->UnmapPages(one, 8192, kFrom).ok());
  EXPECT_TRUE(dev->UnmapPages({}, 4096, kFrom).ok());
  if (dev->domain() != nullptr) {
    dev->domain()->FlushQueues();
    EXPECT_EQ(dev->domain_stats().mapped_pages, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
    EXPECT_EQ(dev->domain()->Translate(addrs[5], false).status().code(),
              absl::StatusCode::kNotFound);
  }
  // After Unbind every address of a batch is refused and counted once.
  ASSERT_TRUE(dev->Unbind().ok());
  s = dev->UnmapPages(absl::MakeConstSpan(addrs).subspan(0, 3), 4096, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dev->violations().call_after_unbind, 3u);
  EXPECT_EQ(dev->unmap_calls(), 601u);
}

TEST_P(DeviceModeTest, UnbindTearsDownAndRefusesLaterCalls) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  std::vector<DmaAddr> addrs;
  for (uint64_t i = 0; i < 300; ++i) {
    auto a = dev->MapPage(0x100000 + i * 0x3000, i % 3 == 0 ? 8192 : 4096, kFrom);
    ASSERT_TRUE(a.ok());
    addrs.push_back(*a);
  }
  ASSERT_TRUE(dev->UnmapPage(addrs[1], 4096, kFrom).ok());
  ASSERT_TRUE(dev->Unbind().ok());
  EXPECT_FALSE(dev->bound());
  EXPECT_EQ(dev->live_mappings(), 0u);
  CheckerCounters v = dev->violations();
  EXPECT_EQ(v.live_at_unbind, 299u);
  EXPECT_EQ(v.Total(), 299u);
  if (dev->domain() != nullptr) {
    dev->domain()->Quiesce();
    DomainStats st = dev->domain_stats();
    EXPECT_EQ(st.mapped_pages, 0u);
    EXPECT_EQ(st.table_pages, 1u);
    EXPECT_EQ(st.fq_pending, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
    EXPECT_EQ(dev->domain()->Translate(addrs[0], false).status().code(),
              absl::StatusCode::kNotFound);
  }

  // Every DMA-API call is now refused and counted: the seed-002 crash, made visible.
  auto m = dev->MapPage(0x1000, 4096, kBi);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(m.status().message(), HasSubstr("DMA-API call map_page on unbound device eth0"));
  absl::Status s = dev->UnmapPage(addrs[0], 8192, kFrom);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("unmap_page on unbound device eth0"));
  EXPECT_EQ(dev->SyncForCpu(addrs[0], 0, 64, kFrom).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dev->SyncForDevice(addrs[0], 0, 64, kFrom).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dev->Unbind().code(), absl::StatusCode::kFailedPrecondition);
  v = dev->violations();
  EXPECT_EQ(v.call_after_unbind, 5u);
  EXPECT_EQ(v.double_unmap + v.unknown_unmap + v.sync_unknown, 0u);
  EXPECT_EQ(v.Total(), 299u + 5u);
  EXPECT_EQ(dev->map_calls(), 300u);
  EXPECT_EQ(dev->unmap_calls(), 1u);
}

TEST_P(DeviceModeTest, UnbindWithNothingLiveIsClean) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  auto a = dev->MapPage(0x5000, 4096, kBi);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(dev->UnmapPage(*a, 4096, kBi).ok());
  ASSERT_TRUE(dev->Unbind().ok());
  EXPECT_EQ(dev->violations().Total(), 0u);
  if (dev->domain() != nullptr) {
    dev->domain()->Quiesce();
    EXPECT_EQ(dev->domain_stats().mapped_pages, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
  }
}

// An unbound device is gone for good: Unbind gives back what it kept for past mappings (IOVA
// magazines, tables waiting for RCU or cached, the checker's history), without waiting for a
// later call. Devices are never deleted, so this is what keeps a daemon that binds and unbinds
// many devices from growing.
TEST_P(DeviceModeTest, UnbindGivesBackWhatPastMappingsLeft) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  for (int round = 0; round < 4; ++round) {
    std::vector<DmaAddr> addrs;
    for (uint64_t i = 0; i < 3000; ++i) {
      auto a = dev->MapPage((round * 3000 + i + 1) * kPageSize, 4096, kBi);
      ASSERT_TRUE(a.ok()) << a.status();
      addrs.push_back(*a);
    }
    for (DmaAddr a : addrs) ASSERT_TRUE(dev->UnmapPage(a, 4096, kBi).ok());
  }
  if (dev->domain() != nullptr) {
    dev->domain()->FlushQueues();  // lazy: the queued unmaps release their tables
    dev->domain()->Quiesce();      // the freed tables reach the cache
    EXPECT_GT(dev->domain()->iova()->stats().cached_pages, 0u);
    EXPECT_GT(dev->domain_stats().cached_table_pages, 0u);
  }
  ASSERT_TRUE(dev->Unbind().ok());
  EXPECT_EQ(dev->violations().Total(), 0u);
  if (dev->domain() != nullptr) {
    const DomainStats st = dev->domain_stats();
    EXPECT_EQ(st.mapped_pages, 0u);
    EXPECT_EQ(st.pending_free_pages, 0u);
    EXPECT_EQ(st.cached_table_pages, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().cached_pages, 0u);
    EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
  }
}

TEST(DeviceTest, CreateRejectsBadAddressWidth) {
  for (unsigned width : {0u, 32u, 40u, 64u}) {
    DeviceConfig c;
    c.name = "bad";
    c.address_width = width;
    auto dev = Device::Create(c);
    EXPECT_EQ(dev.status().code(), absl::StatusCode::kInvalidArgument) << width;
    c.mode = IommuMode::kPassthrough;
    EXPECT_EQ(Device::Create(c).status().code(), absl::StatusCode::kInvalidArgument) << width;
  }
  for (unsigned width : {39u, 48u, 57u}) {
    auto dev = MakeDevice(IommuMode::kStrict, true, width);
    ASSERT_NE(dev, nullptr);
    EXPECT_EQ(dev->address_width(), width);
    EXPECT_EQ(dev->domain()->address_width(), width);
  }
}

TEST(DeviceTest, IovaExhaustionIsResourceExhausted) {
  auto dev = MakeDevice(IommuMode::kStrict, true, 39);
  ASSERT_NE(dev, nullptr);
  // More than the whole 39-bit space.
  auto r = dev->MapPage(0, uint64_t{1} << 40, kBi);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("eth0"));
  EXPECT_EQ(dev->domain()->iova()->stats().alloc_failures, 1u);
  EXPECT_EQ(dev->violations().Total(), 0u);
  EXPECT_EQ(dev->live_mappings(), 0u);
  EXPECT_EQ(dev->domain_stats().mapped_pages, 0u);
}

TEST(DeviceTest, PassthroughRefusesBeyondDmaMask) {
  auto dev = MakeDevice(IommuMode::kPassthrough, true, 39);
  ASSERT_NE(dev, nullptr);
  EXPECT_EQ(dev->MapPage(uint64_t{1} << 39, 4096, kBi).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(dev->MapPage((uint64_t{1} << 39) - 4096, 4096, kBi).ok());
}

TEST(DeviceTest, CreateChecksTheDmaMask) {
  for (unsigned bits : {1u, 12u, 49u, 64u}) {
    DeviceConfig c;
    c.name = "bad";
    c.dma_mask_bits = bits;
    auto dev = Device::Create(c);
    EXPECT_EQ(dev.status().code(), absl::StatusCode::kInvalidArgument) << bits;
    EXPECT_THAT(dev.status().message(), HasSubstr("DMA mask of " + std::to_string(bits)));
  }
  for (unsigned bits : {0u, Device::kMinDmaMaskBits, 32u, 48u}) {
    DeviceConfig c;
    c.name = "ok";
    c.dma_mask_bits = bits;
    auto dev = Device::Create(c);
    ASSERT_TRUE(dev.ok()) << bits << ": " << dev.status();
    EXPECT_EQ((*dev)->dma_mask_bits(), bits == 0 ? 48u : bits);
    EXPECT_EQ((*dev)->domain()->iova_limit_bits(), bits == 0 ? 48u : bits);
    EXPECT_EQ((*dev)->domain()->address_width(), 48u);  // the page table keeps its reach
  }
}

// iommu_dma_alloc_iova caps every IOVA at the device's DMA mask: a 20-bit device has pfns 1..255,
// all of them below 2^20; the 256th page is refused (RESOURCE_EXHAUSTED naming the IOVA space and
// the mask) with nothing left allocated or mapped, and an unmap makes room again.
TEST(DeviceTest, IovaStaysBelowTheDmaMaskAndRecoversAfterUnmap) {
  for (IommuMode mode : {IommuMode::kStrict, IommuMode::kLazy}) {
    SCOPED_TRACE(std::string(IommuModeName(mode)));
    DeviceConfig c;
    c.name = "dev20";
    c.mode = mode;
    c.dma_mask_bits = 20;
    auto made = Device::Create(c);
    ASSERT_TRUE(made.ok()) << made.status();
    Device& dev = **made;
    std::vector<DmaAddr> addrs;
    for (uint64_t i = 0; i < 255; ++i) {
      auto a = dev.MapPage(i * kPageSize, kPageSize, kBi);
      ASSERT_TRUE(a.ok()) << i << ": " << a.status();
      EXPECT_LE(*a + kPageSize, uint64_t{1} << 20);
      EXPECT_NE(*a, 0u);
      addrs.push_back(*a);
    }
    auto full = dev.MapPage(255 * kPageSize, kPageSize, kBi);
    EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(full.status().message(), HasSubstr("IOVA space exhausted"));
    EXPECT_THAT(full.status().message(), HasSubstr("20-bit DMA mask"));
    EXPECT_EQ(dev.MapPage(0, 2 * kPageSize, kBi).status().code(),
              absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(dev.live_mappings(), 255u);
    EXPECT_EQ(dev.domain_stats().mapped_pages, 255u);

    ASSERT_TRUE(dev.UnmapPage(addrs.back(), kPageSize, kBi).ok());
    addrs.pop_back();
    dev.domain()->FlushQueues();  // lazy: the IOVA comes back with the flush
    auto again = dev.MapPage(255 * kPageSize, kPageSize, kBi);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_LT(*again, uint64_t{1} << 20);
    addrs.push_back(*again);
    for (DmaAddr a : addrs) ASSERT_TRUE(dev.UnmapPage(a, kPageSize, kBi).ok());
    dev.domain()->FlushQueues();
    EXPECT_EQ(dev.live_mappings(), 0u);
    EXPECT_EQ(dev.violations().Total(), 0u);
    EXPECT_EQ(dev.domain_stats().iova_allocated_pages, 0u);
  }
}

TEST(DeviceTest, PassthroughRefusesBeyondASmallDmaMask) {
  DeviceConfig c;
  c.name = "pt32";
  c.mode = IommuMode::kPassthrough;
  c.dma_mask_bits = 32;
  auto dev = Device::Create(c);
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto beyond = (*dev)->MapPage(uint64_t{1} << 32, 4096, kBi);
  EXPECT_EQ(beyond.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(beyond.status().message(), HasSubstr("32-bit DMA mask"));
  EXPECT_TRUE((*dev)->MapPage((uint64_t{1} << 32) - 4096, 4096, kBi).ok());
}

TEST(DeviceTest, PassthroughSamePageMappedTwice) {
  auto dev = MakeDevice(IommuMode::kPassthrough);
  ASSERT_NE(dev, nullptr);
  auto a = dev->MapPage(0x8000, 4096, kBi);
  auto b = dev->MapPage(0x8000, 4096, kBi);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(dev->live_mappings(), 2u);
  EXPECT_TRUE(dev->UnmapPage(*a, 4096, kBi).ok());
  EXPECT_TRUE(dev->UnmapPage(*b, 4096, kBi).ok());
  EXPECT_EQ(dev->violations().Total(), 0u);
}

// dma_sync_single_for_{device,cpu} with a direction outside the enum (the kernel BUG()s on
// !valid_dma_direction) must be refused like map_page and unmap_page refuse it, also on a
// bidirectional mapping (whose direction check accepts any direction).
TEST(DeviceTest, SyncRefusesAnInvalidDirection) {
  for (IommuMode mode : {IommuMode::kStrict, IommuMode::kPassthrough}) {
    DeviceConfig c;
    c.name = "sync";
    c.mode = mode;
    absl::StatusOr<std::unique_ptr<Device>> dev = Device::Create(c);
    ASSERT_TRUE(dev.ok());
    absl::StatusOr<DmaAddr> a = (*dev)->MapPage(0x200000, 4096, DmaDirection::kBidirectional);
    ASSERT_TRUE(a.ok());
    const auto bad = static_cast<DmaDirection>(7);
    EXPECT_EQ((*dev)->SyncForDevice(*a, 0, 4096, bad).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*dev)->SyncForCpu(*a, 0, 4096, bad).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*dev)->sync_calls(), 0u);
    EXPECT_TRUE((*dev)->SyncForCpu(*a, 0, 4096, DmaDirection::kFromDevice).ok());
    EXPECT_TRUE((*dev)->UnmapPage(*a, 4096, DmaDirection::kBidirectional).ok());
  }
}

// The Device's size arithmetic near 2^64 and the address width.
TEST(DeviceTest, HugeSizesAreRefusedWithoutWrapping) {
  for (IommuMode mode : {IommuMode::kStrict, IommuMode::kLazy, IommuMode::kPassthrough}) {
    DeviceConfig c;
    c.name = "huge";
    c.mode = mode;
    c.address_width = 39;
    absl::StatusOr<std::unique_ptr<Device>> dev = Device::Create(c);
    ASSERT_TRUE(dev.ok());
    Device& d = **dev;
    for (uint64_t size :
         {~uint64_t{0}, ~uint64_t{0} - 4095, uint64_t{1} << 63, (uint64_t{1} << 39) + 1}) {
      EXPECT_FALSE(d.MapPage(0, size, DmaDirection::kToDevice).ok()) << size;
    }
    EXPECT_FALSE(d.MapPage(~uint64_t{0} - 4095, 8192, DmaDirection::kToDevice).ok());
    EXPECT_FALSE(d.MapPage(0, 0, DmaDirection::kToDevice).ok());
    EXPECT_FALSE(d.SyncForCpu(0, ~uint64_t{0}, 2, DmaDirection::kToDevice).ok());
    EXPECT_EQ(d.live_mappings(), 0u);
    EXPECT_EQ(d.domain_stats().mapped_pages, 0u);
    EXPECT_TRUE(d.Unbind().ok());
    EXPECT_EQ(d.violations().live_at_unbind, 0u);
  }
}

TEST(DeviceTest, UnbindWithoutFreeingTablesStillUnmapsEverything) {
  auto dev = MakeDevice(IommuMode::kStrict, /*free_empty_tables=*/false);
  ASSERT_NE(dev, nullptr);
  for (uint64_t i = 0; i < 64; ++i) ASSERT_TRUE(dev->MapPage(i * 0x200000, 4096, kBi).ok());
  ASSERT_TRUE(dev->Unbind().ok());
  dev->domain()->Quiesce();
  EXPECT_EQ(dev->domain_stats().mapped_pages, 0u);
  EXPECT_GE(dev->domain_stats().table_pages, 1u);
  EXPECT_EQ(dev->violations().live_at_unbind, 64u);
  EXPECT_EQ(dev->domain()->iova()->stats().allocated_pages, 0u);
}

// dma_dev_need_sync(): only a coherent device needs no sync, and its sync calls return at once,
// unchecked and uncounted, as the kernel's inline dma_sync_single_for_* do.
TEST(DeviceTest, OnlyACoherentDeviceNeedsNoSync) {
  EXPECT_EQ(DmaCoherenceName(DmaCoherence::kCoherent), "coherent");
  EXPECT_EQ(DmaCoherenceName(DmaCoherence::kNonCoherent), "non_coherent");
  EXPECT_EQ(DmaCoherenceName(DmaCoherence::kSwiotlb), "swiotlb");
  for (DmaCoherence c :
       {DmaCoherence::kCoherent, DmaCoherence::kNonCoherent, DmaCoherence::kSwiotlb}) {
    SCOPED_TRACE(std::string(DmaCoherenceName(c)));
    DeviceConfig config;
    config.name = "eth0";
    config.coherence = c;
    absl::StatusOr<std::unique_ptr<Device>> dev = Device::Create(config);
    ASSERT_TRUE(dev.ok()) << dev.status();
    const bool need = c != DmaCoherence::kCoherent;
    EXPECT_EQ((*dev)->coherence(), c);
    EXPECT_EQ((*dev)->need_sync(), need);
    absl::StatusOr<DmaAddr> a = (*dev)->MapPage(0x10000, kPageSize, DmaDirection::kFromDevice);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_TRUE((*dev)->SyncForDevice(*a, 0, 1500, DmaDirection::kFromDevice).ok());
    EXPECT_TRUE((*dev)->SyncForCpu(*a, 0, 1500, DmaDirection::kFromDevice).ok());
    EXPECT_EQ((*dev)->sync_calls(), need ? 2u : 0u);
    // A sync of an address never mapped: checked (and counted) only where syncs happen at all.
    const absl::Status unknown = (*dev)->SyncForCpu(0x7770000, 0, 64, DmaDirection::kFromDevice);
    EXPECT_EQ(unknown.ok(), !need) << unknown;
    EXPECT_EQ((*dev)->violations().sync_unknown, need ? 1u : 0u);
    ASSERT_TRUE((*dev)->UnmapPage(*a, kPageSize, DmaDirection::kFromDevice).ok());
  }
  DeviceConfig bad;
  bad.name = "eth1";
  bad.coherence = static_cast<DmaCoherence>(7);
  absl::StatusOr<std::unique_ptr<Device>> refused = Device::Create(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("coherence"), std::string::npos) << refused.status();
}

// The device's own DMA write translates every 4 KiB page of its range through the domain: a
// mapped, writable range passes and leaves its pages dirty for a dirty-tracking reader; a page
// without a writable mapping is a fault the domain counts. The checker counts nothing, since a
// device's DMA is not a DMA-API call. Passthrough translates nothing.
TEST_P(DeviceModeTest, DmaWriteTranslatesEveryPageOfItsRange) {
  auto dev = MakeDevice(GetParam());
  ASSERT_NE(dev, nullptr);
  const bool pt = GetParam() == IommuMode::kPassthrough;
  if (!pt) ASSERT_TRUE(dev->domain()->SetDirtyTracking(true).ok());
  auto addr = dev->MapPage(0x200000, 2 * kPageSize, kFrom);
  ASSERT_TRUE(addr.ok()) << addr.status();
  auto ro = dev->MapPage(0x400000, kPageSize, kTo);
  ASSERT_TRUE(ro.ok()) << ro.status();

  EXPECT_TRUE(dev->DmaWrite(*addr + 100, 2 * kPageSize - 100).ok());
  EXPECT_EQ(dev->DmaWrite(*addr, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->DmaWrite(~uint64_t{0} - 10, 100).code(), absl::StatusCode::kInvalidArgument);
  if (pt) {
    EXPECT_TRUE(dev->DmaWrite(*addr, 3 * kPageSize).ok());
  } else {
    std::vector<uint64_t> bitmap;
    ASSERT_TRUE(dev->domain()->ReadAndClearDirty(*addr, 2 * kPageSize, kPageSize, 0, &bitmap).ok());
    ASSERT_EQ(bitmap.size(), 1u);
    EXPECT_EQ(bitmap[0], 0b11u);  // both pages written
    const uint64_t faults = dev->domain()->faults();
    // One page past the mapping, and a mapping the device may only read.
    absl::Status past = dev->DmaWrite(*addr, 3 * kPageSize);
    EXPECT_EQ(past.code(), absl::StatusCode::kNotFound) << past;
    EXPECT_THAT(std::string(past.message()), HasSubstr("DMA write by device eth0"));
    EXPECT_EQ(dev->DmaWrite(*ro, 16).code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(dev->domain()->faults(), faults + 2);
  }
  EXPECT_EQ(dev->violations().Total(), 0u);

  ASSERT_TRUE(dev->UnmapPage(*addr, 2 * kPageSize, kFrom).ok());
  ASSERT_TRUE(dev->UnmapPage(*ro, kPageSize, kTo).ok());
  ASSERT_TRUE(dev->Unbind().ok());
  EXPECT_EQ(dev->DmaWrite(*addr, 16).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dev->violations().Total(), 0u);  // not a DMA-API call: nothing counted after unbind
}

}  // namespace
}  // namespace pagepool::dma
