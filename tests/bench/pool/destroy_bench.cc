// File: tests/bench/pool/destroy_bench.cc
//
// destroy_bench: the cost of page_pool_destroy with N pages in flight, per strategy and memory
// size. A pool DMA-maps --inflight pages (held by the "stack"), then Destroy() runs and is timed;
// the held pages are returned afterwards (untimed) and the run checks that no violation was
// counted. One JSON line:
//   {"strategy":"xarray","memory_gib":G,"inflight":N,"unmapped":U,"seconds":S,"index_bytes":B,...}
// XARRAY cost grows with pages in flight (an index walk), SCAN with memory size (a walk of the
// frame records up to the last page in flight, as RFC v4 stops once inflight == unmapped), NONE
// unmaps nothing. Every strategy unmaps one page per Device::UnmapPage call. "seconds" is the whole
// Destroy() (DMA-API unmaps and grace periods included); "walk_seconds" times the strategy's
// search alone (the same walk, read-only, stopping where the destroy's stops); "grace_periods" is
// how many RCU grace periods the destroy waited for.
// --placement spread (default) puts the pages in flight in max-order blocks spread evenly over
// the whole memory, as pages end up on a host that has run a while, so a scan that stops at the
// last page in flight still walks about all of memory; --placement low packs them at the bottom
// (a fresh host), where such a scan stops early.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "dma/device.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/support/pool_fixtures.h"

int main(int argc, char** argv) {
  using namespace pagepool;
  using namespace pagepool::pool;
  CLI::App app{"destroy_bench: page_pool_destroy cost with pages in flight"};
  uint64_t inflight = 131072;
  double memory_gib = 4;
  std::string strategy = "xarray";
  std::string dma_mode = "passthrough";
  int repeat = 1;
  std::string placement = "spread";
  app.add_option("--inflight", inflight, "pages held across the destroy");
  app.add_option("--memory-gib", memory_gib, "simulated memory size in GiB");
  app.add_option("--strategy", strategy, "xarray, scan or none")
      ->check(CLI::IsMember({"xarray", "scan", "none"}));
  app.add_option("--dma", dma_mode, "passthrough, strict or lazy")
      ->check(CLI::IsMember({"passthrough", "strict", "lazy"}));
  app.add_option("--repeat", repeat, "runs; one JSON line each")->check(CLI::Range(1, 100));
  app.add_option("--placement", placement, "spread or low: where the pages in flight sit")
      ->check(CLI::IsMember({"spread", "low"}));
  CLI11_PARSE(app, argc, argv);

  absl::StatusOr<std::shared_ptr<PhysMemory>> mem =
      testing::MakeSharedMemory(uint64_t(memory_gib * double(testing::kGiB)));
  if (!mem.ok()) {
    std::fprintf(stderr, "%s\n", mem.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<PhysMemory> memory = std::move(*mem);
  // Both names are checked by CLI11 above.
  const dma::IommuMode mode = *testing::IommuModeFromName(dma_mode);
  for (int run = 0; run < repeat; ++run) {
    std::unique_ptr<Nic> nic = std::move(*Nic::Create(
        memory, testing::MakeNicConfig("bench", mode, nullptr, [](std::string_view) {})));
    PagePoolParams params;
    params.flags = kPpFlagDmaMap;
    params.strategy = *testing::DestroyStrategyFromName(strategy);
    std::shared_ptr<PagePool> pool = *nic->CreatePool(params);
    // spread: take every max-order block, give back an evenly spaced few (enough for the pages
    // in flight and their bulk refills) for the pool to allocate from, then the rest.
    std::vector<FrameNumber> ballast;
    if (placement == "spread") {
      while (true) {
        absl::StatusOr<FrameNumber> b = memory->AllocPages(PhysMemory::kMaxOrder);
        if (!b.ok()) break;
        ballast.push_back(*b);
      }
      const uint64_t block_frames = uint64_t{1} << PhysMemory::kMaxOrder;
      const uint64_t needed = (inflight + 2 * kPpAllocCacheRefill) / block_frames + 1;
      const uint64_t stride = std::max<uint64_t>(1, ballast.size() / needed);
      std::vector<FrameNumber> kept;
      for (size_t i = 0; i < ballast.size(); ++i) {
        if ((ballast.size() - 1 - i) % stride == 0 && kept.size() < ballast.size() &&
            (ballast.size() - 1 - i) / stride < needed) {
          (void)memory->FreePages(ballast[i], PhysMemory::kMaxOrder);
        } else {
          kept.push_back(ballast[i]);
        }
      }
      ballast.swap(kept);
    }
    std::vector<PoolPage> pages;
    if (absl::Status s = pool->AllocateBulk(inflight, &pages); !s.ok()) {
      std::fprintf(stderr, "allocate: %s\n", s.ToString().c_str());
      return 1;
    }
    for (FrameNumber b : ballast) (void)memory->FreePages(b, PhysMemory::kMaxOrder);
    const uint64_t index_bytes = pool->index() ? pool->index()->memory_bytes() : 0;
    // The strategy's own search cost, without the DMA-API unmaps: the same walk, read-only. XARRAY
    // walks before the destroy (which empties the index); SCAN after it, so that the destroy's
    // own scan is the first to touch never-used frame records (held pages keep the pool's id
    // until they are returned).
    uint64_t found = 0;
    double walk_seconds = 0;
    auto walk = [&] {
      const auto start = std::chrono::steady_clock::now();
      if (params.strategy == DestroyStrategy::kXarray) {
        pool->index()->ForEach([&](uint32_t, PageRecord*) {
          ++found;
          return true;
        });
      } else {
        const uint64_t id = pool->id();
        memory->ScanAllFramesUntil([&](FrameNumber, PageRecord& rec) {
          if (rec.IsPagePool() &&
              PageRecord::OwnerOf(rec.owner_gen.load(std::memory_order_relaxed)) == id) {
            ++found;
          }
          return found < inflight;
        });
      }
      walk_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    if (params.strategy == DestroyStrategy::kXarray) walk();
    absl::StatusOr<DestroyResult> d = nic->DestroyPool(pool->id());
    if (!d.ok()) {
      std::fprintf(stderr, "destroy: %s\n", d.status().ToString().c_str());
      return 1;
    }
    if (params.strategy == DestroyStrategy::kScan) walk();
    for (const PoolPage& p : pages) (void)pool->Return(p.handle);
    (void)nic->Unbind();
    const uint64_t violations = nic->device().violations().Total();
    std::printf(
        "{\"strategy\":\"%s\",\"memory_gib\":%g,\"inflight\":%lld,\"unmapped\":%llu,"
        "\"seconds\":%.6f,\"index_bytes\":%llu,\"bytes_per_page\":%.2f,\"frames_scanned\":%llu,"
        "\"walk_seconds\":%.6f,\"walk_found\":%llu,\"grace_periods\":%u,\"placement\":\"%s\","
        "\"dma\":\"%s\","
        "\"violations\":%llu}\n",
        strategy.c_str(), memory_gib, (long long)d->inflight_at_destroy,
        (unsigned long long)d->pages_unmapped, double(d->duration_ns) / 1e9,
        (unsigned long long)index_bytes, inflight ? double(index_bytes) / double(inflight) : 0.0,
        (unsigned long long)d->frames_scanned, walk_seconds, (unsigned long long)found,
        d->grace_periods, placement.c_str(), dma_mode.c_str(), (unsigned long long)violations);
    std::fflush(stdout);
  }
  return 0;
}
