// File: tests/support/daemon_fixture.h
//
// DaemonTest: a gtest fixture over an InProcessDaemon with the calls that the service, fault and
// feature tests all make (start the daemon, a device, a pool, pages allocated). A test that needs
// other settings builds the request and passes it to the overload that takes one.
//
// Thread safety: one test thread drives it (the daemon runs on threads of its own).
#ifndef PAGEPOOL_TESTS_SUPPORT_DAEMON_FIXTURE_H_
#define PAGEPOOL_TESTS_SUPPORT_DAEMON_FIXTURE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "pagepool/v1/pagepool.pb.h"
#include "tests/support/daemon_harness.h"

namespace pagepool::testing {

class DaemonTest : public ::testing::Test {
 protected:
  void StartDaemon(server::DaemonOptions o = InProcessDaemon::DefaultOptions()) {
    auto d = InProcessDaemon::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    d_ = std::move(*d);
  }
  client::Client& c() { return d_->client(); }

  // The new device's id (0, with a test failure, if it was refused).
  uint64_t NewDevice(const v1::CreateDeviceRequest& req) {
    auto r = c().CreateDevice(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->device().id() : 0;
  }
  uint64_t NewDevice(v1::IommuMode mode = v1::IOMMU_MODE_STRICT) {
    v1::CreateDeviceRequest req;
    req.set_iommu_mode(mode);
    return NewDevice(req);
  }
  // The new pool's id (0, with a test failure, if it was refused).
  uint64_t NewPool(const v1::CreatePoolRequest& req) {
    auto r = c().CreatePool(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->pool().id() : 0;
  }
  uint64_t NewPool(uint64_t device, v1::Strategy s = v1::STRATEGY_XARRAY) {
    v1::CreatePoolRequest req;
    req.set_device_id(device);
    req.set_strategy(s);
    return NewPool(req);
  }
  // The handles of `n` whole pages allocated on `pool` (none, with a test failure, if refused).
  std::vector<v1::PageHandle> Alloc(uint64_t pool, uint32_t n) {
    auto r = c().Allocate(pool, n);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<v1::PageHandle> out;
    if (r.ok()) {
      for (const auto& p : r->pages()) out.push_back(p.handle());
    }
    return out;
  }

  std::unique_ptr<InProcessDaemon> d_;
};

}  // namespace pagepool::testing

#endif  // PAGEPOOL_TESTS_SUPPORT_DAEMON_FIXTURE_H_
