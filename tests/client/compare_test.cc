// client/compare: the traffic of `ppctl compare` (generated from a seed, written and read back as a
// trace file), the index-bytes sample it reads from /metrics, the hints it gives on refusals, the
// summary of the rounds and the table and JSON it prints, and its command line. No daemon.
#include "client/compare.h"

#include <algorithm>
#include <sstream>

#include "client/command_line.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pagepool::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Replays a trace on a list of page names as the client does (take the positions, remove them in
// decreasing order by moving the last page in, append the allocated pages); the pages given back.
struct Replayed {
  std::vector<uint64_t> recycled, returned, held;
};
Replayed ReplayNames(const CompareTrace& t) {
  Replayed r;
  uint64_t next = 0;
  for (const TraceBatch& b : t.batches) {
    for (uint32_t p : b.recycle) r.recycled.push_back(r.held.at(p));
    for (uint32_t p : b.return_pages) r.returned.push_back(r.held.at(p));
    std::vector<uint32_t> all = b.recycle;
    all.insert(all.end(), b.return_pages.begin(), b.return_pages.end());
    std::sort(all.rbegin(), all.rend());
    for (uint32_t p : all) {
      r.held[p] = r.held.back();
      r.held.pop_back();
    }
    for (uint32_t i = 0; i < b.allocate; ++i) r.held.push_back(next++);
  }
  return r;
}

TraceParams Small() {
  TraceParams p;
  p.seed = 7;
  p.inflight = 2048;
  p.batch = 64;
  p.batches = 100;
  p.working_set = 512;
  return p;
}

TEST(CompareTraceTest, TheSameSeedGivesTheSameTraceAndAnotherSeedAnother) {
  auto a = GenerateTrace(Small());
  auto b = GenerateTrace(Small());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(FormatTrace(*a), FormatTrace(*b));
  TraceParams other = Small();
  other.seed = 8;
  auto c = GenerateTrace(other);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(FormatTrace(*a), FormatTrace(*c));
  // The same shape: only which pages are given back differs.
  EXPECT_EQ(a->batches.size(), c->batches.size());
  EXPECT_EQ(a->held_at_end, c->held_at_end);
}

TEST(CompareTraceTest, EndsWithInflightPagesHeldAfterAFillThatDrainsCacheAndRing) {
  for (uint32_t inflight : {0u, 1u, 100u, 2048u, 5000u}) {
    SCOPED_TRACE(inflight);
    TraceParams p = Small();
    p.inflight = inflight;
    auto t = GenerateTrace(p);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->held_at_end, inflight);
    const Replayed r = ReplayNames(*t);
    EXPECT_EQ(r.held.size(), inflight);
    // After the last recycle, at least kTraceMinFill pages are allocated (cache and ring drained)
    // and only returns follow: nothing is parked in the ring at the destroy.
    size_t last_recycle = 0;
    for (size_t i = 0; i < t->batches.size(); ++i) {
      if (!t->batches[i].recycle.empty()) last_recycle = i;
    }
    uint64_t allocated_after = 0;
    for (size_t i = last_recycle + 1; i < t->batches.size(); ++i) {
      allocated_after += t->batches[i].allocate;
    }
    EXPECT_GE(allocated_after, kTraceMinFill);
  }
}

TEST(CompareTraceTest, ChurnKeepsTheWorkingSetAndMixesRecyclesAndReturns) {
  auto t = GenerateTrace(Small());
  ASSERT_TRUE(t.ok());
  EXPECT_LE(t->peak_held, std::max<uint64_t>(Small().working_set, Small().inflight));
  EXPECT_LE(t->max_batch_pages, Small().batch);
  const Replayed r = ReplayNames(*t);
  EXPECT_GT(r.recycled.size(), 1000u);
  EXPECT_GT(r.returned.size(), 1000u);
  // No page is given back twice.
  std::vector<uint64_t> back = r.recycled;
  back.insert(back.end(), r.returned.begin(), r.returned.end());
  std::sort(back.begin(), back.end());
  EXPECT_EQ(std::adjacent_find(back.begin(), back.end()), back.end());
  EXPECT_EQ(t->page_ops, back.size() + back.size() + r.held.size());

  TraceParams all_returned = Small();
  all_returned.return_pct = 100;
  auto u = GenerateTrace(all_returned);
  ASSERT_TRUE(u.ok());
  EXPECT_TRUE(ReplayNames(*u).recycled.empty());
}

