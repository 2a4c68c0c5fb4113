// File: base/strings.h
//
// The small string and status helpers every layer's error messages use.
#ifndef PAGEPOOL_BASE_STRINGS_H_
#define PAGEPOOL_BASE_STRINGS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace pagepool::base {

// "0x1f000": an address or size in messages.
inline std::string Hex(uint64_t v) { return absl::StrCat("0x", absl::Hex(v)); }

// A std::string_view as an absl::string_view (Debian's abseil keeps its own type).
inline absl::string_view AbslView(std::string_view v) {
  return absl::string_view(v.data(), v.size());
}

// `s` with "what: " in front of its message, same code; OK stays OK.
inline absl::Status Annotate(const absl::Status& s, std::string_view what) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(AbslView(what), ": ", s.message()));
}

}  // namespace pagepool::base

#endif  // PAGEPOOL_BASE_STRINGS_H_
