#!/usr/bin/env bash
# Runs every measurement behind BENCHMARKS.md, side by side in one run, and prints the raw lines.
#   bash tests/bench/run_benchmarks.sh [BUILD_DIR]     (default build; built in Release if needed)
# Sections: iova_stress (seed 000), dma_bench (Google Benchmark), page_pool_bench, destroy_bench,
# and the daemon over loopback beside null_server, the same .proto with no page work (ppctl
# traffic; CPU split from /proc). Needs about 10 GiB of free memory (iova_stress with freeing off at
# 4 TiB holds 8 GiB of page tables) and ~6 minutes.
# SECTIONS (default "iova dma pool destroy daemon") picks the sections to run.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
SECTIONS=${SECTIONS:-iova dma pool destroy daemon}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
if [ ! -x "$B/server/pagepoold" ]; then
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$B" -j "$(nproc)" --target iova_stress dma_bench page_pool_bench destroy_bench \
  pagepoold ppctl null_server >/dev/null

echo "## machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"

want iova && {
echo "## iova_stress: freeing on and off side by side at 4 TiB (twice, alternating), then 16 TiB"
S=$B/tests/bench/dma/iova_stress
for _ in 1 2; do
  $S --space-tib 4 --free-tables=on
  $S --space-tib 4 --free-tables=off
done
$S --space-tib 16 --free-tables=on
$S --space-tib 16 --free-tables=on --mode=lazy
$S --space-tib 16 --mode=passthrough
}

want dma && {
echo "## dma_bench (median of 5)"
$B/tests/bench/dma/dma_bench --benchmark_min_time=0.3 --benchmark_repetitions=5 \
  --benchmark_report_aggregates_only=true 2>/dev/null | grep -E '_median'
}

want pool && {
echo "## page_pool_bench (best of 7)"
$B/tests/bench/pool/page_pool_bench --repeat 7
}

want destroy && {
echo "## destroy_bench: 128K pages in flight, 4/16/64 GiB, xarray and scan (best of 5 each)"
for strat in xarray scan; do
  for g in 4 16 64; do
    $B/tests/bench/pool/destroy_bench --inflight 131072 --memory-gib "$g" --strategy "$strat" \
      --repeat 5
  done
done
}

want daemon || exit 0
echo "## daemon over loopback, beside null_server (the same .proto, no page work), alternating"
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, in clock ticks
tck=$(getconf CLK_TCK)
pid=""
trap '[ -n "$pid" ] && kill -TERM $pid 2>/dev/null || true' EXIT
start_server() {  # name, command...: starts it on a free loopback port, sets pid and port
  local name=$1; shift
  "$@" >"/tmp/run_benchmarks.$name.log" 2>&1 &
  pid=$!
  port=""
  for _ in $(seq 50); do
    port=$(grep -om1 'port [0-9]*' "/tmp/run_benchmarks.$name.log" | awk '{print $2}' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "run_benchmarks: $name did not start" >&2; exit 1; }
}
stop_server() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }
run() {  # server, label, ppctl traffic args...
  local server=$1 label=$2; shift 2
  local d0 d1
  d0=$(cpu_of "$pid")
  /usr/bin/time -f '%U %S' -o /tmp/run_benchmarks.time "$B/client/ppctl" --target "127.0.0.1:$port" \
    traffic "$@" --out /tmp/run_benchmarks.json >/dev/null
  d1=$(cpu_of "$pid")
  read -r cu cs </tmp/run_benchmarks.time
  /usr/bin/python3 - "$server" "$label" "$(( d1 - d0 ))" "$tck" "$cu" "$cs" <<'PY'
import json, sys
server, label, dticks, tck = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cu, cs = float(sys.argv[5]), float(sys.argv[6])
r = json.load(open('/tmp/run_benchmarks.json'))
extra = {}
if label.startswith("unary"):  # batch 1: one Allocate + one Return per round trip, 2 page ops
    extra["round_trips_per_sec"] = round(r["page_ops_per_sec"] / 2)
cpu = dticks / tck
print(json.dumps({"server": server, "run": label, "page_ops_per_sec": round(r["page_ops_per_sec"]),
                  **extra, "rpc_p50_us": r["rpc_p50_us"], "rpc_p99_us": r["rpc_p99_us"],
                  "errors": r["errors"], "violations": r["violations"],
                  "server_cpu_s": round(cpu, 2), "client_cpu_s": round(cu + cs, 2),
                  "server_cpu_s_per_M_ops": round(cpu / (r["page_ops"] / 1e6), 3)
                  if r.get("page_ops") else None}))
PY
}
for round in 1 2; do
  start_server pagepoold "$B/server/pagepoold" --listen 127.0.0.1:0 --metrics-listen off
  run pagepoold steady_batch64_streams2 steady --duration 5 --streams 2 --batch 64
  run pagepoold steady_batch64_streams4 steady --duration 5 --streams 4 --batch 64
  run pagepoold steady_batch64_streams2_window8 steady --duration 5 --streams 2 --batch 64 --window 8
  if [ "$round" = 1 ]; then
    run pagepoold unary_streams1 unary --duration 5 --streams 1 --batch 1
    run pagepoold unary_streams4 unary --duration 5 --streams 4 --batch 1
  fi
  stop_server
  start_server null_server "$B/tests/bench/server/null_server" --listen 127.0.0.1:0
  run null_server steady_batch64_streams2 steady --duration 5 --streams 2 --batch 64
  run null_server steady_batch64_streams4 steady --duration 5 --streams 4 --batch 64
  run null_server steady_batch64_streams2_window8 steady --duration 5 --streams 2 --batch 64 --window 8
  stop_server
done
trap - EXIT
