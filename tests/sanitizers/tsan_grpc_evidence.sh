#!/usr/bin/env bash
# Why the TSan stage leaves the gRPC path out, reproducibly: runs the gRPC tests of a TSan build
# (cmake -DPAGEPOOL_SANITIZE=thread with PAGEPOOL_BUILD_SERVER=ON, e.g. build-tsan after
# `bash tests/run_all.sh tsan` plus `ninja -C build-tsan server_service_test ...`) with
# halt_on_error=0, keeps every report under OUT (default build-tsan/tsan-grpc), and classifies
# them by who made each racing access (classify_tsan.py). Debian's gRPC 1.51 is not instrumented
# and locks with abseil's Mutex (futex, no pthread call TSan intercepts), so TSan sees none of the
# ordering gRPC provides: it reports races between gRPC's own accesses, and between a reactor's
# constructor and its callbacks that gRPC runs later on its own threads.
# Usage: bash tests/sanitizers/tsan_grpc_evidence.sh BUILD_TSAN [OUT]
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BUILD_TSAN [OUT]" >&2; exit 2; }
build=$1
out=${2:-$build/tsan-grpc}
here=$(cd "$(dirname "$0")" && pwd)
tests=(server/server_service_test server/server_robustness_test server/server_call_guard_test
       client/client_test client/health_test fault/fault_test)
rm -rf "$out"
mkdir -p "$out"
for t in "${tests[@]}"; do
  bin=$build/tests/$t
  name=$(basename "$t")
  [ -x "$bin" ] || { echo "$name: not built in $build"; continue; }
  TSAN_OPTIONS="halt_on_error=0 report_signal_unsafe=0 log_path=$out/$name" \
    timeout 900 "$bin" >"$out/$name.out" 2>&1
  status=$?
  reports=$(cat "$out/$name".[0-9]* 2>/dev/null | grep -c 'WARNING: ThreadSanitizer')
  echo "$name: exit $status, $reports TSan reports, gtest: $(grep -E '^\[  (PASSED|FAILED)' "$out/$name.out" | tr '\n' ' ')"
done
/usr/bin/python3 "$here/classify_tsan.py" "$out"/*.[0-9]*