TEST(CompareTraceTest, BadParametersAreRefused) {
  TraceParams p = Small();
  p.batch = 0;
  EXPECT_FALSE(GenerateTrace(p).ok());
  p = Small();
  p.return_pct = 101;
  EXPECT_FALSE(GenerateTrace(p).ok());
  p = Small();
  p.working_set = p.batch - 1;
  auto t = GenerateTrace(p);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("--working-set"));
}

TEST(CompareTraceTest, FormatThenParseGivesTheSameTrace) {
  auto t = GenerateTrace(Small());
  ASSERT_TRUE(t.ok());
  const std::string text = FormatTrace(*t);
  auto back = ParseTrace(text, "t.trace");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(FormatTrace(*back), text);
  EXPECT_EQ(back->page_ops, t->page_ops);
  EXPECT_EQ(back->held_at_end, t->held_at_end);
  EXPECT_EQ(back->peak_held, t->peak_held);
}

TEST(CompareTraceTest, ParseReadsCommentsAndPartsInAnyOrder) {
  auto t = ParseTrace("ppctl-compare-trace v1\n# hi\n\nA 4\nT 3 R 0\nA 2 R 1\n", "x");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->batches.size(), 3u);
  EXPECT_EQ(t->batches[1].return_pages, std::vector<uint32_t>{3});
  EXPECT_EQ(t->batches[1].recycle, std::vector<uint32_t>{0});
  EXPECT_EQ(t->held_at_end, 3u);  // 4 - 2, then - 1 + 2
  EXPECT_EQ(t->page_ops, 4u + 2u + 3u);
}

TEST(CompareTraceTest, ParseErrorsNameTheFileAndLine) {
  const struct {
    const char* text;
    const char* says;
  } bad[] = {
      {"", "not a ppctl compare trace"},
      {"A 4\n", "line 1: not a ppctl compare trace"},
      {"ppctl-compare-trace v1\n", "no batch"},
      {"ppctl-compare-trace v1\nA 4\nR 4\n", "line 3: position 4 is not below the 4 pages held"},
      {"ppctl-compare-trace v1\nA 4\nR 1 T 1\n", "line 3: position 1 is named twice"},
      {"ppctl-compare-trace v1\nA\n", "line 2: A needs a count"},
      {"ppctl-compare-trace v1\nA 2 X 1\n", "line 2: 'X' is neither"},
      {"ppctl-compare-trace v1\n5\n", "line 2: number 5 before A, R or T"},
      {"ppctl-compare-trace v1\nA 0\n", "line 2: an empty batch"},
      {"ppctl-compare-trace v1\nA 2 A 3\n", "line 2: A given twice"},
  };
  for (const auto& b : bad) {
    SCOPED_TRACE(b.text);
    auto t = ParseTrace(b.text, "f.trace");
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(t.status().message(), HasSubstr("trace f.trace"));
    EXPECT_THAT(t.status().message(), HasSubstr(b.says));
  }
}

TEST(CompareMetricsTest, IndexBytesOfThePoolAsked) {
  const std::string text =
      "# HELP pagepool_pool_index_bytes Bytes of the pool's in-flight index nodes.\n"
      "# TYPE pagepool_pool_index_bytes gauge\n"
      "pagepool_pool_index_bytes{pool_id=\"1\",ifindex=\"1\",strategy=\"xarray\"} 4608\n"
      "pagepool_pool_index_bytes{pool_id=\"12\",ifindex=\"2\",strategy=\"scan\"} 0\n"
      "pagepool_pool_inflight{pool_id=\"3\",ifindex=\"2\",strategy=\"xarray\"} 77\n";
  EXPECT_EQ(ParseIndexBytes(text, 1), 4608u);
  EXPECT_EQ(ParseIndexBytes(text, 12), 0u);
  EXPECT_EQ(ParseIndexBytes(text, 2), std::nullopt);  // pool_id="12" is not pool 2
  EXPECT_EQ(ParseIndexBytes(text, 3), std::nullopt);  // another family
}

TEST(CompareMetricsTest, DefaultAddressIsTheTargetHostOnPort9464) {
  EXPECT_EQ(DefaultMetricsAddress("127.0.0.1:50051"), "127.0.0.1:9464");
  EXPECT_EQ(DefaultMetricsAddress("daemon:50051"), "daemon:9464");
  EXPECT_EQ(DefaultMetricsAddress("dns:///daemon:50051"), "daemon:9464");
  EXPECT_EQ(DefaultMetricsAddress("[::1]:50051"), "[::1]:9464");
  EXPECT_EQ(DefaultMetricsAddress("unix:/run/pp.sock"), "");
  EXPECT_EQ(DefaultMetricsAddress("daemon"), "");
}

