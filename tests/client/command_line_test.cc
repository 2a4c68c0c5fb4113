// client/command_line: ppctl's command line, parsed without a daemon. The global options before
// or after every subcommand, each subcommand's arguments landing in its fields, bad command lines
// exiting 2 (ids that are not 64-bit numbers, unknown options, missing values), and the argument
// checks of client/commands that run before any call (exit 2, nothing sent).
#include "client/command_line.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pagepool::client {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// The smallest valid arguments of each subcommand.
const std::map<std::string, std::vector<std::string>>& MinimalArgs() {
  static const auto* args = new std::map<std::string, std::vector<std::string>>{
      {"create-device", {}},
      {"get-device", {"1"}},
      {"list-devices", {}},
      {"unbind-device", {"1"}},
      {"delete-device", {"1"}},
      {"create-pool", {"1"}},
      {"get-pool", {"1"}},
      {"list-pools", {}},
      {"destroy-pool", {"1"}},
      {"allocate", {"1"}},
      {"recycle", {"1", "2:3"}},
      {"return", {"1", "2:3"}},
      {"list-inflight", {"1"}},
      {"ref-frag", {"1", "2:3@0/64"}},
      {"get-domain", {"1"}},
      {"dump-page-table", {"1"}},
      {"watch-events", {}},
      {"traffic", {"steady"}},
      {"health", {}},
      {"report", {"r.json", "-o", "r.html"}},
      {"compare", {}},
  };
  return *args;
}

class CommandLineTest : public ::testing::Test {
 protected:
  void SetUp() override { unsetenv("PPCTL_TARGET"); }

  // Parses `ppctl ARGS...`, keeping what it printed.
  CommandLine Parse(std::vector<std::string> args) {
    args.insert(args.begin(), "ppctl");
    std::vector<const char*> argv;
    for (const std::string& a : args) argv.push_back(a.c_str());
    out_.str("");
    err_.str("");
    return ParseCommandLine(static_cast<int>(argv.size()), argv.data(), out_, err_);
  }

  // Parses and, when that succeeds, runs it (with no daemon: only checks before any call).
  int ParseAndRun(const std::vector<std::string>& args) {
    const CommandLine cl = Parse(args);
    if (cl.exit_status) return *cl.exit_status;
    return RunCommand(cl, out_, err_);
  }

  std::ostringstream out_, err_;
};

TEST_F(CommandLineTest, EverySubcommandHasMinimalArgsHere) {
  std::vector<std::string> names;
  for (const auto& [name, args] : MinimalArgs()) names.push_back(name);
  EXPECT_THAT(SubcommandNames(), ::testing::UnorderedElementsAreArray(names));
}

