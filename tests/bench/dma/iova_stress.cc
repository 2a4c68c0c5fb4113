// iova_stress: the equivalent of soleen/iova_stress (seed 000). One live mapping of --dma-size
// bytes at a fresh 2 MiB stride: map, then unmap, across --space-tib TiB of IOVA space (pairs =
// space / 2 MiB). Without freeing, every pair leaves a leaf table behind (16 TiB -> 8 Mi tables =
// 32 GiB); with freeing, the tables go as soon as they empty.
//
// Usage: iova_stress [--space-tib N] [--dma-size BYTES] [--free-tables=on|off]
//                    [--mode=strict|lazy|passthrough]
// Prints exactly one JSON line:
//   {"space_tib":N,"dma_size":B,"free_tables":true,"mode":"strict","pairs":P,"seconds":S,
//    "ns_per_pair":X,"peak_table_bytes":B1,"final_table_bytes":B2}
// final_table_bytes is read after FlushQueues and Quiesce. In passthrough there is no page table;
// a pair is then one identity Translate (what dma_map costs there: nothing). Bad flags: exit 2.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "dma/iommu_domain.h"

namespace {

using pagepool::dma::DomainConfig;
using pagepool::dma::DomainStats;
using pagepool::dma::IommuDomain;
using pagepool::dma::IommuMode;

constexpr uint64_t kStride = uint64_t{2} << 20;
constexpr uint64_t kTiB = uint64_t{1} << 40;

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "iova_stress: %s\n"
               "usage: iova_stress [--space-tib N] [--dma-size BYTES] [--free-tables=on|off]\n"
               "                   [--mode=strict|lazy|passthrough]\n",
               why.c_str());
  std::exit(2);
}

struct Options {
  double space_tib = 16;
  uint64_t dma_size = 4096;
  bool free_tables = true;
  IommuMode mode = IommuMode::kStrict;
  std::string mode_name = "strict";
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg.resize(eq);
    } else if (arg == "--help" || arg == "-h") {
      Usage("help");
    } else {
      if (i + 1 >= argc) Usage("flag " + arg + " needs a value");
      value = argv[++i];
    }
    char* end = nullptr;
    if (arg == "--space-tib" || arg == "-s") {
      o.space_tib = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0' || !(o.space_tib > 0)) {
        Usage("--space-tib must be a positive number, got '" + value + "'");
      }
    } else if (arg == "--dma-size") {
      o.dma_size = std::strtoull(value.c_str(), &end, 10);
      if (end == value.c_str() || *end != '\0' || o.dma_size == 0 || o.dma_size % 4096 != 0 ||
          o.dma_size > kStride) {
        Usage("--dma-size must be a multiple of 4096 in (0, 2 MiB], got '" + value + "'");
      }
    } else if (arg == "--free-tables") {
      if (value == "on") {
        o.free_tables = true;
      } else if (value == "off") {
        o.free_tables = false;
      } else {
        Usage("--free-tables must be on or off, got '" + value + "'");
      }
    } else if (arg == "--mode") {
      if (value == "strict") {
        o.mode = IommuMode::kStrict;
      } else if (value == "lazy") {
        o.mode = IommuMode::kLazy;
      } else if (value == "passthrough") {
        o.mode = IommuMode::kPassthrough;
      } else {
        Usage("--mode must be strict, lazy or passthrough, got '" + value + "'");
      }
      o.mode_name = value;
    } else {
      Usage("unknown flag '" + arg + "'");
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  const uint64_t pairs = static_cast<uint64_t>(o.space_tib * static_cast<double>(kTiB)) / kStride;
  DomainConfig config;
  {
    // PAGEPOOL_BENCH_MODEL_IOTLB=1: the device's IOTLB and walk caches modelled (issue 11).
    const char* model = std::getenv("PAGEPOOL_BENCH_MODEL_IOTLB");
    config.model_iotlb = model != nullptr && model[0] == '1';
  }
  config.mode = o.mode;
  config.free_empty_tables = o.free_tables;
  config.address_width = 48;
  if (pairs == 0 || (pairs + 1) * kStride > (uint64_t{1} << config.address_width)) {
    Usage("--space-tib must give at least one pair and fit the 48-bit (256 TiB) space");
  }
  if (!o.free_tables && o.mode != IommuMode::kPassthrough) {
    // Without freeing, every pair leaves a 4 KiB leaf table behind: refuse runs that cannot fit.
    const double need = static_cast<double>(pairs) * 4160.0;
    const double have =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    if (have > 0 && need > 0.8 * have) {
      char why[160];
      std::snprintf(why, sizeof(why),
                    "--free-tables=off at %g TiB needs ~%.0f GiB of page tables, more than 80%% of "
                    "this machine's memory",
                    o.space_tib, need / (1u << 30));
      Usage(why);
    }
  }
  absl::StatusOr<std::unique_ptr<IommuDomain>> created = IommuDomain::Create(config);
  if (!created.ok()) {
    std::fprintf(stderr, "iova_stress: %s\n", created.status().ToString().c_str());
    return 1;
  }
  IommuDomain& d = **created;
  const uint64_t phys = uint64_t{1} << 32;
  const bool passthrough = o.mode == IommuMode::kPassthrough;

  const auto start = std::chrono::steady_clock::now();
  for (uint64_t i = 1; i <= pairs; ++i) {
    const uint64_t iova = i * kStride;
    if (passthrough) {
      if (!d.Translate(phys, true).ok()) return 1;
      continue;
    }
    absl::Status s =
        d.Map(iova, phys, o.dma_size, pagepool::dma::kProtRead | pagepool::dma::kProtWrite);
    if (s.ok()) s = d.Unmap(iova, o.dma_size);
    if (!s.ok()) {
      std::fprintf(stderr, "iova_stress: pair %llu: %s\n", static_cast<unsigned long long>(i),
                   s.ToString().c_str());
      return 1;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const uint64_t peak = d.stats().peak_table_bytes;
  d.FlushQueues();
  d.Quiesce();
  const DomainStats s = d.stats();
  std::printf(
      "{\"space_tib\":%g,\"dma_size\":%llu,\"free_tables\":%s,\"mode\":\"%s\",\"pairs\":%llu,"
      "\"seconds\":%.3f,\"ns_per_pair\":%.1f,\"peak_table_bytes\":%llu,"
      "\"final_table_bytes\":%llu}\n",
      o.space_tib, static_cast<unsigned long long>(o.dma_size), o.free_tables ? "true" : "false",
      o.mode_name.c_str(), static_cast<unsigned long long>(pairs), seconds,
      seconds * 1e9 / static_cast<double>(pairs), static_cast<unsigned long long>(peak),
      static_cast<unsigned long long>(s.table_bytes));
  std::fflush(stdout);
  // Skip the teardown of a possibly huge table (free-tables=off): the process exits anyway.
  std::_Exit(0);
}
