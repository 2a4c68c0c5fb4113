#include "client/traffic_report.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pagepool::client {

namespace {

// `in` as the inside of a JSON string: quotes and backslashes escaped, newlines as \n.
std::string JsonEscape(const std::string& in) {
  std::string out;
  for (char c : in) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string HtmlEscape(const std::string& in) {
  std::string out;
  for (char c : in) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// A line chart of (x, y) points as inline SVG, with the y range from 0 to the maximum.
std::string SvgChart(const std::string& title, const std::string& unit,
                     const std::vector<std::pair<double, double>>& pts) {
  constexpr double kW = 640, kH = 220, kL = 70, kR = 20, kT = 30, kB = 35;
  double xmax = 1, ymax = 1;
  for (const auto& [x, y] : pts) {
    xmax = std::max(xmax, x);
    ymax = std::max(ymax, y);
  }
  auto px = [&](double x) { return kL + (kW - kL - kR) * x / xmax; };
  auto py = [&](double y) { return kH - kB - (kH - kT - kB) * y / ymax; };
  std::string s = absl::StrFormat(
      "<svg width=\"%.0f\" height=\"%.0f\" xmlns=\"http://www.w3.org/2000/svg\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<text x=\"%.0f\" y=\"18\" font-weight=\"bold\">%s</text>\n"
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#444\"/>\n"
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#444\"/>\n"
      "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.0f %s</text>\n"
      "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">0</text>\n"
      "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.1f s</text>\n",
      kW, kH, kL, HtmlEscape(title), kL, kT, kL, kH - kB, kL, kH - kB, kW - kR, kH - kB, kL - 4,
      kT + 4, ymax, HtmlEscape(unit), kL - 4, kH - kB, kW - kR, kH - kB + 16, xmax);
  std::string points;
  for (const auto& [x, y] : pts) {
    absl::StrAppend(&points, absl::StrFormat("%.1f,%.1f ", px(x), py(y)));
  }
  absl::StrAppend(&s, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"",
                  points, "\"/>\n");
  for (const auto& [x, y] : pts) {
    absl::StrAppend(&s, absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" "
                                        "fill=\"#1f77b4\"/>\n", px(x), py(y)));
  }
  absl::StrAppend(&s, "</svg>\n");
  return s;
}

}  // namespace

std::string TrafficResult::ToJson() const {
  std::string s = "{\n";
  auto num = [&](const char* k, double v, bool last = false) {
    absl::StrAppend(&s, "  \"", k, "\": ", absl::StrFormat("%.3f", v), last ? "\n" : ",\n");
  };
  auto integer = [&](const char* k, uint64_t v) {
    absl::StrAppend(&s, "  \"", k, "\": ", v, ",\n");
  };
  absl::StrAppend(&s, "  \"pattern\": \"", pattern, "\",\n");
  integer("streams", streams);
  integer("batch", batch);
  integer("device_id", device_id);
  integer("pool_id", pool_id);
  num("duration_s", duration_s);
  integer("batches", batches);
  integer("page_ops", page_ops);
  num("page_ops_per_sec", page_ops_per_sec);
  num("rpc_p50_us", rpc_p50_us);
  num("rpc_p99_us", rpc_p99_us);
  integer("errors", errors);
  integer("expected_refusals", expected_refusals);
  integer("violations", violations);
  integer("inflight", inflight);
  integer("held_at_destroy", held_at_destroy);
  integer("pages_unmapped_at_destroy", pages_unmapped_at_destroy);
  absl::StrAppend(&s, "  \"first_error\": \"", JsonEscape(first_error), "\",\n  \"timeline\": [");
  for (size_t i = 0; i < timeline.size(); ++i) {
    const TrafficSample& t = timeline[i];
    absl::StrAppend(&s, i == 0 ? "\n" : ",\n",
                    absl::StrFormat("    {\"t_s\": %.3f, \"page_ops_per_sec\": %.1f, "
                                    "\"held\": %d, \"errors\": %d}",
                                    t.t_s, t.page_ops_per_sec, t.held, t.errors));
  }
  absl::StrAppend(&s, timeline.empty() ? "]\n}\n" : "\n  ]\n}\n");
  return s;
}

std::string TrafficResult::ToHtml() const {
  std::vector<std::pair<double, double>> ops, held_pts;
  for (const TrafficSample& t : timeline) {
    ops.emplace_back(t.t_s, t.page_ops_per_sec);
    held_pts.emplace_back(t.t_s, double(std::max<int64_t>(0, t.held)));
  }
  std::string s = absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ppctl traffic ",
      HtmlEscape(pattern),
      "</title>\n<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;"
      "text-align:left}th{background:#eee}.bad{color:#b00;font-weight:bold}</style></head><body>\n",
      "<h1>ppctl traffic ", HtmlEscape(pattern), "</h1>\n<table>\n");
  auto row = [&s](const std::string& k, const std::string& v, bool bad = false) {
    absl::StrAppend(&s, "<tr><th>", k, "</th><td", bad ? " class=\"bad\"" : "", ">",
                    HtmlEscape(v), "</td></tr>\n");
  };
  row("pool / device", absl::StrCat(pool_id, " / ", device_id));
  row("streams x batch", absl::StrCat(streams, " x ", batch));
  row("duration", absl::StrFormat("%.2f s", duration_s));
  row("page ops", absl::StrFormat("%d (%.0f ops/s)", page_ops, page_ops_per_sec));
  row("batches", absl::StrCat(batches));
  row("rpc latency", absl::StrFormat("p50 %.1f us, p99 %.1f us", rpc_p50_us, rpc_p99_us));
  row("inflight at the end", absl::StrCat(inflight));
  row("errors", absl::StrCat(errors, first_error.empty() ? "" : " (first: " + first_error + ")"),
      errors > 0);
  if (pattern == "destroy-under-traffic") {
    row("held at destroy", absl::StrCat(held_at_destroy));
    row("unmapped by the destroy", absl::StrCat(pages_unmapped_at_destroy));
    row("refusals after the destroy", absl::StrCat(expected_refusals));
  }
  row("violations", absl::StrCat(violations, violations == 0 ? " (clean)" : " (UNSAFE)"),
      violations > 0);
  absl::StrAppend(&s, "</table>\n<h2>Throughput</h2>\n",
                  SvgChart("page ops per second", "ops/s", ops), "<h2>Pages held</h2>\n",
                  SvgChart("pages held by the client", "pages", held_pts), "</body></html>\n");
  return s;
}

std::string TrafficResult::Summary() const {
  std::string s = absl::StrFormat(
      "traffic %s: %u streams x batch %u, %.1f s on pool %d (device %d)\n"
      "  page ops:   %d (%.0f ops/s), %d batches\n"
      "  rpc:        p50 %.1f us, p99 %.1f us\n"
      "  inflight:   %d pages in the pool at the end (kernel count: cache and ring included)\n"
      "  errors:     %d",
      pattern, streams, batch, duration_s, pool_id, device_id, page_ops, page_ops_per_sec, batches,
      rpc_p50_us, rpc_p99_us, inflight, errors);
  if (!first_error.empty()) absl::StrAppend(&s, " (first: ", first_error, ")");
  absl::StrAppend(&s, "\n");
  if (pattern == "destroy-under-traffic") {
    absl::StrAppend(&s, "  destroy:    ", held_at_destroy, " pages held by the client, ",
                    pages_unmapped_at_destroy, " unmapped by the destroy, ", expected_refusals,
                    " refusals after it (expected)\n");
  }
  absl::StrAppend(&s, "  violations: ", violations, violations == 0 ? " (clean)" : " (UNSAFE)",
                  "\n");
  return s;
}

}  // namespace pagepool::client
