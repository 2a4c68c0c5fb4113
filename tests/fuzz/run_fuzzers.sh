#!/usr/bin/env bash
# Runs every libFuzzer target of a PAGEPOOL_BUILD_FUZZERS build for a bounded time, one after the
# other, each on a copy of its corpus and regressions (the repository's corpus never grows here),
# with -max_total_time=SECONDS -rss_limit_mb=2048 -timeout=10. Needs no network.
#
# -detect_leaks=0: page tables and index nodes are freed by liburcu's callback thread after a grace
# period, so to libFuzzer's per-input check every input looks like a leak, and it then stops the
# world for a full LeakSanitizer pass per input (the in-flight index target ran at 1-3 exec/s).
# LeakSanitizer still checks the whole process at exit, and the ctest replays run under ASan too.
#
# Usage: bash tests/fuzz/run_fuzzers.sh BUILD_DIR [SECONDS]      (SECONDS defaults to 60)
#   FUZZ_TARGETS="pgtable_fuzz ..."   runs only those targets (default: every target built)
#
# Prints per target the executions, exec/s and seconds run (libFuzzer's -print_final_stats), writes
# them to BUILD_DIR/fuzz-summary.tsv, keeps each target's log and new inputs under
# BUILD_DIR/fuzz-run/TARGET/, and exits 1 if any target crashed, printing the reproducer's path
# (copy it into tests/fuzz/regressions/TARGET/ once the bug is fixed).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [SECONDS]" >&2; exit 2; }
build=$(cd "$1" && pwd) || exit 2
seconds=${2:-60}
all=(pgtable_fuzz inflight_index_fuzz service_fuzz traffic_fuzz)
read -r -a targets <<<"${FUZZ_TARGETS:-${all[*]}}"

summary=$build/fuzz-summary.tsv
printf 'target\tresult\texecutions\texec_per_sec\tseconds\tnew_units\treproducer\n' >"$summary"
failed=0
ran=0
for t in "${targets[@]}"; do
  bin=$build/tests/fuzz/$t
  if [ ! -x "$bin" ]; then
    echo "run_fuzzers: $t: not built in $build (PAGEPOOL_BUILD_FUZZERS=ON; service and traffic need PAGEPOOL_BUILD_SERVER=ON)"
    continue
  fi
  work=$build/fuzz-run/$t
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp "$here/corpus/$t/"* "$work/corpus/" 2>/dev/null
  find "$here/regressions/$t" -maxdepth 1 -type f ! -name '.*' -exec cp {} "$work/corpus/" \; 2>/dev/null
  start=$(date +%s.%N)
  (cd "$work" && "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -detect_leaks=0 -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1)
  rc=$?
  elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  stat() { sed -n "s/^stat::$1: *//p" "$work/log" | tail -1; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  units=$(stat new_units_added)
  repro=$(find "$work/artifacts" -maxdepth 1 -type f | head -1)
  result=ok
  if [ $rc -ne 0 ] || [ -n "$repro" ]; then
    result=crash
    failed=1
  fi
  ran=$((ran + 1))
  printf '%s\t%s\t%s\t%s\t%.0f\t%s\t%s\n' "$t" "$result" "${execs:-?}" "${rate:-?}" "$elapsed" \
    "${units:-?}" "${repro:--}" >>"$summary"
  printf 'run_fuzzers: %-20s %-5s %10s execs %6s exec/s %5.0f s\n' "$t" "$result" "${execs:-?}" \
    "${rate:-?}" "$elapsed"
  if [ "$result" = crash ]; then
    grep -m 5 -E 'FUZZ_CHECK|ERROR: |SUMMARY: ' "$work/log" | sed 's/^/    /'
    echo "    reproducer: ${repro:-(none written; see $work/log)}"
    echo "    replay:     $build/tests/fuzz/${t}_replay ${repro:-FILE}"
  fi
done
echo "run_fuzzers: $ran targets, summary in $summary"
[ $ran -gt 0 ] || { echo "run_fuzzers: no fuzz target built in $build" >&2; exit 2; }
exit $failed
