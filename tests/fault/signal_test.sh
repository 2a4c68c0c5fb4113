#!/usr/bin/env bash
# Faults with the real binaries: pagepoold on 127.0.0.1:<free port> under full load from several
# ppctl traffic processes (steady, hold, leak, burst: every core busy), then
#   - SIGTERM, and in a second round SIGINT: the daemon exits 0 within the grace period, prints its
#     summary with zero violations and the pages it unmapped; the load generators end (they fail:
#     the daemon went away, which ppctl sees and stops at: tests/fault/daemon_lost_test.sh)
#     instead of hanging;
#   - a ppctl holding pages killed with SIGKILL mid-stream: its pages stay in flight (the rule in
#     the .proto), DestroyPool unmaps them, zero violations, nothing stays mapped.
# Every process is bounded (ppctl by its --duration, every wait by `timeout`; the exit trap kills
# what is left, by PID); the daemon listens on 127.0.0.1 only.
# Usage: signal_test.sh PAGEPOOLD PPCTL
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
fail() { echo "FAIL: $*" >&2; echo "--- daemon log:" >&2; tail -40 "$tmp/log" >&2; exit 1; }
ok() { echo "ok: $*"; }

start_daemon() {
  "$PAGEPOOLD" --listen 127.0.0.1:0 --metrics-listen off --memory-gib 1 --shutdown-grace-ms 1000 \
    >"$tmp/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "(port " "$tmp/log" && break; sleep 0.1; done
  port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/log" | head -1)
  [ -n "$port" ] || fail "pagepoold did not report its port"
}
pp() { timeout 30 "$PPCTL" --target "127.0.0.1:$port" "$@"; }

# One round: full load, then the signal.
signal_round() {
  local sig=$1
  start_daemon
  loads=()
  local i=0
  for pattern in steady hold leak burst; do
    "$PPCTL" --target "127.0.0.1:$port" traffic "$pattern" --duration 8 --streams 2 \
      --hold 0.5 --max-held 4096 >"$tmp/load.$i" 2>&1 &
    loads+=($!)
    i=$((i + 1))
  done
  sleep 2
  grep -q "pagepoold summary" "$tmp/log" && fail "daemon ended before the signal"
  kill -"$sig" "$pid"
  local rc=0
  timeout 30 tail --pid="$pid" -f /dev/null || fail "SIG$sig: the daemon did not exit in 30 s"
  wait "$pid" || rc=$?
  pid=""
  [ "$rc" -eq 0 ] || fail "SIG$sig: exit status $rc"
  grep -q "pagepoold: SIG$sig, shutting down" "$tmp/log" || fail "SIG$sig: not logged"
  grep -q "pagepoold summary" "$tmp/log" || fail "SIG$sig: no summary"
  grep -q "violations:                  0" "$tmp/log" || fail "SIG$sig: violations"
  local unmapped
  unmapped=$(sed -n 's/.*pages unmapped at shutdown: *\([0-9]*\)/\1/p' "$tmp/log")
  [ "${unmapped:-0}" -gt 0 ] || fail "SIG$sig: no page unmapped at shutdown (was there load?)"
  local batches
  batches=$(sed -n 's/.*traffic: *\([0-9]*\) batches.*/\1/p' "$tmp/log")
  [ "${batches:-0}" -gt 100 ] || fail "SIG$sig: only ${batches:-0} batches: no load"
  for p in "${loads[@]}"; do
    timeout 30 tail --pid="$p" -f /dev/null || fail "SIG$sig: a load generator hangs"
    wait "$p" || true
  done
  loads=()
  ok "SIG$sig under load ($batches batches): exit 0, summary, $unmapped pages unmapped, 0 violations"
}

signal_round TERM
signal_round INT

# A client killed with pages held: they stay in flight until the pool is destroyed.
start_daemon
pp create-device --name victim >/dev/null
pool=$(pp create-pool 1 | sed -n 's/^pool \([0-9]*\) on device 1.*/\1/p')
[ -n "$pool" ] || fail "create-pool"
"$PPCTL" --target "127.0.0.1:$port" traffic leak --pool-id "$pool" --duration 30 \
  --streams 2 --max-held 3072 >"$tmp/leak" 2>&1 &
leak=$!
loads=("$leak")
held=0
for _ in $(seq 100); do
  held=$(pp --json get-pool "$pool" | sed -n 's/.*"inflight": "\{0,1\}\([0-9]*\).*/\1/p' | head -1)
  [ "${held:-0}" -ge 6000 ] && break
  sleep 0.1
done
[ "${held:-0}" -ge 6000 ] || fail "the leaking client never held 6000 pages (inflight ${held:-0})"
kill -KILL "$leak"
wait "$leak" 2>/dev/null || true
loads=()
kill -0 "$leak" 2>/dev/null && fail "the leaking client survived SIGKILL"
sleep 0.5
inflight=$(pp --json get-pool "$pool" | sed -n 's/.*"inflight": "\{0,1\}\([0-9]*\).*/\1/p' | head -1)
[ "$inflight" -ge 6000 ] || fail "pages of the killed client left flight: inflight $inflight"
ok "killed client: $inflight pages stay in flight"
pp destroy-pool "$pool" >"$tmp/destroy" || fail "destroy-pool: $(cat "$tmp/destroy")"
pp --json get-domain 1 >"$tmp/domain"
grep -q '"total": "\{0,1\}0"\{0,1\}' "$tmp/domain" || ! grep -q '"total"' "$tmp/domain" \
  || fail "violations after destroy: $(cat "$tmp/domain")"
grep -q '"live_mappings": "\{0,1\}[1-9]' "$tmp/domain" && fail "mappings left: $(cat "$tmp/domain")"
ok "destroy-pool unmapped them: $(head -1 "$tmp/destroy"); no violation, nothing mapped"
kill -TERM "$pid"
wait "$pid" || fail "exit status $? after SIGTERM"
pid=""
echo PASS
