#!/usr/bin/env bash
# Builds pagepoold three ways and runs its tests:
#   1. release (gcc): every test but the soak (ctest), benchmarks built but not run.
#   2. asan: the whole program under AddressSanitizer + UndefinedBehaviorSanitizer (clang): every
#      test of every layer, the gRPC service, end-to-end and fault tests included (the pagepoold and
#      ppctl they run are the sanitized ones), but Chromium's drawing of the report page (label
#      browser); then each libFuzzer target for FUZZ_SECONDS (default 20) from the corpus in
#      tests/fuzz/corpus.
#   3. tsan: ThreadSanitizer (clang): the concurrency tests of every layer, server/'s runtime with
#      many threads, its Asio ticks and a shutdown under the calls included, and the unit tests
#      that make no gRPC call and start a thread (label nothreads: those that start none; and
#      RELIABILITY.md: why the gRPC path is left out).
#   4. soak: pagepoold under mixed traffic for 120 s: RSS growth (under 10% in this short run),
#      violations, leaks, a clean SIGTERM (the 10-minute soak: tests/soak/CMakeLists.txt).
#   5. deploy: Kubernetes manifests validated offline, a short containerized load test (podman:
#      the daemon, two generators, Prometheus), the daemon's pod under podman kube play. The image
#      is built from build/'s Release pagepoold and ppctl (the Containerfile's prebuilt target);
#      `bash deploy/build-images.sh` alone compiles them inside the image.
# Usage: bash tests/run_all.sh [release|asan|tsan|soak|deploy]...   (default: all five)
# Build trees go to build/, build-asan/, build-tsan/. JOBS overrides the parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(release asan tsan soak deploy)

configure() {  # dir, extra cmake args...
  local dir=$1; shift
  mkdir -p "$dir"
  cmake -S . -B "$dir" -G Ninja "$@" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; exit 1; }
}

# A clang sanitizer build of the whole tree into build-NAME, then the ctest tests with the labels
# given less those excluded, with the sanitizer options already in the environment. Only the
# targets those tests need are built (every target when the label set is all of them).
sanitizer_stage() {  # name, sanitizer (address|thread), ctest -L regex, ctest -LE regex, cmake args
  local dir=build-$1 san=$2 labels=$3 exclude=$4
  shift 4
  # Line tables are all a sanitizer report needs (file:line of every frame, inlined ones too);
  # full debug info made the sanitizer builds about 10% slower to compile.
  configure "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_COMPILER=clang++ -DPAGEPOOL_SANITIZE="$san" -DPAGEPOOL_BUILD_BENCHMARKS=OFF \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -gline-tables-only -DNDEBUG" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -gline-tables-only -DNDEBUG" "$@"
  local targets=()
  if [ "$san" = thread ]; then
    local t
    for t in $(ctest --test-dir "$dir" --show-only=json-v1 -L "$labels" -LE "$exclude" |
        /usr/bin/python3 -c 'import json, os, sys
for t in json.load(sys.stdin)["tests"]: print(os.path.basename(t.get("command", [t["name"]])[0]))'); do
      ninja -C "$dir" -t query "$t" >/dev/null 2>&1 && targets+=(--target "$t")
    done
  fi
  cmake --build "$dir" -j "$JOBS" "${targets[@]}"
  ctest --test-dir "$dir" --output-on-failure -L "$labels" -LE "$exclude" -j 1
}

for stage in "${stages[@]}"; do
  start=$(date +%s)
  case $stage in
    release)
      mkdir -p build
      configure build -DCMAKE_BUILD_TYPE=Release
      cmake --build build -j "$JOBS"
      ctest --test-dir build --output-on-failure -LE soak -j 1
      ;;
    asan)
      export LSAN_OPTIONS=suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0
      ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        sanitizer_stage asan address 'unit|concurrency|service|e2e' 'soak|browser' \
          -DPAGEPOOL_BUILD_FUZZERS=ON
      ASAN_OPTIONS=detect_leaks=1 bash tests/fuzz/run_fuzzers.sh build-asan "${FUZZ_SECONDS:-20}"
      unset LSAN_OPTIONS
      ;;
    tsan)
      TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        sanitizer_stage tsan thread 'unit|concurrency' 'soak|nothreads'
      ;;
    soak)
      [ -f build/CMakeCache.txt ] || { configure build -DCMAKE_BUILD_TYPE=Release; }
      cmake --build build -j "$JOBS" --target pagepoold ppctl
      ctest --test-dir build --output-on-failure -L soak
      ;;
    deploy)
      bash tests/deploy/validate_manifests.sh
      # The image takes the release stage's binaries (deploy/build-images.sh, PAGEPOOLD_PREBUILT)
      # instead of compiling them a fourth time inside its build stage.
      [ -f build/CMakeCache.txt ] || { configure build -DCMAKE_BUILD_TYPE=Release; }
      cmake --build build -j "$JOBS" --target pagepoold ppctl
      PAGEPOOLD_PREBUILT=$PWD/build bash tests/deploy/container_loadtest.sh
      bash deploy/k8s/podman-play.sh
      ;;
    *) echo "unknown stage '$stage' (release, asan, tsan, soak, deploy)" >&2; exit 2 ;;
  esac
  echo "run_all: stage $stage passed in $(( $(date +%s) - start )) s"
done
