// File: tests/dma/dma_test_util.h
//
// Shared by the dma/ tests: size and protection shorthands, the DMA directions by short names, and
// the iteration counts of the randomised and stress tests (smaller under the sanitizers, which run
// several times slower; an environment variable raises or lowers them for a run). Brings in
// tests/support/test_env.h, whose environment drains RCU callbacks at exit: these tests free page
// tables through RCU.
#ifndef PAGEPOOL_TESTS_DMA_DMA_TEST_UTIL_H_
#define PAGEPOOL_TESTS_DMA_DMA_TEST_UTIL_H_

#include <cstdint>

#include "dma/types.h"
#include "tests/support/test_env.h"

namespace pagepool::dma {

inline constexpr uint64_t k4K = kPageSize;
inline constexpr uint64_t k2M = kSize2M;
inline constexpr uint64_t k1G = kSize1G;
inline constexpr uint32_t kRW = kProtRead | kProtWrite;

inline constexpr DmaDirection kBi = DmaDirection::kBidirectional;
inline constexpr DmaDirection kTo = DmaDirection::kToDevice;
inline constexpr DmaDirection kFrom = DmaDirection::kFromDevice;

// The integer in environment variable `env` if set, else the count for this build: `release`,
// `asan` (PAGEPOOL_ASAN) or `tsan` (PAGEPOOL_TSAN).
inline uint64_t ScaledCount(const char* env, [[maybe_unused]] uint64_t release,
                            [[maybe_unused]] uint64_t asan, [[maybe_unused]] uint64_t tsan) {
#if defined(PAGEPOOL_TSAN)
  const uint64_t count = tsan;
#elif defined(PAGEPOOL_ASAN)
  const uint64_t count = asan;
#else
  const uint64_t count = release;
#endif
  return static_cast<uint64_t>(testing::EnvOr(env, static_cast<long>(count)));
}

}  // namespace pagepool::dma

#endif  // PAGEPOOL_TESTS_DMA_DMA_TEST_UTIL_H_
