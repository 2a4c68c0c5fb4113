// dma_bench: per-operation cost of the I/O page table (Google Benchmark).
//
//   BM_Map4K / BM_Unmap4K          one 4 KiB page per iteration, consecutive IOVAs
//   BM_Map256x4K / BM_Unmap256x4K  one call covering 256 4 KiB leaves (phys not 2 MiB aligned)
//   BM_Translate                   lockless device translation of a mapped page
// Arguments: free_empty_tables (0/1), mode (0 strict, 1 lazy). Environment:
// PAGEPOOL_BENCH_MODEL_IOTLB=1 models the device's IOTLB and walk caches (every unmap then also
// invalidates them; strict unmaps issue their invalidation as a gather sync would). Map/unmap 4K
// also run on 1 and 2 threads (each thread in its own 1 GiB, sharing the upper tables).
// *_RwlockReader rows wrap each op in a per-domain std::shared_mutex read lock (seed 000's design,
// reader side only) for comparison.
//
// Timed loops only contain the measured operation; the set-up of the other half (mapping a window
// before unmapping it, unmapping a window after mapping it) is done with the timer paused, once
// per window of kWindow operations, and every table that empties on the way is freed (freeing on)
// inside the timed unmaps, like the anchors' "generic pt" figures plus freeing. With freeing off
// the tables stay from one window to the next, so those rows are the page table's cost alone.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <shared_mutex>
#include <tuple>

#include "absl/status/status.h"
#include "base/mutex.h"
#include "benchmark/benchmark.h"
#include "dma/iommu_domain.h"

namespace {

using pagepool::dma::DomainConfig;
using pagepool::dma::IommuDomain;
using pagepool::dma::IommuMode;

constexpr uint64_t k4K = 4096;
constexpr uint64_t k2M = uint64_t{2} << 20;
constexpr uint64_t k1G = uint64_t{1} << 30;
constexpr uint64_t kWindowPages = 16 * 512;  // 32 MiB of IOVA per window: 16 leaf tables
constexpr uint32_t kRW = pagepool::dma::kProtRead | pagepool::dma::kProtWrite;
constexpr uint64_t kPhys = (uint64_t{1} << 34) + k4K;  // 4 KiB but not 2 MiB aligned

// One domain per (free, mode), shared by the threads of a run and reused across runs.
IommuDomain* DomainFor(const benchmark::State& state) {
  static pagepool::base::Mutex mu;
  static std::map<std::tuple<int64_t, int64_t>, std::unique_ptr<IommuDomain>> domains;
  pagepool::base::MutexLock l(&mu);
  auto& d = domains[{state.range(0), state.range(1)}];
  if (!d) {
    DomainConfig c;
    c.free_empty_tables = state.range(0) != 0;
    c.mode = state.range(1) == 0 ? IommuMode::kStrict : IommuMode::kLazy;
    // PAGEPOOL_BENCH_MODEL_IOTLB=1: the device's IOTLB and walk caches modelled (issue 11).
    const char* model = std::getenv("PAGEPOOL_BENCH_MODEL_IOTLB");
    c.model_iotlb = model != nullptr && model[0] == '1';
    d = std::move(IommuDomain::Create(c)).value();
  }
  return d.get();
}

void Label(benchmark::State& state) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  state.SetLabel(std::string(state.range(0) ? "free=on" : "free=off") +
                 (state.range(1) ? " lazy" : " strict"));
}

uint64_t ThreadBase(const benchmark::State& state) {
  return (uint64_t{1} << 40) + static_cast<uint64_t>(state.thread_index()) * k1G;
}

void Check(const absl::Status& s, benchmark::State& state) {
  if (!s.ok()) state.SkipWithError(s.ToString().c_str());
}

// Each timed operation runs inside `around` (NoLock, or the rwlock reader below).
struct NoLock {
  template <typename Op>
  void operator()(Op op) const {
    op();
  }
};

// Unmaps runs [0, n) of a window, one run per call, as they were mapped. (One call over the whole
// window would cover whole 2 MiB blocks and free their leaf tables even with freeing off, live-free
// case 3, and the next window's timed maps would then allocate tables: with freeing off the map
// rows measure the page table alone, as the anchors do.)
template <uint64_t kPages>
void UnmapWindow(IommuDomain* d, uint64_t base, uint64_t n, benchmark::State& state) {
  constexpr uint64_t kRun = kPages * k4K;
  for (uint64_t r = 0; r < n; ++r) Check(d->Unmap(base + r * kRun, kRun), state);
}

