// File: tests/fuzz/fuzz_support.h
//
// What the fuzz targets of tests/fuzz share:
//
//   FUZZ_CHECK(cond) << ...   aborts with the file, line, condition and message when cond is false
//                             (libFuzzer reports the abort as a crash and saves the input);
//   FuzzInput                 reads integers and byte strings off the input, yielding zeros once it
//                             is used up (so every input, however short, is a complete program);
//   FuzzSeeds()               each target defines it: the seed inputs of corpus/<target>/, which
//                             `<target>_replay --write-seeds DIR` writes.
//
// Every target frees memory through RCU; the process drains RCU callbacks at exit so that
// LeakSanitizer does not report tables or index nodes still queued for freeing.
#ifndef PAGEPOOL_TESTS_FUZZ_FUZZ_SUPPORT_H_
#define PAGEPOOL_TESTS_FUZZ_FUZZ_SUPPORT_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "base/rcu.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace pagepool::fuzz {

// The seed inputs of this target (defined by each target).
std::vector<std::string> FuzzSeeds();

namespace internal {

// Collects a failed check's message and aborts when it goes out of scope.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) {
    out_ << file << ":" << line << ": FUZZ_CHECK failed: " << cond << ": ";
  }
  [[noreturn]] ~CheckFailure() {
    std::fprintf(stderr, "%s\n", out_.str().c_str());
    std::fflush(stderr);
    std::abort();
  }
  template <typename T>
  CheckFailure& operator<<(const T& v) {
    out_ << v;
    return *this;
  }

 private:
  std::ostringstream out_;
};

inline const bool kRcuBarrierAtExit [[maybe_unused]] =
    (std::atexit([] { base::rcu::Barrier(); }), true);

}  // namespace internal

// (A loop rather than if/else, so that FUZZ_CHECK inside an unbraced if has no dangling else; the
// body aborts, so it runs at most once.)
#define FUZZ_CHECK(cond) \
  while (!(cond)) ::pagepool::fuzz::internal::CheckFailure(__FILE__, __LINE__, #cond)

// Reads the input front to back. Past the end every read yields 0 (or an empty string).
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}

  bool empty() const { return p_ == end_; }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }

  uint8_t U8() { return p_ == end_ ? 0 : *p_++; }
  uint16_t U16() { return static_cast<uint16_t>(U8() | (uint16_t{U8()} << 8)); }
  uint32_t U32() { return U16() | (uint32_t{U16()} << 16); }
  uint64_t U64() { return U32() | (uint64_t{U32()} << 32); }
  bool Bool() { return (U8() & 1) != 0; }
  // A value in [0, n) (n > 0), from one byte when n <= 256, else from four.
  uint32_t Below(uint32_t n) { return n <= 256 ? U8() % n : U32() % n; }
  // A string of up to `max` bytes: a length byte (or two when max > 255), then that many bytes
  // (fewer if the input ends).
  std::string_view Bytes(size_t max) {
    size_t n = max > 255 ? U16() : U8();
    if (n > max) n = max;
    if (n > remaining()) n = remaining();
    std::string_view s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// Builds seed inputs in the format FuzzInput reads.
class SeedWriter {
 public:
  SeedWriter& U8(uint8_t v) {
    s_.push_back(static_cast<char>(v));
    return *this;
  }
  SeedWriter& U16(uint16_t v) { return U8(v & 0xff).U8(v >> 8); }
  SeedWriter& U32(uint32_t v) { return U16(v & 0xffff).U16(v >> 16); }
  SeedWriter& U64(uint64_t v) { return U32(v & 0xffffffffu).U32(v >> 32); }
  // The counterpart of FuzzInput::Bytes(max).
  SeedWriter& Bytes(std::string_view b, size_t max) {
    if (max > 255) {
      U16(static_cast<uint16_t>(b.size()));
    } else {
      U8(static_cast<uint8_t>(b.size()));
    }
    s_.append(b);
    return *this;
  }
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

}  // namespace pagepool::fuzz

#endif  // PAGEPOOL_TESTS_FUZZ_FUZZ_SUPPORT_H_
