#!/usr/bin/env bash
# The same steady load with N = 1, 2, 4 generators, in containers (deploy/loadtest.sh: daemon and
# generators each in a container, Prometheus beside them) and on the host (pagepoold and N ppctl
# processes over loopback), side by side in one run. Prints one JSON line per run: page ops/s of
# all generators together and the daemon's CPU-seconds per million page ops.
#   bash tests/bench/container_scaling.sh [BUILD_DIR]     (host binaries; default build)
# Environment: DURATION (8), STREAMS (2), BATCH (64), WINDOW (1), GENS ("1 2 4").
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
DURATION=${DURATION:-8} STREAMS=${STREAMS:-2} BATCH=${BATCH:-64} WINDOW=${WINDOW:-1}
GENS=${GENS:-1 2 4}
tmp="$(mktemp -d /tmp/container_scaling.XXXXXX)"
pid=""
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT

host_run() {  # generators
  local n=$1 port c0 c1 i
  "$B/server/pagepoold" --listen 127.0.0.1:0 --metrics-listen off >"$tmp/pagepoold.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do
    port=$(grep -om1 'port [0-9]*' "$tmp/pagepoold.log" | awk '{print $2}') && [ -n "$port" ] && break
    sleep 0.1
  done
  c0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for i in $(seq "$n"); do
    "$B/client/ppctl" --target "127.0.0.1:$port" traffic steady --duration "$DURATION" \
      --streams "$STREAMS" --batch "$BATCH" --window "$WINDOW" --out "$tmp/host-$i.json" >/dev/null &
  done
  wait $(jobs -p | grep -v "^$pid$")
  c1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  /usr/bin/python3 - "$n" "$c0" "$c1" "$(getconf CLK_TCK)" "$tmp"/host-*.json <<'PY'
import json, sys
n, c0, c1, tck = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rs = [json.load(open(f)) for f in sys.argv[5:]]
ops = sum(r["page_ops"] for r in rs)
cpu = (c1 - c0) / tck
print(json.dumps({"where": "host", "generators": n, "page_ops_per_sec": round(sum(r["page_ops_per_sec"] for r in rs)),
                  "errors": sum(r["errors"] for r in rs), "violations": sum(r["violations"] for r in rs),
                  "daemon_cpu_s": round(cpu, 2), "daemon_cpu_s_per_M_ops": round(cpu / (ops / 1e6), 3)}))
PY
}

container_run() {  # generators
  local n=$1 out
  cat >"$tmp/scale-$n.env" <<ENV
DESCRIPTION="scaling: $n steady generators"
PATTERN=steady
GENERATORS=$n
STREAMS=$STREAMS
BATCH=$BATCH
WINDOW=$WINDOW
DURATION=$DURATION
STRATEGIES=xarray
ENV
  RESULTS_ROOT="$tmp/results" NO_BUILD="${NO_BUILD:-0}" bash deploy/loadtest.sh "$tmp/scale-$n.env" \
    >"$tmp/loadtest-$n.log" 2>&1 || { tail -20 "$tmp/loadtest-$n.log" >&2; exit 1; }
  NO_BUILD=1
  out="$(ls -d "$tmp"/results/*/ | tail -1)"
  /usr/bin/python3 - "$n" "$out/merged.json" <<'PY'
import json, sys
n, m = int(sys.argv[1]), json.load(open(sys.argv[2]))
t = m["runs"][0]["totals"]
print(json.dumps({"where": "containers", "generators": n, "page_ops_per_sec": round(t["page_ops_per_sec"]),
                  "errors": t["errors"], "violations": t["violations"],
                  "daemon_cpu_s": t.get("daemon_cpu_s"), "daemon_cpu_s_per_M_ops": t.get("daemon_cpu_s_per_M_ops")}))
PY
}

echo "## steady, $STREAMS streams x batch $BATCH, window $WINDOW, $DURATION s per generator; load $(cut -d' ' -f1-3 /proc/loadavg)"
for n in $GENS; do
  container_run "$n"
  host_run "$n"
done