TEST(CompareHintTest, EachLimitNamesTheFlagToChange) {
  const auto hint = [](const char* m) { return CompareLimitHint(absl::ResourceExhaustedError(m)); };
  EXPECT_THAT(hint("CreateDevice: device limit reached (64, --max-devices)"),
              HasSubstr("higher --max-devices"));
  EXPECT_THAT(hint("Traffic: this stream holds 1000 pages; 64 more would pass the limit 1000 "
                   "(--max-held-per-stream): give pages back first, or use more streams"),
              HasSubstr("higher --max-held-per-stream, or lower --inflight"));
  EXPECT_THAT(hint("Traffic: 256 pages is above the limit 100 (--max-pages-per-call)"),
              HasSubstr("lower --batch"));
  EXPECT_THAT(hint("pool 3: out of simulated memory"), HasSubstr("--memory-gib"));
  EXPECT_THAT(CompareLimitHint(absl::UnavailableError("connection refused")),
              HasSubstr("is pagepoold running"));
  EXPECT_EQ(CompareLimitHint(absl::FailedPreconditionError("pool 3 is destroyed")), "");
}

CompareRound Round(uint32_t round, uint64_t destroy_ns, double ns_per_op, uint64_t unmapped,
                   uint64_t violations) {
  CompareRound r;
  r.round = round;
  r.destroy_ns = destroy_ns;
  r.ns_per_page_op = ns_per_op;
  r.pages_unmapped = unmapped;
  r.violations = violations;
  r.index_bytes = 0;
  return r;
}

CompareResult Example() {
  CompareResult res;
  res.iommu_mode = "strict";
  res.traffic = "seed 1";
  res.trace_batches = 10;
  res.trace_page_ops = 1000;
  res.inflight = 512;
  res.repeat = 3;
  res.warmup = 1;
  res.index_bytes_known = true;
  res.rows = {
      {"xarray",
       {Round(0, 3000, 120, 512, 0), Round(1, 1000, 110, 512, 0), Round(2, 2000, 130, 512, 0)}},
      {"scan",
       {Round(0, 9000, 101, 512, 0), Round(1, 8000, 100, 500, 0), Round(2, 7000, 105, 512, 0)}},
      {"none",
       {Round(0, 10, 100, 0, 1024), Round(1, 30, 100, 0, 1024), Round(2, 20, 120, 0, 1024)}}};
  res.rows[0].rounds[1].index_bytes = 4608;
  res.rows[0].rounds[0].index_bytes = 4608;
  res.rows[0].rounds[2].index_bytes = 4608;
  SummarizeCompareRows(&res.rows);
  return res;
}

TEST(CompareSummaryTest, BestAndMedianOfTheRoundsAgainstNone) {
  const CompareResult res = Example();
  const CompareRow& x = res.rows[0];
  EXPECT_EQ(x.destroy_ns_best, 1000u);
  EXPECT_EQ(x.destroy_ns_median, 2000u);
  EXPECT_DOUBLE_EQ(x.ns_per_op_best, 110);
  EXPECT_DOUBLE_EQ(x.ns_per_op_median, 120);
  EXPECT_DOUBLE_EQ(x.ratio_best, 1.10);   // 110 / 100
  EXPECT_DOUBLE_EQ(x.ratio_median, 1.2);  // 120 / 100
  EXPECT_DOUBLE_EQ(x.extra_ns_best, 10);
  EXPECT_DOUBLE_EQ(res.rows[2].ratio_best, 1.0);
  EXPECT_FALSE(res.TrackedViolations());  // none's violations are expected
  CompareResult bad = Example();
  bad.rows[1].rounds[2].violations = 1;
  EXPECT_TRUE(bad.TrackedViolations());
}

