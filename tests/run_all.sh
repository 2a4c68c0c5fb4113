#!/usr/bin/env bash
# Builds pagepoold three ways and runs its tests:
#   1. Release (gcc): every test (ctest) but the soak, benchmarks built but not run.
#   2. AddressSanitizer + UndefinedBehaviorSanitizer (clang): unit and concurrency tests of dma/ and pool/.
#   3. ThreadSanitizer (clang): concurrency tests.
#   4. deploy: Kubernetes manifests validated offline, a short containerized load test (podman:
#      the daemon, two generators, Prometheus), the daemon's pod under podman kube play.
#   soak (only when named): the release build, then the soak test (label soak, 120 s: pagepoold
#      under mixed load, its RSS, leaks and violations checked; tests/soak/soak.py).
# Usage: bash tests/run_all.sh [release|asan|tsan|deploy|soak]...   (default: the first four)
# Build trees go to build/, build-asan/, build-tsan/. JOBS overrides the parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(release asan tsan deploy)

configure() {  # dir, extra cmake args...
  local dir=$1; shift
  mkdir -p "$dir"
  cmake -S . -B "$dir" -G Ninja "$@" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; exit 1; }
}

# A clang sanitizer build of base/, dma/ and pool/ (no gRPC) into build-NAME, then the ctest labels
# given, with the sanitizer options already in the environment.
sanitizer_stage() {  # name, sanitizer (address|thread), ctest label regex
  local dir=build-$1
  mkdir -p "$dir"
  configure "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_COMPILER=clang++ -DPAGEPOOL_SANITIZE="$2" -DPAGEPOOL_BUILD_SERVER=OFF \
    -DPAGEPOOL_BUILD_BENCHMARKS=OFF
  cmake --build "$dir" -j "$JOBS"
  ctest --test-dir "$dir" --output-on-failure -L "$3" -j 1
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
    soak)
      mkdir -p build
      configure build -DCMAKE_BUILD_TYPE=Release
      cmake --build build -j "$JOBS"
      ctest --test-dir build --output-on-failure -L soak
      ;;
    asan)
      ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 sanitizer_stage asan address 'unit|concurrency'
      ;;
    tsan)
      TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 sanitizer_stage tsan thread concurrency
      ;;
    deploy)
      bash tests/deploy/validate_manifests.sh
      bash tests/deploy/container_loadtest.sh
      bash deploy/k8s/podman-play.sh
      ;;
    *) echo "unknown stage '$stage' (release, asan, tsan, deploy, soak)" >&2; exit 2 ;;
  esac
  echo "run_all: stage $stage passed in $(( $(date +%s) - start )) s"
done
