// File: tests/bench/pool/page_pool_bench.cc
//
// page_pool_bench: the kernel's bench_page_pool_simple (prototype-kernel
// lib/bench_page_pool_simple.c) over this model, for tracking none|xarray and DMA
// passthrough|strict|lazy:
//   fast_path   page_pool_alloc_pages + page_pool_recycle_direct (alloc cache only)
//   ptr_ring    page_pool_alloc_pages + page_pool_put_page(allow_direct=false): every allocation
//               refills from the ring
//   slow_path   page_pool_alloc_pages + release (unmap, untrack, free): a bulk of 64 from the page
//               allocator every 64 allocations
// and a bare-array baseline run alongside: the same push/pop on a {count, array[128]} cache behind
// out-of-line calls, i.e. the alloc cache's mechanics with nothing of the pool's logic.
// Each case runs --repeat times; the best run is reported, one JSON line per case:
//   {"test":"fast_path","tracking":"xarray","dma":"strict","loops":L,"ns_per_op":X}
//   {"test":"baseline_array","loops":L,"ns_per_op":X}
// The kernel's own figures for comparison are in DESIGN.md ("The anchors' figures"); this tree's
// are in BENCHMARKS.md with the command that made them.
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

namespace pagepool::pool {
namespace {

template <typename T>
inline void DoNotOptimize(T const& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

double NowNs() {
  return std::chrono::duration<double, std::nano>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The baseline: the alloc cache's push/pop with nothing else, behind calls like the pool's.
struct ArrayCache {
  uint32_t count = 0;
  PageRecord* cache[kPpAllocCacheSize];
};
[[gnu::noinline]] PageRecord* ArrayPop(ArrayCache* c) {
  return c->count > 0 ? c->cache[--c->count] : nullptr;
}
[[gnu::noinline]] bool ArrayPush(ArrayCache* c, PageRecord* p) {
  if (c->count == kPpAllocCacheSize) return false;
  c->cache[c->count++] = p;
  return true;
}

double RunBaseline(uint64_t loops) {
  std::vector<PageRecord> records(64);
  ArrayCache c;
  for (PageRecord& r : records) ArrayPush(&c, &r);
  const double start = NowNs();
  for (uint64_t i = 0; i < loops; ++i) {
    PageRecord* p = ArrayPop(&c);
    DoNotOptimize(p);
    ArrayPush(&c, p);
  }
  return (NowNs() - start) / double(loops);
}

struct Setup {
  std::shared_ptr<PhysMemory> memory;
  std::unique_ptr<Nic> nic;
  std::shared_ptr<PagePool> pool;
};

Setup MakeSetup(const std::string& tracking, const std::string& dma) {
  Setup s;
  s.memory = *testing::MakeSharedMemory(256 * testing::kMiB);
  const dma::IommuMode mode =
      testing::IommuModeFromName(dma).value_or(dma::IommuMode::kPassthrough);
  s.nic = std::move(*Nic::Create(s.memory, testing::MakeNicConfig("bench", mode)));
  PagePoolParams params;
  params.flags = kPpFlagDmaMap;
  params.strategy = tracking == "xarray" ? DestroyStrategy::kXarray : DestroyStrategy::kNone;
  s.pool = *s.nic->CreatePool(params);
  return s;
}

double RunCase(const std::string& test, PagePool* pool, uint64_t loops) {
  // Warm up: the first slow path, the ring, the page tables.
  for (int i = 0; i < 1000; ++i) {
    PageRecord* p = pool->AllocPage();
    if (p == nullptr) std::abort();
    if (test == "slow_path") {
      pool->ReleasePage(p);
    } else {
      pool->PutFullPage(p, test == "fast_path");
    }
  }
  const double start = NowNs();
  if (test == "fast_path") {
    for (uint64_t i = 0; i < loops; ++i) {
      PageRecord* p = pool->AllocPage();
      DoNotOptimize(p);
      pool->PutFullPage(p, /*allow_direct=*/true);
    }
  } else if (test == "ptr_ring") {
    for (uint64_t i = 0; i < loops; ++i) {
      PageRecord* p = pool->AllocPage();
      DoNotOptimize(p);
      pool->PutFullPage(p, /*allow_direct=*/false);
    }
  } else {
    for (uint64_t i = 0; i < loops; ++i) {
      PageRecord* p = pool->AllocPage();
      DoNotOptimize(p);
      pool->ReleasePage(p);
    }
  }
  return (NowNs() - start) / double(loops);
}

}  // namespace
}  // namespace pagepool::pool

int main(int argc, char** argv) {
  using namespace pagepool::pool;
  CLI::App app{"page_pool_bench: bench_page_pool_simple over the pagepoold model"};
  uint64_t fast_loops = 20'000'000, ring_loops = 5'000'000, slow_loops = 1'000'000;
  int repeat = 3;
  std::vector<std::string> tests = {"fast_path", "ptr_ring", "slow_path"};
  std::vector<std::string> dmas = {"passthrough", "strict", "lazy"};
  std::vector<std::string> trackings = {"none", "xarray"};
  app.add_option("--fast-loops", fast_loops, "loops of the fast_path case");
  app.add_option("--ring-loops", ring_loops, "loops of the ptr_ring case");
  app.add_option("--slow-loops", slow_loops, "loops of the slow_path case");
  app.add_option("--repeat", repeat, "runs per case; the best is reported")
      ->check(CLI::Range(1, 100));
  app.add_option("--test", tests, "fast_path, ptr_ring, slow_path");
  app.add_option("--dma", dmas, "passthrough, strict, lazy");
  app.add_option("--tracking", trackings, "none, xarray");
  CLI11_PARSE(app, argc, argv);

  auto emit_baseline = [&](uint64_t loops) {
    double best = 1e300;
    for (int r = 0; r < repeat; ++r) best = std::min(best, RunBaseline(loops));
    std::printf("{\"test\":\"baseline_array\",\"loops\":%llu,\"ns_per_op\":%.3f}\n",
                (unsigned long long)loops, best);
    std::fflush(stdout);
  };
  emit_baseline(fast_loops);
  for (const std::string& test : tests) {
    const uint64_t loops = test == "fast_path"  ? fast_loops
                           : test == "ptr_ring" ? ring_loops
                                                : slow_loops;
    for (const std::string& dma : dmas) {
      // Interleave the trackings run by run, so drift on a shared machine hits both alike.
      std::vector<Setup> setups;
      for (const std::string& tracking : trackings) setups.push_back(MakeSetup(tracking, dma));
      std::vector<double> best(trackings.size(), 1e300);
      for (int r = 0; r < repeat; ++r) {
        for (size_t t = 0; t < trackings.size(); ++t) {
          best[t] = std::min(best[t], RunCase(test, setups[t].pool.get(), loops));
        }
      }
      for (size_t t = 0; t < trackings.size(); ++t) {
        std::printf(
            "{\"test\":\"%s\",\"tracking\":\"%s\",\"dma\":\"%s\",\"loops\":%llu,"
            "\"ns_per_op\":%.3f}\n",
            test.c_str(), trackings[t].c_str(), dma.c_str(), (unsigned long long)loops, best[t]);
        std::fflush(stdout);
      }
      for (Setup& s : setups) (void)s.nic->Unbind();
    }
  }
  emit_baseline(fast_loops);
  return 0;
}