TEST(CompareOutputTest, TableIsAlignedWithOneRowAStrategy) {
  const std::string table = Example().Table();
  std::istringstream in(table);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  const auto header = std::find_if(
      lines.begin(), lines.end(), [](const std::string& l) { return l.rfind("strategy", 0) == 0; });
  ASSERT_NE(header, lines.end()) << table;
  ASSERT_GE(lines.end() - header, 4);
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(header[i].size(), header->size()) << table;
  EXPECT_EQ(header[1].rfind("xarray", 0), 0u);
  EXPECT_EQ(header[2].rfind("scan", 0), 0u);
  EXPECT_EQ(header[3].rfind("none", 0), 0u);
  EXPECT_THAT(header[1], HasSubstr("0.001 ms"));        // best destroy
  EXPECT_THAT(header[1], HasSubstr("110.0 / 120.0"));   // ns per page op, best / median
  EXPECT_THAT(header[1], HasSubstr("1.10x (+10 ns)"));  // best against best
  EXPECT_THAT(header[1], HasSubstr("4608"));
  EXPECT_THAT(header[2], HasSubstr("500-512"));  // rounds that differ show their range
  EXPECT_THAT(header[3], HasSubstr("1.00x (baseline)"));
  EXPECT_THAT(table, HasSubstr("best of the rounds"));
  EXPECT_THAT(table, HasSubstr("violations of none"));
  EXPECT_THAT(table, Not(HasSubstr("violations of xarray")));
}

TEST(CompareOutputTest, JsonHasEveryRoundAndUnknownIndexBytesAsNull) {
  CompareResult res = Example();
  res.rows[1].rounds[0].index_bytes = -1;
  const std::string json = res.ToJson();
  EXPECT_THAT(json, HasSubstr("\"strategy\": \"xarray\""));
  EXPECT_THAT(json, HasSubstr("\"destroy_ns_best\": 1000,"));
  EXPECT_THAT(json, HasSubstr("\"tracking_ratio_best\": 1.1000,"));
  EXPECT_THAT(json, HasSubstr("\"index_bytes\": null"));
  EXPECT_THAT(json, HasSubstr("\"index_bytes\": 4608"));
  size_t rounds = 0;
  for (size_t at = json.find("\"round\": "); at != std::string::npos;
       at = json.find("\"round\": ", at + 1)) {
    ++rounds;
  }
  EXPECT_EQ(rounds, 9u);
}

// The command line, parsed only (no call is made).
CommandLine Parse(std::vector<std::string> args, std::ostringstream* err) {
  args.insert(args.begin(), "ppctl");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  std::ostringstream out;
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data(), out, *err);
}

TEST(CompareCommandLineTest, OptionsAndTheirDefaults) {
  std::ostringstream err;
  CommandLine cl = Parse({"compare", "--target", "h:1"}, &err);
  ASSERT_FALSE(cl.exit_status) << err.str();
  EXPECT_EQ(cl.subcommand, "compare");
  EXPECT_EQ(cl.args.compare.trace.inflight, 65536u);
  EXPECT_EQ(cl.args.compare.options.repeat, 3u);
  EXPECT_EQ(cl.args.compare.target, "h:1");
  EXPECT_EQ(cl.args.compare.metrics, "");
  cl = Parse({"compare", "--inflight", "2048", "--seed", "9", "--batch", "32", "--repeat", "5",
              "--iommu-mode", "passthrough", "--no-free-empty-tables", "--metrics", "off",
              "--record", "t.trace", "--return-pct", "0"},
             &err);
  ASSERT_FALSE(cl.exit_status) << err.str();
  const CompareArgs& a = cl.args.compare;
  EXPECT_EQ(a.trace.inflight, 2048u);
  EXPECT_EQ(a.trace.seed, 9u);
  EXPECT_EQ(a.trace.batch, 32u);
  EXPECT_EQ(a.trace.return_pct, 0u);
  EXPECT_EQ(a.options.repeat, 5u);
  EXPECT_EQ(a.options.iommu_mode, "passthrough");
  EXPECT_TRUE(a.options.no_free_empty_tables);
  EXPECT_EQ(a.metrics, "off");
  EXPECT_EQ(a.record_path, "t.trace");
}

TEST(CompareCommandLineTest, ReplayExcludesTheGeneratorsOptions) {
  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{{"compare", "--replay", "t.trace", "--seed", "2"},
                                             {"compare", "--replay", "t.trace", "--inflight", "2"},
                                             {"compare", "--return-pct", "101"},
                                             {"compare", "--inflight", "-1"}}) {
    SCOPED_TRACE(::testing::PrintToString(bad));
    std::ostringstream err;
    const CommandLine cl = Parse(bad, &err);
    ASSERT_TRUE(cl.exit_status);
    EXPECT_EQ(*cl.exit_status, kExitUsage);
    EXPECT_THAT(err.str(), Not(::testing::IsEmpty()));
  }
}

}  // namespace
}  // namespace pagepool::client
