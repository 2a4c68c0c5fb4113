// File: tests/fuzz/replay_main.cc
//
// The main() of a fuzz target's replay executable (built in every build, without libFuzzer):
//
//   NAME_replay PATH...              runs LLVMFuzzerTestOneInput once on every file given and every
//                                    file in every directory given (not recursive; names starting
//                                    with '.' are skipped); exit 0 when all ran, 1 when a path
//                                    cannot be read. A failed check aborts.
//   NAME_replay --write-seeds DIR    writes the target's FuzzSeeds() into DIR as seed-NNN.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_support.h"

namespace fs = std::filesystem;

namespace {

bool RunFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    return false;
  }
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), data.size());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  return true;
}

int WriteSeeds(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  const std::vector<std::string> seeds = pagepool::fuzz::FuzzSeeds();
  for (size_t i = 0; i < seeds.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "seed-%03zu", i);
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(seeds[i].data(), static_cast<std::streamsize>(seeds[i].size()));
    if (!out) {
      std::fprintf(stderr, "replay: cannot write %s\n", (dir / name).c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "replay: wrote %zu seeds to %s\n", seeds.size(), dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-seeds") return WriteSeeds(argv[2]);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PATH... | --write-seeds DIR\n", argv[0]);
    return 2;
  }
  bool ok = true;
  size_t runs = 0;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg(argv[i]);
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      std::vector<fs::path> files;
      for (const fs::directory_entry& e : fs::directory_iterator(arg)) {
        if (e.is_regular_file() && e.path().filename().string()[0] != '.') {
          files.push_back(e.path());
        }
      }
      std::sort(files.begin(), files.end());
      for (const fs::path& f : files) {
        ok = RunFile(f) && ok;
        ++runs;
      }
    } else {
      ok = RunFile(arg) && ok;
      ++runs;
    }
  }
  std::fprintf(stderr, "replay: %zu inputs %s\n", runs, ok ? "passed" : "(some unreadable)");
  return ok ? 0 : 1;
}
