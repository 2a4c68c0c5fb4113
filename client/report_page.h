// File: client/report_page.h
//
// The page `ppctl report` writes: one self-contained HTML file (no network needed to open it) that
// draws one or more `ppctl traffic --out` results with uPlot, inlined at build time from npm (see
// client/report/). Charts: page ops/s, RPC latency p50/p99, pages in flight (the pool's count and
// the pages the client held), I/O page-table bytes, each over time with destroy and unbind marked;
// a summary table with violations. Several results are drawn side by side on the same axes, so the
// same traffic under XARRAY, SCAN and NONE can be compared at a glance.
//
// Thread safety: a pure function.
#ifndef PAGEPOOL_CLIENT_REPORT_PAGE_H_
#define PAGEPOOL_CLIENT_REPORT_PAGE_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace pagepool::client {

struct ReportInput {
  ReportInput(std::string name, std::string json, std::string source = "")
      : name(std::move(name)), json(std::move(json)), source(std::move(source)) {}

  std::string name;    // shown in the legend and the table (e.g. the file name)
  std::string json;    // a `ppctl traffic --out` result
  std::string source;  // where it came from (a path), for error messages; empty: `name`
};

// The page, with the results embedded as JSON so that nothing in them (a "</script>" in an error
// message) can reach the HTML parser: every "<" in the data is written \u003c.
// INVALID_ARGUMENT naming the input (its source) when it is not a JSON object with a "timeline"
// array, or when there is no input at all.
absl::StatusOr<std::string> RenderReportPage(const std::vector<ReportInput>& inputs,
                                             std::string_view title);

}  // namespace pagepool::client

#endif  // PAGEPOOL_CLIENT_REPORT_PAGE_H_
