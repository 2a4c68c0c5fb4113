#!/usr/bin/env bash
# ppctl traffic when the daemon goes away mid-run: the real pagepoold on 127.0.0.1:<free port>,
# several `ppctl traffic` runs of 60 s (steady with a window, burst, hold, leak, unary,
# destroy-under-traffic), then the daemon killed with SIGKILL 2 s in. Each ppctl must end within
# a few seconds of the kill (not run out its --duration), exit 1, and say on stderr that the daemon
# went away (UNAVAILABLE), with what it had done until then (page ops, batches, pool).
# Every process is bounded (ppctl by `timeout`, the daemon killed by PID in the exit trap).
# Usage: daemon_lost_test.sh PAGEPOOLD PPCTL
set -euo pipefail
PAGEPOOLD=$1
PPCTL=$2
tmp=$(mktemp -d)
pid=""
loads=()
cleanup() {
  for p in "${loads[@]}" $pid; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

"$PAGEPOOLD" --listen 127.0.0.1:0 --metrics-listen off --memory-gib 1 >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "(port " "$tmp/log" && break; sleep 0.1; done
port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/log" | head -1)
[ -n "$port" ] || fail "pagepoold did not report its port"

duration=60
runs=("steady --window 8" "burst" "hold --hold 0.5" "leak --max-held 2048" "unary"
      "destroy-under-traffic")
for i in "${!runs[@]}"; do
  # shellcheck disable=SC2086  # the pattern and its options, split on purpose
  timeout $((duration + 30)) "$PPCTL" --target "127.0.0.1:$port" traffic ${runs[$i]} \
    --duration "$duration" --streams 2 >"$tmp/out.$i" 2>"$tmp/err.$i" &
  loads+=($!)
done
sleep 2
kill -0 "$pid" || fail "the daemon died before the kill"
kill -KILL "$pid"
killed=$(date +%s.%N)
wait "$pid" 2>/dev/null || true
pid=""

worst=0
for i in "${!runs[@]}"; do
  rc=0
  wait "${loads[$i]}" || rc=$?
  took=$(awk -v now="$(date +%s.%N)" -v then="$killed" 'BEGIN { printf "%.1f", now - then }')
  echo "--- ppctl traffic ${runs[$i]}: exit $rc, ended ${took} s after the kill"
  cat "$tmp/err.$i"
  [ "$rc" -ne 124 ] || fail "traffic ${runs[$i]}: still running at --duration + 30 s"
  [ "$rc" -eq 1 ] || fail "traffic ${runs[$i]}: exit $rc, 1 expected: $(cat "$tmp/out.$i")"
  grep -q "ppctl: UNAVAILABLE: traffic .* stopped: the daemon went away" "$tmp/err.$i" \
    || fail "traffic ${runs[$i]}: no clear message"
  grep -q "page ops in [0-9]* batches" "$tmp/err.$i" \
    || fail "traffic ${runs[$i]}: the message does not say what was done"
  [ ! -s "$tmp/out.$i" ] || fail "traffic ${runs[$i]}: printed a result: $(cat "$tmp/out.$i")"
  worst=$(awk -v a="$took" -v b="$worst" 'BEGIN { print (a > b ? a : b) }')
done
loads=()
# They are waited for in turn, so `took` grows; every one of them must be far from 60 s.
awk -v w="$worst" 'BEGIN { exit !(w < 10) }' || fail "the last ppctl ended ${worst} s after the kill"
ok "daemon killed 2 s into ${#runs[@]} runs of ${duration} s: all ended within ${worst} s, exit 1"
echo PASS
