#include "client/traffic_report.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pagepool::client {

namespace {

// `in` as the inside of a JSON string: quotes and backslashes escaped, control characters as
// \uXXXX (\n as \n).
std::string JsonEscape(const std::string& in) {
  std::string out;
  for (char c : in) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    } else if (c == '\n') {
      out += "\\n";
      continue;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
      continue;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string TrafficResult::ToJson() const {
  std::string s = "{\n";
  auto num = [&](const char* k, double v) {
    absl::StrAppend(&s, "  \"", k, "\": ", absl::StrFormat("%.3f", v), ",\n");
  };
  auto integer = [&](const char* k, int64_t v) {
    absl::StrAppend(&s, "  \"", k, "\": ", v, ",\n");
  };
  auto text = [&](const char* k, const std::string& v) {
    absl::StrAppend(&s, "  \"", k, "\": \"", JsonEscape(v), "\",\n");
  };
  text("pattern", pattern);
  text("strategy", strategy);
  text("iommu_mode", iommu_mode);
  integer("streams", streams);
  integer("batch", batch);
  integer("window", window);
  integer("frag_size", frag_size);
  integer("device_id", device_id);
  integer("pool_id", pool_id);
  integer("fresh_device_id", fresh_device_id);
  integer("fresh_pool_id", fresh_pool_id);
  num("duration_s", duration_s);
  integer("batches", batches);
  integer("page_ops", page_ops);
  integer("frag_ops", frag_ops);
  integer("pages_from_frags", pages_from_frags);
  integer("frag_pages", frag_pages);
  integer("frag_refs", frag_refs);
  num("page_ops_per_sec", page_ops_per_sec);
  num("rpc_p50_us", rpc_p50_us);
  num("rpc_p99_us", rpc_p99_us);
  integer("errors", errors);
  integer("expected_refusals", expected_refusals);
  integer("violations", violations);
  integer("inflight", inflight);
  integer("held_at_end", held_at_end);
  integer("held_at_destroy", held_at_destroy);
  integer("pages_unmapped_at_destroy", pages_unmapped_at_destroy);
  text("first_error", first_error);
  absl::StrAppend(&s, "  \"events\": [");
  for (size_t i = 0; i < events.size(); ++i) {
    const TrafficEvent& e = events[i];
    absl::StrAppend(&s, i == 0 ? "\n" : ",\n",
                    absl::StrFormat("    {\"kind\": \"%s\", \"t_s\": %.3f, \"duration_ms\": %.3f, "
                                    "\"pages_unmapped\": %d, \"inflight_at_destroy\": %d}",
                                    JsonEscape(e.kind), e.t_s, e.duration_ms, e.pages_unmapped,
                                    e.inflight_at_destroy));
  }
  absl::StrAppend(&s, events.empty() ? "],\n" : "\n  ],\n", "  \"timeline\": [");
  for (size_t i = 0; i < timeline.size(); ++i) {
    const TrafficSample& t = timeline[i];
    absl::StrAppend(&s, i == 0 ? "\n" : ",\n",
                    absl::StrFormat("    {\"t_s\": %.3f, \"page_ops_per_sec\": %.1f, "
                                    "\"rpc_p50_us\": %.1f, \"rpc_p99_us\": %.1f, \"held\": %d, "
                                    "\"inflight\": %d, \"table_bytes\": %d, \"errors\": %d}",
                                    t.t_s, t.page_ops_per_sec, t.rpc_p50_us, t.rpc_p99_us, t.held,
                                    t.inflight, t.table_bytes, t.errors));
  }
  absl::StrAppend(&s, timeline.empty() ? "]\n}\n" : "\n  ]\n}\n");
  return s;
}

std::string TrafficResult::Summary() const {
  std::string s = absl::StrFormat(
      "traffic %s: %u streams x batch %u, window %u, %.1f s on pool %d (device %d, %s, %s)\n"
      "  page ops:   %d (%.0f ops/s), %d batches\n"
      "  rpc:        p50 %.1f us, p99 %.1f us\n"
      "  inflight:   %d pages in the pool%s at the end (kernel count: cache and ring included)\n"
      "  errors:     %d",
      pattern, streams, batch, window, duration_s, pool_id, device_id, strategy, iommu_mode,
      page_ops, page_ops_per_sec, batches, rpc_p50_us, rpc_p99_us, inflight,
      fresh_pool_id != 0 ? "s" : "", errors);
  if (!first_error.empty()) absl::StrAppend(&s, " (first: ", first_error, ")");
  absl::StrAppend(&s, "\n");
  if (frag_size != 0) {
    absl::StrAppend(&s, "  fragments:  ", frag_size, " bytes each: ", frag_ops, " fragment ops, ",
                    pages_from_frags, " pages freed by their last fragment; at the end ",
                    frag_pages, " pages split, ", frag_refs, " fragment references held\n");
  }
  for (const TrafficEvent& e : events) {
    absl::StrAppend(
        &s, absl::StrFormat("  %-11s at %.2f s, %.2f ms: ", e.kind + ":", e.t_s, e.duration_ms),
        held_at_destroy, " pages held by the client, ", e.inflight_at_destroy, " in flight, ",
        e.pages_unmapped, " unmapped; ", expected_refusals, " refusals after it (expected)\n");
  }
  if (fresh_pool_id != 0) {
    absl::StrAppend(&s, "  then:       traffic on fresh pool ", fresh_pool_id, " (device ",
                    fresh_device_id, ") until the end\n");
  }
  absl::StrAppend(&s, "  violations: ", violations, violations == 0 ? " (clean)" : " (UNSAFE)",
                  "\n");
  return s;
}

}  // namespace pagepool::client
