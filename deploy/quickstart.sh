#!/usr/bin/env bash
# Quick start: installs the Debian packages (deploy/install-deps.sh), builds pagepoold and ppctl in
# Release, starts pagepoold on its defaults (gRPC 127.0.0.1:50051, metrics 127.0.0.1:9464), drives a
# few seconds of demo traffic with ppctl, prints the results and the daemon's summary, and stops the
# daemon cleanly with SIGTERM.
# Environment: BUILD_DIR (default build), JOBS (default nproc), DEMO_SECONDS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
DEMO_SECONDS=${DEMO_SECONDS:-3}

bash deploy/install-deps.sh
mkdir -p "$BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$BUILD_DIR/quickstart.configure.log" 2>&1 \
  || { cat "$BUILD_DIR/quickstart.configure.log"; exit 1; }
cmake --build "$BUILD_DIR" -j "$JOBS" --target pagepoold ppctl

PAGEPOOLD="$BUILD_DIR/server/pagepoold"
PPCTL="$BUILD_DIR/client/ppctl"
log=$(mktemp /tmp/pagepoold.XXXXXX.log)
"$PAGEPOOLD" >"$log" 2>&1 &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || { echo "quickstart: pagepoold exited with status $?" >&2; cat "$log" >&2; exit 1; }
  fi
}
trap stop EXIT

for _ in $(seq 50); do
  "$PPCTL" list-devices >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "quickstart: pagepoold did not start:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.2
done
head -n 1 "$log"

echo
echo "== ppctl traffic steady: allocate a batch of 64, recycle the previous one (${DEMO_SECONDS} s)"
"$PPCTL" traffic steady --duration "$DEMO_SECONDS" --streams 2 --batch 64
echo
echo "== ppctl traffic destroy-under-traffic: destroy the pool while pages are held, then return them"
"$PPCTL" traffic destroy-under-traffic --duration 2 --streams 2 --batch 64
echo
echo "== ppctl traffic leak: keep 256 pages per stream in flight (the shutdown unmaps them)"
"$PPCTL" traffic leak --duration 1 --streams 2 --batch 64 --max-held 256
echo
echo "== ppctl list-devices"
"$PPCTL" list-devices
echo
echo "== /metrics (a few lines)"
if command -v curl >/dev/null; then
  curl -fsS http://127.0.0.1:9464/metrics |
    grep -E '^pagepool_(pool_inflight\{|traffic_page_ops_total|rpc_finished_total\{method="Traffic")' |
    head -n 6
fi

echo
echo "== SIGTERM: pagepoold stops accepting, finishes calls, destroys pools, prints its summary"
trap - EXIT
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
sed -n '/pagepoold: SIGTERM/,$p' "$log"
rm -f "$log"
[ "$rc" -eq 0 ] || { echo "quickstart: pagepoold exited with status $rc" >&2; exit 1; }
echo "quickstart: done"
