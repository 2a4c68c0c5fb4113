// client/report_page: the page ppctl report writes, without a browser (tests/report draws it in
// headless Chromium): inputs that are not traffic results are refused naming the input, the data
// is embedded so that nothing in it ends its <script> element, and the assets are inlined.
#include "client/report_page.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pagepool::client {
namespace {

using ::testing::HasSubstr;

constexpr char kResult[] =
    R"({"pattern": "steady", "strategy": "xarray", "page_ops_per_sec": 2653714.0,
        "events": [], "timeline": [{"t_s": 0.1, "page_ops_per_sec": 2653714.0}]})";

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

TEST(ReportPageTest, RefusesWhatIsNotATrafficResultNamingTheInput) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"truncated", R"({"timeline": [)"},
      {"not-json", "page ops: 12"},
      {"array", R"([{"timeline": []}])"},
      {"no-timeline", R"({"pattern": "steady"})"},
      {"timeline-not-a-list", R"({"timeline": 3})"},
      {"empty", ""},
  };
  for (const auto& [name, json] : bad) {
    SCOPED_TRACE(name);
    auto page =
        RenderReportPage({{"good", kResult}, {name, json, "/results/" + name + ".json"}}, "t");
    ASSERT_FALSE(page.ok());
    EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(page.status().message(), HasSubstr("/results/" + name + ".json: not a ppctl"));
  }
  // Without a source, the name.
  auto page = RenderReportPage({{"xarray-run", "{"}}, "t");
  EXPECT_THAT(page.status().message(), HasSubstr("xarray-run: not a ppctl traffic result"));
  page = RenderReportPage({}, "t");
  EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(page.status().message(), HasSubstr("no result"));
}

TEST(ReportPageTest, NothingInTheDataEndsItsScriptElement) {
  const std::string evil =
      R"({"first_error": "</script><script>alert(1)</script><!-- x", "timeline": []})";
  auto page = RenderReportPage({{"a</script>b", evil}}, "<b>title</b> & more");
  ASSERT_TRUE(page.ok()) << page.status();
  // The three script elements (data, uPlot, report.js) end where they should, nowhere else.
  EXPECT_EQ(Count(*page, "</script>"), 3u);
  EXPECT_EQ(Count(*page, "<script"), 3u);
  EXPECT_EQ(Count(*page, "<!--"), 0u);
  EXPECT_EQ(Count(*page, R"(\u003c/script)"), 3u);  // the first error's two, the name's one
  // The title and the names are escaped as HTML.
  EXPECT_EQ(Count(*page, "<title>&lt;b&gt;title&lt;/b&gt; &amp; more</title>"), 1u);
  EXPECT_EQ(Count(*page, "a&lt;/script&gt;b"), 1u);
}

TEST(ReportPageTest, OnePageWithTheResultsAndTheInlinedAssets) {
  auto page = RenderReportPage({{"xarray", kResult}, {"scan", kResult}}, "XARRAY vs SCAN");
  ASSERT_TRUE(page.ok()) << page.status();
  // Count() rather than HasSubstr: a failure would print the whole page, uPlot included.
  EXPECT_EQ(Count(*page, "<title>XARRAY vs SCAN</title>"), 1u);
  EXPECT_EQ(Count(*page, R"(<script type="application/json" id="pp-data">)"), 1u);
  EXPECT_EQ(Count(*page, R"("name":"xarray")"), 1u);
  EXPECT_EQ(Count(*page, R"("name":"scan")"), 1u);
  EXPECT_EQ(Count(*page, ":2653714"), 4u);           // two numbers of each result
  EXPECT_GE(Count(*page, "uPlot"), 1u);              // the library (npm), inlined
  EXPECT_GE(Count(*page, ".u-legend"), 1u);          // its style
  EXPECT_EQ(Count(*page, "function niceAxis"), 1u);  // report.js
  EXPECT_GE(Count(*page, ".pp-summary"), 1u);        // report.css
  // Self-contained: nothing to fetch.
  EXPECT_EQ(Count(*page, "<link"), 0u);
  EXPECT_EQ(Count(*page, "<script src"), 0u);
}

}  // namespace
}  // namespace pagepool::client
