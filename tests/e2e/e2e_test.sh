#!/usr/bin/env bash
# End-to-end test: the real pagepoold on a free port (127.0.0.1:0, port read back from its first
# line), driven by the real ppctl: device and pool calls, an error, global options after the
# subcommand, health, traffic patterns (steady, --window, destroy-under-traffic for the whole
# duration with zero violations and its destroy event; NONE + unbind must show violations and exit
# 3), ppctl report, the /metrics endpoint, then SIGTERM: exit status 0 and the summary, and health
# then exits 1.
# Usage: e2e_test.sh PAGEPOOLD PPCTL
set -euo pipefail
PAGEPOOLD=$1
PPCTL=$2
tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log:" >&2; cat "$tmp/log" >&2; exit 1; }
ok() { echo "ok: $*"; }

"$PAGEPOOLD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --memory-gib 1 >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "(port " "$tmp/log" && break; sleep 0.1; done
port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/log" | head -1)
mport=$(sed -n 's/.*metrics on http port \([0-9]*\).*/\1/p' "$tmp/log" | head -1)
[ -n "$port" ] || fail "pagepoold did not report its port"
pp() { "$PPCTL" --target "127.0.0.1:$port" "$@"; }

pp create-device --name e2e0 --iommu-mode strict | grep -q 'device 1 "e2e0" (ifindex 1): bound' \
  || fail "create-device"
ok "create-device"
pool=$(pp create-pool 1 --napi-id 3 | sed -n 's/^pool \([0-9]*\) on device 1.*/\1/p')
[ -n "$pool" ] || fail "create-pool"
ok "create-pool -> pool $pool"
handles=$(pp allocate "$pool" --count 4 | awk '{print $1}')
[ "$(echo "$handles" | wc -w)" -eq 4 ] || fail "allocate"
ok "allocate 4: $(echo $handles)"
pp --json get-pool "$pool" | grep -q '"napi_id": 3' || fail "get-pool --json"
ok "get-pool --json"
pp return "$pool" $handles | grep -q "returned: 4 pages, 4 unmapped" || fail "return"
ok "return"
# A bad command line exits 2 with a message (it used to exit with CLI11's own codes, 104-120).
# A negative or too large 64-bit id is refused too (CLI11 wrapped -1 to 2^64-1 and clamped 2^64).
for bad in "get-device abc" "allocate 1 --count -5" "get-device" "no-such-subcommand" \
           "get-device -1" "get-device 18446744073709551616" "dump-page-table 1 --start -4096"; do
  rc=0
  pp $bad >"$tmp/bad.txt" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || fail "ppctl $bad should exit 2, got $rc: $(cat "$tmp/bad.txt")"
  [ -s "$tmp/bad.txt" ] || fail "ppctl $bad printed no message"
done
ok "bad command lines exit 2"
if pp return "$pool" $handles 2>"$tmp/err"; then fail "double return accepted"; fi
grep -q "FAILED_PRECONDITION" "$tmp/err" || fail "double return: $(cat "$tmp/err")"
ok "double return refused: $(cat "$tmp/err")"
# Fragments: allocate --frag-size prints FRAME:GEN@OFFSET/SIZE handles; they go back one by one
# (the page with its last), a double return is refused, list-inflight shows pp_ref_count.
frags=$(pp allocate "$pool" --count 2 --frag-size 2000 | awk '{print $1}')
[ "$(echo "$frags" | grep -c '^[0-9]*:[0-9]*@[0-9]*/2048$')" -eq 2 ] || fail "allocate --frag-size: $frags"
first=$(echo "$frags" | head -1)
second=$(echo "$frags" | tail -1)
# Both fit in one page, the pool's current frag page: its count holds the bias not handed out.
pp list-inflight "$pool" | grep -q "fragmented, pp_ref_count 32767, frag_refs 2" \
  || fail "list-inflight pp_ref_count: $(pp list-inflight "$pool" | grep fragmented)"
pp return "$pool" "$first" | grep -q "returned: 0 pages, 0 unmapped by this call, 1 fragments" \
  || fail "return of a fragment"
if pp return "$pool" "$first" 2>"$tmp/err"; then fail "double fragment return accepted"; fi
grep -q "FAILED_PRECONDITION: .*fragment #0: no fragment" "$tmp/err" \
  || fail "double fragment return: $(cat "$tmp/err")"
pp recycle "$pool" "$second" | grep -q ", 1 fragments (0 pages by their last fragment)" \
  || fail "recycle of the last fragment of the current frag page (the pool keeps its bias)"
pp get-pool "$pool" | grep -q "frags:   pages 1, refs 0, put_refused 1" \
  || fail "get-pool frags: $(pp get-pool "$pool")"
ok "fragments: allocate, return, double return refused, recycle, get-pool"
if pp get-pool 999 2>"$tmp/err"; then fail "get-pool 999 accepted"; fi
grep -q "NOT_FOUND" "$tmp/err" || fail "get-pool 999: $(cat "$tmp/err")"
ok "unknown pool: NOT_FOUND"
pp list-devices | grep -q "e2e0" || fail "list-devices"
pp get-domain 1 | grep -q "violations:  0" || fail "get-domain"
ok "list-devices, get-domain"

# Global options are accepted after the subcommand too (the load-test form, `ppctl traffic steady
# --target HOST:PORT`), and in between its arguments.
"$PPCTL" get-pool "$pool" --json --target "127.0.0.1:$port" | grep -q '"napi_id": 3' \
  || fail "get-pool with --json --target after the subcommand"
"$PPCTL" traffic --target "127.0.0.1:$port" steady --duration 1 --streams 1 \
  --out "$tmp/late.json" --json >"$tmp/late.txt" \
  || fail "traffic with --target after the subcommand: $(cat "$tmp/late.txt")"
grep -q '"errors": 0,' "$tmp/late.json" || fail "traffic with --target after the subcommand: errors"
grep -q '"page_ops_per_sec": ' "$tmp/late.txt" || fail "traffic ... --json: no JSON summary"
ok "global options after the subcommand"

# ppctl health (the containers' health check): SERVING and exit 0; an unknown service exits 1.
[ "$("$PPCTL" health --target "127.0.0.1:$port")" = SERVING ] || fail "health: not SERVING"
pp --json health | grep -q '"status": "SERVING"' || fail "health --json"
rc=0
pp health --service no.such.Service 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "health of an unknown service should exit 1, got $rc"
grep -q "NOT_FOUND" "$tmp/err" || fail "health of an unknown service: $(cat "$tmp/err")"
ok "health: SERVING, exit 0; unknown service: NOT_FOUND, exit 1"

pp traffic steady --duration 2 --streams 2 --batch 64 --out "$tmp/steady.json" >"$tmp/steady.txt" \
  || fail "traffic steady: $(cat "$tmp/steady.txt")"
cat "$tmp/steady.txt"
for key in page_ops_per_sec rpc_p50_us rpc_p99_us errors violations; do
  grep -q "\"$key\": " "$tmp/steady.json" || fail "result.json lacks $key"
done
grep -q '"errors": 0,' "$tmp/steady.json" || fail "steady had errors"
ok "traffic steady"

pp traffic destroy-under-traffic --duration 2 --out "$tmp/dut.json" >"$tmp/dut.txt" \
  || fail "destroy-under-traffic: $(cat "$tmp/dut.txt")"
cat "$tmp/dut.txt"
grep -q '"violations": 0,' "$tmp/dut.json" || fail "destroy-under-traffic violations"
ok "destroy-under-traffic (destroy pool): zero violations"
# It runs the whole duration (traffic goes on to a fresh pool) with the destroy on the timeline.
python3 - "$tmp/dut.json" <<'PY' || fail "destroy-under-traffic result: $(head -c 2000 "$tmp/dut.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["duration_s"] >= 1.95, r["duration_s"]
assert [e["kind"] for e in r["events"]] == ["destroy"], r["events"]
# Scheduled at 1.0 s; a loaded machine (2 vCPUs shared with builds) delays the client's thread.
assert 0.8 < r["events"][0]["t_s"] < 1.6, r["events"]
assert r["fresh_pool_id"] not in (0, r["pool_id"]), r["fresh_pool_id"]
# A sample every 100 ms: 20 on an idle machine; late ticks on a loaded one give fewer.
assert r["timeline"][-1]["t_s"] > 1.8 and len(r["timeline"]) >= 10, len(r["timeline"])
for key in ("t_s", "page_ops_per_sec", "rpc_p50_us", "rpc_p99_us", "held", "inflight",
            "table_bytes", "errors"):
    assert all(key in s for s in r["timeline"]), key
assert r["strategy"] == "xarray" and r["iommu_mode"] == "strict" and r["window"] == 1
PY
ok "destroy-under-traffic: the whole duration, destroy event at half time, fresh pool"

# --window: batches in flight per stream; 1..256.
pp traffic steady --duration 1 --window 8 --out "$tmp/w8.json" >"$tmp/w8.txt" \
  || fail "traffic --window 8: $(cat "$tmp/w8.txt")"
grep -q '"window": 8,' "$tmp/w8.json" && grep -q '"errors": 0,' "$tmp/w8.json" \
  || fail "traffic --window 8 result"
rc=0
pp traffic steady --window 0 >"$tmp/w0.txt" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "traffic --window 0 should exit 2, got $rc"
ok "traffic --window 8; --window 0 refused"

# ppctl report (no daemon needed: a target nobody listens on).
"$PPCTL" report "$tmp/steady.json" "$tmp/dut.json" -o "$tmp/report.html" --target 127.0.0.1:1 \
  >"$tmp/report.txt" || fail "ppctl report: $(cat "$tmp/report.txt")"
grep -q 'id="pp-data"' "$tmp/report.html" && grep -q 'uPlot' "$tmp/report.html" \
  || fail "ppctl report: not the report page"
ok "ppctl report: $(cat "$tmp/report.txt")"
pp traffic destroy-under-traffic --duration 2 --unbind >"$tmp/dut2.txt" \
  || fail "destroy-under-traffic --unbind: $(cat "$tmp/dut2.txt")"
grep -q "violations: 0 (clean)" "$tmp/dut2.txt" || fail "unbind violations"
ok "destroy-under-traffic --unbind (xarray): zero violations"
rc=0
pp traffic destroy-under-traffic --duration 2 --unbind --strategy none >"$tmp/dut3.txt" || rc=$?
[ "$rc" -eq 3 ] || fail "NONE + unbind should exit 3 (violations), got $rc: $(cat "$tmp/dut3.txt")"
grep -q "(UNSAFE)" "$tmp/dut3.txt" || fail "NONE + unbind should report violations"
ok "destroy-under-traffic --unbind --strategy none: violations reported, exit 3"

if [ -n "$mport" ]; then
  exec 3<>"/dev/tcp/127.0.0.1/$mport"
  printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n' >&3
  cat <&3 >"$tmp/metrics"
  exec 3<&-
  grep -q "^# TYPE pagepool_pool_inflight gauge" "$tmp/metrics" || fail "/metrics"
  grep -q 'pagepool_rpc_finished_total{method="Traffic",code="OK"}' "$tmp/metrics" \
    || fail "/metrics rpc counters"
  ok "/metrics"
fi

# Pages held at shutdown are unmapped by the teardown.
pool2=$(pp create-pool 1 | sed -n 's/^pool \([0-9]*\) on.*/\1/p')
pp allocate "$pool2" --count 5 >/dev/null
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || fail "pagepoold exit status $rc after SIGTERM"
grep -q "pagepoold summary" "$tmp/log" || fail "no summary"
grep -q "pages in flight at shutdown: 5" "$tmp/log" || fail "summary: in flight at shutdown"
grep -q "pages unmapped at shutdown:  5" "$tmp/log" || fail "summary: unmapped at shutdown"
grep -q "Traffic " "$tmp/log" || fail "summary: rpc counts"
sed -n '/pagepoold summary/,$p' "$tmp/log"
ok "SIGTERM: exit 0 and summary"
rc=0
pp health --timeout-ms 2000 >"$tmp/health.txt" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "health, daemon gone: exit 1 expected, got $rc: $(cat "$tmp/health.txt")"
ok "health with the daemon gone: exit 1 ($(cat "$tmp/health.txt"))"
echo PASS
