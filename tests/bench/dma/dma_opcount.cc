// dma_opcount: a fixed number of IommuDomain map or unmap calls, for counting instructions.
//
// dma_bench's timings move by tens of percent on a shared machine; instruction counts do not. This
// driver runs the same operations as dma_bench's BM_{Map,Unmap}{4K,256x4K} rows, with no timer and
// a fixed iteration count, so two builds execute the same sequence. Only the measured half goes
// through MeasuredOp (never inlined); the set-up half (mapping a window before unmapping it,
// unmapping it after mapping it) goes through SetUpOp. Count one with callgrind:
//
//   valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*MeasuredOp*'
//       dma_opcount unmap 1 1 16      (one command line)
//
// and divide the instructions of MeasuredOp (inclusive) by the calls it prints. It also prints the
// wall time per measured call (the clock is read once per window, outside the calls); under
// callgrind that figure means nothing.
//
// Arguments: map or unmap, pages per call (1 or 256), free_empty_tables (0/1), windows (each of
// 8192 pages, i.e. 16 leaf tables; the first window is a warm-up and is not measured). Strict
// mode; the environment variable PAGEPOOL_BENCH_MODEL_IOTLB=1 models the device's caches, as in
// dma_bench.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "dma/iommu_domain.h"

namespace {

using pagepool::dma::DomainConfig;
using pagepool::dma::IommuDomain;
using pagepool::dma::IommuMode;

constexpr uint64_t k4K = 4096;
constexpr uint64_t kWindowPages = 16 * 512;
constexpr uint32_t kRW = pagepool::dma::kProtRead | pagepool::dma::kProtWrite;
constexpr uint64_t kBase = uint64_t{1} << 40;
constexpr uint64_t kPhys = (uint64_t{1} << 34) + k4K;  // 4 KiB but not 2 MiB aligned

bool g_fail = false;

void Check(const absl::Status& s) {
  if (!s.ok() && !g_fail) {
    std::fprintf(stderr, "dma_opcount: %s\n", s.ToString().c_str());
    g_fail = true;
  }
}

// Two functions with the same body, so callgrind can collect inside one and not the other.
__attribute__((noinline)) void MeasuredOp(IommuDomain* d, bool map, uint64_t iova, uint64_t size) {
  Check(map ? d->Map(iova, kPhys + (iova - kBase), size, kRW) : d->Unmap(iova, size));
  asm volatile("" ::: "memory");
}

__attribute__((noinline)) void SetUpOp(IommuDomain* d, bool map, uint64_t iova, uint64_t size) {
  Check(map ? d->Map(iova, kPhys + (iova - kBase), size, kRW) : d->Unmap(iova, size));
  asm volatile("" ::: "memory");
}

int Usage() {
  std::fprintf(stderr,
               "usage: dma_opcount map|unmap PAGES_PER_CALL(1|256) FREE_TABLES(0|1) "
               "WINDOWS(>=2)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) return Usage();
  const bool map = std::strcmp(argv[1], "map") == 0;
  if (!map && std::strcmp(argv[1], "unmap") != 0) return Usage();
  const uint64_t pages = std::strtoull(argv[2], nullptr, 10);
  const long free_tables = std::strtol(argv[3], nullptr, 10);
  const long windows = std::strtol(argv[4], nullptr, 10);
  if ((pages != 1 && pages != 256) || (free_tables != 0 && free_tables != 1) || windows < 2 ||
      windows > 100000) {
    return Usage();
  }
  DomainConfig c;
  c.mode = IommuMode::kStrict;
  c.free_empty_tables = free_tables == 1;
  const char* model = std::getenv("PAGEPOOL_BENCH_MODEL_IOTLB");
  c.model_iotlb = model != nullptr && model[0] == '1';
  auto created = IommuDomain::Create(c);
  if (!created.ok()) {
    std::fprintf(stderr, "dma_opcount: %s\n", created.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<IommuDomain> d = std::move(created).value();
  const uint64_t run = pages * k4K;
  const uint64_t runs = kWindowPages / pages;
  uint64_t measured = 0;
  std::chrono::steady_clock::duration measured_time{};
  for (long w = 0; w < windows; ++w) {
    auto op = w == 0 ? SetUpOp : MeasuredOp;
    if (!map) SetUpOp(d.get(), true, kBase, runs * run);
    const auto start = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < runs; ++i) op(d.get(), map, kBase + i * run, run);
    const auto stop = std::chrono::steady_clock::now();
    if (map) SetUpOp(d.get(), false, kBase, runs * run);
    if (w != 0) {
      measured += runs;
      measured_time += stop - start;
    }
  }
  const double ns = std::chrono::duration<double, std::nano>(measured_time).count() /
                    static_cast<double>(measured);
  std::printf(
      "{\"op\":\"%s\",\"pages_per_call\":%llu,\"free_tables\":%ld,"
      "\"measured_calls\":%llu,\"ns_per_call\":%.1f}\n",
      map ? "map" : "unmap", static_cast<unsigned long long>(pages), free_tables,
      static_cast<unsigned long long>(measured), ns);
  return g_fail ? 1 : 0;
}