TEST_F(CommandLineTest, DefaultsWithoutGlobalOptions) {
  const CommandLine cl = Parse({"list-devices"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.subcommand, "list-devices");
  EXPECT_EQ(cl.globals.target, "127.0.0.1:50051");
  EXPECT_FALSE(cl.globals.json);
  EXPECT_EQ(cl.globals.timeout_ms, 10000);
  EXPECT_EQ(cl.globals.tls_ca, "");
}

// Every subcommand with its minimal arguments, and the global options before or after it.
TEST_F(CommandLineTest, GlobalOptionsBeforeOrAfterEverySubcommand) {
  const std::vector<std::string> globals = {"--target", "h:1",       "--json", "--timeout-ms",
                                            "5",        "--tls-ca",  "ca.pem", "--tls-cert",
                                            "c.pem",    "--tls-key", "c.key",  "--auth-token-file",
                                            "token"};
  for (bool after : {false, true}) {
    for (const auto& [name, args] : MinimalArgs()) {
      SCOPED_TRACE(name + (after ? ": global options after it" : ": global options before it"));
      std::vector<std::string> argv = {name};
      argv.insert(argv.end(), args.begin(), args.end());
      argv.insert(after ? argv.end() : argv.begin(), globals.begin(), globals.end());
      const CommandLine cl = Parse(argv);
      ASSERT_FALSE(cl.exit_status) << err_.str();
      EXPECT_EQ(cl.subcommand, name);
      EXPECT_EQ(cl.globals.target, "h:1");
      EXPECT_TRUE(cl.globals.json);
      EXPECT_EQ(cl.globals.timeout_ms, 5);
      EXPECT_EQ(cl.globals.tls_ca, "ca.pem");
      EXPECT_EQ(cl.globals.tls_cert, "c.pem");
      EXPECT_EQ(cl.globals.tls_key, "c.key");
      EXPECT_EQ(cl.globals.auth_token_file, "token");
    }
  }
}

TEST_F(CommandLineTest, GlobalOptionsBetweenArguments) {
  // The load-test form: `ppctl traffic steady --target HOST:PORT`, and the options in between.
  CommandLine cl = Parse({"traffic", "steady", "--target", "10.0.0.1:50051", "--duration", "3"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.globals.target, "10.0.0.1:50051");
  EXPECT_EQ(cl.args.traffic.options.pattern, "steady");
  EXPECT_EQ(cl.args.traffic.options.duration_s, 3);

  cl = Parse({"traffic", "--target=h:3", "hold", "--json", "--hold", "0.5"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.globals.target, "h:3");
  EXPECT_TRUE(cl.globals.json);
  EXPECT_EQ(cl.args.traffic.options.pattern, "hold");
  EXPECT_EQ(cl.args.traffic.options.hold_s, 0.5);

  cl = Parse({"return", "4", "1:1", "--target", "h:4", "2:1"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.globals.target, "h:4");
  EXPECT_THAT(cl.args.pages.handles, ::testing::ElementsAre("1:1", "2:1"));
}

TEST_F(CommandLineTest, TargetFromEnvironmentUnlessGiven) {
  setenv("PPCTL_TARGET", "env:1", 1);
  EXPECT_EQ(Parse({"health"}).globals.target, "env:1");
  EXPECT_EQ(Parse({"health", "--target", "cli:2"}).globals.target, "cli:2");
  EXPECT_EQ(Parse({"--target", "cli:3", "health"}).globals.target, "cli:3");
  unsetenv("PPCTL_TARGET");
}

TEST_F(CommandLineTest, ArgumentsLandInTheirSubcommandsFields) {
  CommandLine cl = Parse({"create-pool", "3", "--strategy", "scan", "--napi-id", "4",
                          "--dma-sync-dev", "--max-len", "1500", "--order", "2"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.args.create_pool.device_id, 3u);
  EXPECT_EQ(cl.args.create_pool.strategy, "scan");
  EXPECT_EQ(cl.args.create_pool.napi_id, 4u);
  EXPECT_TRUE(cl.args.create_pool.dma_sync_dev);
  EXPECT_EQ(cl.args.create_pool.max_len, 1500u);
  EXPECT_EQ(cl.args.create_pool.order, 2u);

  cl = Parse({"recycle", "9", "1:2", "3:4", "--napi-local"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.args.pages.pool_id, 9u);
  EXPECT_THAT(cl.args.pages.handles, ::testing::ElementsAre("1:2", "3:4"));
  EXPECT_TRUE(cl.args.pages.napi_local);

  // Fragments: allocate --frag-size, fragment handles among page handles, traffic --frag-size.
  cl = Parse({"allocate", "2", "--count", "3", "--frag-size", "1500"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.args.allocate.pool_id, 2u);
  EXPECT_EQ(cl.args.allocate.count, 3u);
  EXPECT_EQ(cl.args.allocate.frag_size, 1500u);
  EXPECT_EQ(Parse({"allocate", "2"}).args.allocate.frag_size, 0u);
  cl = Parse({"return", "2", "64:1@0/1536", "63:1"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_THAT(cl.args.pages.handles, ::testing::ElementsAre("64:1@0/1536", "63:1"));
  cl = Parse({"traffic", "steady", "--frag-size", "256"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.args.traffic.options.frag_size, 256u);
  EXPECT_EQ(Parse({"traffic", "steady"}).args.traffic.options.frag_size, 0u);

  cl = Parse({"get-device", "18446744073709551615"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.args.id, UINT64_MAX);

  cl = Parse({"traffic", "destroy-under-traffic", "--streams", "4", "--batch", "32", "--unbind",
              "--strategy", "none", "--iommu-mode", "lazy", "--no-napi-local", "--out", "r.json",
              "--html", "r.html", "--pool-id", "12"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  const TrafficArgs& t = cl.args.traffic;
  EXPECT_EQ(t.options.streams, 4u);
  EXPECT_EQ(t.options.batch, 32u);
  EXPECT_TRUE(t.options.unbind);
  EXPECT_EQ(t.options.pool_id, 12u);
  EXPECT_EQ(t.strategy, "none");
  EXPECT_EQ(t.iommu_mode, "lazy");
  EXPECT_TRUE(t.no_napi_local);
  EXPECT_EQ(t.out_path, "r.json");
  EXPECT_EQ(t.html_path, "r.html");

  cl = Parse({"traffic", "steady", "--window", "16"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.args.traffic.options.window, 16u);
  EXPECT_EQ(Parse({"traffic", "steady"}).args.traffic.options.window, 1u);

  cl = Parse({"report", "a.json", "b.json", "-o", "r.html", "--title", "XARRAY vs SCAN"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_THAT(cl.args.report.inputs, ::testing::ElementsAre("a.json", "b.json"));
  EXPECT_EQ(cl.args.report.out_path, "r.html");
  EXPECT_EQ(cl.args.report.title, "XARRAY vs SCAN");

  cl = Parse({"health", "--service", "pagepool.v1.PagePoolService"});
  ASSERT_FALSE(cl.exit_status) << err_.str();
  EXPECT_EQ(cl.args.health.service, "pagepool.v1.PagePoolService");
}

TEST_F(CommandLineTest, BadCommandLinesExit2WithAMessage) {
  const std::vector<std::vector<std::string>> bad = {
      {"get-device", "abc"},
      {"allocate", "1", "--count", "-5"},
      {"allocate", "1", "--frag-size", "x"},
      {"traffic", "steady", "--frag-size", "-1"},
      {"get-device"},
      {"no-such-subcommand"},
      {},
      {"get-device", "-1"},
      {"get-device", "18446744073709551616"},
      {"dump-page-table", "1", "--start", "-4096"},
      {"list-pools", "--device", "-2"},
      {"get-device", "1", "2"},
      {"get-device", "1", "--no-such-option"},
      {"traffic", "steady", "--target"},
      {"traffic"},
      {"recycle", "1"},
      {"traffic", "steady", "--window", "0"},
      {"traffic", "steady", "--window", "257"},
      {"report", "r.json"},
      {"report", "-o", "r.html"},
  };
  for (const auto& args : bad) {
    SCOPED_TRACE(::testing::PrintToString(args));
    const CommandLine cl = Parse(args);
    ASSERT_TRUE(cl.exit_status);
    EXPECT_EQ(*cl.exit_status, kExitUsage);
    EXPECT_THAT(err_.str(), Not(IsEmpty()));
  }
}

TEST_F(CommandLineTest, HelpExits0AndNamesTheGlobalOptions) {
  CommandLine cl = Parse({"--help"});
  ASSERT_TRUE(cl.exit_status);
  EXPECT_EQ(*cl.exit_status, kExitOk);
  EXPECT_THAT(out_.str(), HasSubstr("--target"));
  EXPECT_THAT(out_.str(), HasSubstr("health"));

  cl = Parse({"traffic", "--help"});
  ASSERT_TRUE(cl.exit_status);
  EXPECT_EQ(*cl.exit_status, kExitOk);
  EXPECT_THAT(out_.str(), HasSubstr("--duration"));
  EXPECT_THAT(out_.str(), HasSubstr("--window"));
  EXPECT_THAT(out_.str(), HasSubstr("fresh pool"));  // what destroy-under-traffic does
  EXPECT_THAT(out_.str(), HasSubstr("Global options"));
}

// report needs no daemon: an unreadable input is exit 1 whatever the target.
TEST_F(CommandLineTest, ReportRunsWithoutADaemon) {
  EXPECT_EQ(
      ParseAndRun({"report", "/nonexistent/r.json", "-o", "/nonexistent/r.html", "--target", ""}),
      kExitRefused);
  EXPECT_EQ(err_.str(), "ppctl: report: cannot read /nonexistent/r.json\n");
}

// Arguments only the subcommand can check: refused with exit 2 before any call (the target does
// not exist; a call would answer UNAVAILABLE, exit 1).
TEST_F(CommandLineTest, SubcommandArgumentChecksExit2BeforeAnyCall) {
  const std::string nowhere = "127.0.0.1:1";
  const std::string kHandles =
      "ppctl: handles are FRAME:GEN (a page) or FRAME:GEN@OFFSET/SIZE (a fragment)";
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{"create-device", "--iommu-mode", "sideways"},
       "ppctl: --iommu-mode: 'sideways' is not strict, lazy or passthrough"},
      {{"create-pool", "1", "--strategy", "sometimes"},
       "ppctl: --strategy: 'sometimes' is not xarray, scan or none"},
      {{"recycle", "1", "2:3", "bad"}, kHandles},
      {{"return", "1", "x:1"}, kHandles},
      {{"return", "1", "2:3@64"}, kHandles},     // a fragment without its size
      {{"recycle", "1", "2:3@x/64"}, kHandles},  // an offset that is not a number
      {{"ref-frag", "1", "2:3"}, "ppctl: ref-frag takes fragment handles FRAME:GEN@OFFSET/SIZE"},
      {{"watch-events", "--type", "pool-explode"},
       "ppctl: --type: 'pool-explode' is not an event type"},
      {{"traffic", "steady", "--strategy", "later"},
       "ppctl: --strategy: 'later' is not xarray, scan or none"},
      {{"traffic", "steady", "--iommu-mode", "off"},
       "ppctl: --iommu-mode: 'off' is not strict, lazy or passthrough"},
  };
  for (const auto& [args, message] : bad) {
    SCOPED_TRACE(message);
    std::vector<std::string> argv = args;
    argv.insert(argv.end(), {"--target", nowhere});
    EXPECT_EQ(ParseAndRun(argv), kExitUsage);
    EXPECT_EQ(err_.str(), message + "\n");
    EXPECT_EQ(out_.str(), "");
  }
  EXPECT_EQ(ParseAndRun({"--target", "", "list-devices"}), kExitUsage);
  EXPECT_THAT(err_.str(), HasSubstr("empty target address"));
  EXPECT_EQ(ParseAndRun({"list-devices", "--tls-ca", "/nonexistent/ca.pem"}), kExitUsage);
  EXPECT_THAT(err_.str(), HasSubstr("cannot read --tls-ca /nonexistent/ca.pem"));
}

// The client certificate and the token file are checked before any call: exit 2, a message
// naming the option, nothing sent (the target is a port nobody listens on).
TEST_F(CommandLineTest, ClientCertificateAndTokenFilesCheckedBeforeAnyCall) {
  char dir[] = "/tmp/ppctl-cmdline-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string d(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(d + "/" + name) << text;
    return d + "/" + name;
  };
  const std::string empty = write("empty", "");
  const std::string blank = write("blank", "\n");
  const std::string two_lines = write("two_lines", "abc\ndef\n");
  const std::string pem = write("c.pem", "not really a certificate");
  const std::string nowhere = "127.0.0.1:1";
  struct Bad {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {{"--tls-cert", pem}, "--tls-cert and --tls-key go together"},
      {{"--tls-key", pem}, "--tls-cert and --tls-key go together"},
      {{"--tls-cert", d + "/none.pem", "--tls-key", pem}, "cannot read --tls-cert " + d},
      {{"--tls-cert", pem, "--tls-key", d + "/none.key"}, "cannot read --tls-key " + d},
      {{"--auth-token-file", d + "/none"}, "cannot read --auth-token-file " + d + "/none"},
      {{"--auth-token-file", empty}, "holds no token"},
      {{"--auth-token-file", blank}, "holds no token"},
      {{"--auth-token-file", two_lines}, "not printable ASCII"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.message);
    std::vector<std::string> argv = {"list-devices", "--target", nowhere};
    argv.insert(argv.end(), b.args.begin(), b.args.end());
    EXPECT_EQ(ParseAndRun(argv), kExitUsage);
    EXPECT_THAT(err_.str(), HasSubstr(b.message));
    EXPECT_EQ(out_.str(), "");
  }
  std::filesystem::remove_all(d);
}

}  // namespace
}  // namespace pagepool::client