// Maps kPages 4 KiB pages per iteration, run after run through a window of kWindowPages; the
// window is unmapped with the timer paused.
template <uint64_t kPages, typename Around>
void MapRuns(benchmark::State& state, Around around) {
  IommuDomain* d = DomainFor(state);
  const uint64_t base = ThreadBase(state);
  constexpr uint64_t kRun = kPages * k4K;
  constexpr uint64_t kRuns = kWindowPages / kPages;
  uint64_t i = 0;
  for (auto _ : state) {
    around([&] { Check(d->Map(base + i * kRun, kPhys + i * kRun, kRun, kRW), state); });
    if (++i == kRuns) {
      state.PauseTiming();
      UnmapWindow<kPages>(d, base, kRuns, state);
      i = 0;
      state.ResumeTiming();
    }
  }
  UnmapWindow<kPages>(d, base, i, state);
  Label(state);
}

// Unmaps kPages 4 KiB pages per iteration, run after run through a window of kWindowPages; the
// window is mapped with the timer paused.
template <uint64_t kPages, typename Around>
void UnmapRuns(benchmark::State& state, Around around) {
  IommuDomain* d = DomainFor(state);
  const uint64_t base = ThreadBase(state);
  constexpr uint64_t kRun = kPages * k4K;
  constexpr uint64_t kRuns = kWindowPages / kPages;
  uint64_t i = kRuns;
  for (auto _ : state) {
    if (i == kRuns) {
      state.PauseTiming();
      Check(d->Map(base, kPhys, kRuns * kRun, kRW), state);
      i = 0;
      state.ResumeTiming();
    }
    around([&] { Check(d->Unmap(base + i * kRun, kRun), state); });
    ++i;
  }
  if (i != kRuns) Check(d->Unmap(base + i * kRun, (kRuns - i) * kRun), state);
  Label(state);
}

void BM_Map4K(benchmark::State& state) { MapRuns<1>(state, NoLock()); }
void BM_Unmap4K(benchmark::State& state) { UnmapRuns<1>(state, NoLock()); }
void BM_Map256x4K(benchmark::State& state) { MapRuns<256>(state, NoLock()); }
void BM_Unmap256x4K(benchmark::State& state) { UnmapRuns<256>(state, NoLock()); }

void BM_Translate(benchmark::State& state) {
  IommuDomain* d = DomainFor(state);
  const uint64_t base = ThreadBase(state);
  Check(d->Map(base, kPhys, kWindowPages * k4K, kRW), state);
  uint64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(d->Translate(base + (i * 97 % kWindowPages) * k4K, false));
    ++i;
  }
  Check(d->Unmap(base, kWindowPages * k4K), state);
  Label(state);
}

// Seed 000's alternative, for comparison: one per-domain rwlock taken as a reader around every map
// and unmap (its writer side, taken only while freeing, is not modelled: this row is a lower bound
// on that design's cost). Shows the shared reader-count line bouncing between two threads.
std::shared_mutex g_domain_rwlock;

struct RwlockReader {
  template <typename Op>
  void operator()(Op op) const {
    std::shared_lock<std::shared_mutex> l(g_domain_rwlock);
    op();
  }
};

void BM_Map4K_RwlockReader(benchmark::State& state) { MapRuns<1>(state, RwlockReader()); }
void BM_Unmap4K_RwlockReader(benchmark::State& state) { UnmapRuns<1>(state, RwlockReader()); }

void Modes(benchmark::internal::Benchmark* b) {
  for (int64_t mode : {0, 1}) {
    for (int64_t free_tables : {1, 0}) b->Args({free_tables, mode});
  }
  b->ArgNames({"free", "lazy"});
}

BENCHMARK(BM_Map4K)->Apply(Modes)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_Unmap4K)->Apply(Modes)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_Map256x4K)->Apply(Modes);
BENCHMARK(BM_Unmap256x4K)->Apply(Modes);
BENCHMARK(BM_Translate)->Apply(Modes);
BENCHMARK(BM_Map4K_RwlockReader)
    ->Args({1, 0})
    ->ArgNames({"free", "lazy"})
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();
BENCHMARK(BM_Unmap4K_RwlockReader)
    ->Args({1, 0})
    ->ArgNames({"free", "lazy"})
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
