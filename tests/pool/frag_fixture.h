// File: tests/pool/frag_fixture.h
//
// The fixture the fragment tests share: one strict-mode Nic over 64 MiB, and a DMA-mapping pool of
// the test's destroy strategy (the parameter) with DMA_SYNC_DEV and max_len 2048.
#ifndef PAGEPOOL_TESTS_POOL_FRAG_FIXTURE_H_
#define PAGEPOOL_TESTS_POOL_FRAG_FIXTURE_H_

#include <memory>

#include "absl/status/status.h"
#include "dma/device.h"
#include "gtest/gtest.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/support/pool_fixtures.h"
#include "tests/support/test_env.h"

namespace pagepool::testing {

class FragPoolTest : public ::testing::TestWithParam<pool::DestroyStrategy>, public NicFixture {
 protected:
  void SetUp() override {
    const absl::Status s = CreateNic(64 * kMiB, 1, dma::IommuMode::kStrict);
    ASSERT_TRUE(s.ok()) << s;
  }
  std::shared_ptr<pool::PagePool> MakePool() {
    pool::PagePoolParams params;
    params.flags = pool::kPpFlagDmaMap | pool::kPpFlagDmaSyncDev;
    params.max_len = 2048;
    params.strategy = GetParam();
    return *nic_->CreatePool(params);
  }
};

}  // namespace pagepool::testing

#endif  // PAGEPOOL_TESTS_POOL_FRAG_FIXTURE_H_
