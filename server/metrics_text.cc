#include "server/metrics_text.h"

#include <cstdio>

namespace pagepool::server {
namespace {

// Label values escape backslash, double quote and newline.
void AppendEscaped(std::string* out, std::string_view v) {
  for (char c : v) {
    if (c == '\\')
      out->append("\\\\");
    else if (c == '"')
      out->append("\\\"");
    else if (c == '\n')
      out->append("\\n");
    else
      out->push_back(c);
  }
}

}  // namespace

void MetricsText::Family(std::string_view name, std::string_view type, std::string_view help) {
  out_->append("# HELP pagepool_").append(name).append(" ").append(help).append("\n");
  out_->append("# TYPE pagepool_").append(name).append(" ").append(type).append("\n");
}

void MetricsText::Head(std::string_view name, Labels labels) {
  out_->append("pagepool_").append(name);
  if (labels.size() > 0) {
    out_->push_back('{');
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out_->push_back(',');
      first = false;
      out_->append(k).append("=\"");
      AppendEscaped(out_, v);
      out_->push_back('"');
    }
    out_->push_back('}');
  }
  out_->push_back(' ');
}

void MetricsText::Sample(std::string_view name, Labels labels, uint64_t value) {
  Head(name, labels);
  out_->append(std::to_string(value)).push_back('\n');
}

void MetricsText::Sample(std::string_view name, Labels labels, double value) {
  Head(name, labels);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", value);
  out_->append(buf).push_back('\n');
}

}  // namespace pagepool::server
