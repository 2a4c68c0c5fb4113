#include "client/report_page.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace pagepool::client {
namespace report_assets {
// Defined in the generated report_assets.cc (client/report/embed_assets.cmake).
extern const char kUplotJs[];
extern const char kUplotCss[];
extern const char kReportJs[];
extern const char kReportCss[];
}  // namespace report_assets

namespace {

namespace pb = ::google::protobuf;

std::string HtmlEscape(std::string_view in) {
  return absl::StrReplaceAll(absl::string_view(in.data(), in.size()),
                             {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

absl::StatusOr<pb::Struct> ParseResult(const ReportInput& in) {
  const std::string& what = in.source.empty() ? in.name : in.source;
  pb::Struct result;
  pb::util::JsonParseOptions opts;
  pb::util::Status s = pb::util::JsonStringToMessage(in.json, &result, opts);
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a ppctl traffic result (", s.message().as_string(), ")"));
  }
  auto it = result.fields().find("timeline");
  if (it == result.fields().end() || !it->second.has_list_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a ppctl traffic result (no \"timeline\" array)"));
  }
  return result;
}

}  // namespace

absl::StatusOr<std::string> RenderReportPage(const std::vector<ReportInput>& inputs,
                                             std::string_view title) {
  if (inputs.empty()) return absl::InvalidArgumentError("report: no result given");
  pb::Struct data;
  pb::ListValue* results = (*data.mutable_fields())["results"].mutable_list_value();
  for (const ReportInput& in : inputs) {
    absl::StatusOr<pb::Struct> r = ParseResult(in);
    if (!r.ok()) return r.status();
    pb::Struct* entry = results->add_values()->mutable_struct_value();
    (*entry->mutable_fields())["name"].set_string_value(in.name);
    *(*entry->mutable_fields())["result"].mutable_struct_value() = *std::move(r);
  }
  std::string json;
  pb::util::Status s = pb::util::MessageToJsonString(data, &json);
  if (!s.ok()) return absl::InternalError(absl::StrCat("report: ", s.message().as_string()));
  // Inside <script>, "</script" would end the element early and "<!--" would change how the rest
  // is parsed: no "<" at all (in JSON it can only be inside a string, where \u003c means "<").
  json = absl::StrReplaceAll(json, {{"<", "\\u003c"}});

  const std::string t = HtmlEscape(title);
  std::string names;
  for (const ReportInput& in : inputs) absl::StrAppend(&names, names.empty() ? "" : ", ", in.name);
  return absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>", t,
      "</title>\n<style>\n", report_assets::kUplotCss, "\n", report_assets::kReportCss,
      "</style>\n</head>\n<body>\n<h1>", t, "</h1>\n<div class=\"pp-meta\">", HtmlEscape(names),
      "</div>\n<div id=\"pp-root\"></div>\n", "<script type=\"application/json\" id=\"pp-data\">",
      json, "</script>\n<script>\n", report_assets::kUplotJs, "\n</script>\n<script>\n",
      report_assets::kReportJs, "\n</script>\n</body>\n</html>\n");
}

}  // namespace pagepool::client
