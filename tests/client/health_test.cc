// client/health and `ppctl health` against an in-process pagepoold on 127.0.0.1:0: SERVING for
// the server as a whole, NOT_FOUND for a service the daemon does not know, and exit status 1 once
// the daemon is gone (what a container health check sees).
#include "client/health.h"

#include <sstream>
#include <string>
#include <vector>

#include "client/command_line.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"

namespace pagepool::client {
namespace {

using ::testing::HasSubstr;
using testing::InProcessDaemon;

class HealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = InProcessDaemon::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    d_ = std::move(*d);
  }

  // Runs `ppctl health ARGS... --target <the daemon>`.
  int Ppctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"ppctl", "health"});
    args.insert(args.end(), {"--target", d_->address()});
    std::vector<const char*> argv;
    for (const std::string& a : args) argv.push_back(a.c_str());
    out_.str("");
    err_.str("");
    const CommandLine cl = ParseCommandLine(static_cast<int>(argv.size()), argv.data(), out_, err_);
    if (cl.exit_status) return *cl.exit_status;
    return RunCommand(cl, out_, err_);
  }

  std::unique_ptr<InProcessDaemon> d_;
  std::ostringstream out_, err_;
};

TEST_F(HealthTest, ServerIsServing) {
  auto status = CheckHealth(d_->client());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(*status, ServingStatus::kServing);
}

TEST_F(HealthTest, UnknownServiceIsNotFound) {
  auto status = CheckHealth(d_->client(), "no.such.Service");
  EXPECT_EQ(status.status().code(), absl::StatusCode::kNotFound) << status.status();
}

TEST_F(HealthTest, PpctlHealthPrintsServingAndExits0) {
  EXPECT_EQ(Ppctl({}), kExitOk) << err_.str();
  EXPECT_EQ(out_.str(), "SERVING\n");
  EXPECT_EQ(Ppctl({"--json"}), kExitOk) << err_.str();
  EXPECT_EQ(out_.str(), "{\n  \"status\": \"SERVING\"\n}\n");
}

TEST_F(HealthTest, PpctlHealthExits1ForUnknownServiceAndWhenTheDaemonIsGone) {
  EXPECT_EQ(Ppctl({"--service", "no.such.Service"}), kExitRefused);
  EXPECT_THAT(err_.str(), HasSubstr("ppctl: NOT_FOUND"));
  d_->Stop();
  EXPECT_EQ(Ppctl({"--timeout-ms", "2000"}), kExitRefused);
  EXPECT_THAT(err_.str(), HasSubstr("ppctl: UNAVAILABLE"));
  EXPECT_EQ(out_.str(), "");
}

TEST(ServingStatusNameTest, NamesAsInHealthProto) {
  EXPECT_EQ(ServingStatusName(ServingStatus::kServing), "SERVING");
  EXPECT_EQ(ServingStatusName(ServingStatus::kNotServing), "NOT_SERVING");
  EXPECT_EQ(ServingStatusName(ServingStatus::kServiceUnknown), "SERVICE_UNKNOWN");
  EXPECT_EQ(ServingStatusName(ServingStatus::kUnknown), "UNKNOWN");
  EXPECT_EQ(ServingStatusName(static_cast<ServingStatus>(42)), "UNKNOWN");
}

}  // namespace
}  // namespace pagepool::client
