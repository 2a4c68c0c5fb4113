// File: server/metrics_text.h
//
// A small writer of the Prometheus text exposition format (version 0.0.4): one HELP and one TYPE
// line per metric family, then its samples. Every name gets the `pagepool_` prefix.
#ifndef PAGEPOOL_SERVER_METRICS_TEXT_H_
#define PAGEPOOL_SERVER_METRICS_TEXT_H_

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace pagepool::server {

class MetricsText {
 public:
  using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

  explicit MetricsText(std::string* out) : out_(out) {}

  // Starts a family: "# HELP pagepool_<name> <help>" and "# TYPE pagepool_<name> <type>".
  // `type` is "counter" or "gauge".
  void Family(std::string_view name, std::string_view type, std::string_view help);
  // One sample of the family started last.
  void Sample(std::string_view name, Labels labels, double value);
  void Sample(std::string_view name, Labels labels, uint64_t value);

 private:
  void Head(std::string_view name, Labels labels);
  std::string* out_;
};

}  // namespace pagepool::server

#endif  // PAGEPOOL_SERVER_METRICS_TEXT_H_
