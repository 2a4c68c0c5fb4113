#!/usr/bin/env bash
# End-to-end test of `ppctl compare` against the real pagepoold (port 0, read back from its log):
# with small numbers, the JSON and the table must show the seed-002 invariants -- pages unmapped
# equal to the pages left in flight for xarray and scan and 0 for none; frames scanned 0 for xarray
# and none and > 0 for scan; index bytes > 0 for xarray only; violations 0 for xarray and scan and
# > 0 for none; the same traffic (batches, page ops, the pool's stats) under every strategy; every
# device unbound and no page left behind. Then --record / --replay give the same traffic, and the
# errors: a daemon that is not there, a daemon limit (named with the flag to raise), a bad trace.
# Usage: compare_test.sh PAGEPOOLD PPCTL
set -euo pipefail
PAGEPOOLD=$1
PPCTL=$2
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log:" >&2; cat "$tmp"/log* >&2; exit 1; }
ok() { echo "ok: $*"; }

# start_daemon NAME ARGS...: sets port and mport.
start_daemon() {
  local name=$1
  shift
  "$PAGEPOOLD" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 "$@" >"$tmp/log.$name" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "(port " "$tmp/log.$name" && break; sleep 0.1; done
  port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/log.$name" | head -1)
  mport=$(sed -n 's/.*metrics on http port \([0-9]*\).*/\1/p' "$tmp/log.$name" | head -1)
  [ -n "$port" ] && [ -n "$mport" ] || fail "pagepoold $name did not report its ports"
}

start_daemon main --memory-gib 1
pp() { "$PPCTL" --target "127.0.0.1:$port" "$@"; }
# A destroyed pool whose last page came back is deleted by the next 1 s release-retry tick.
no_pools_within_3s() {
  for _ in $(seq 30); do [ "$(pp list-pools)" = "no pools" ] && return 0; sleep 0.1; done
  return 1
}
small=(--inflight 2048 --batches 64 --batch 64 --working-set 512 --warmup 1
       --metrics "127.0.0.1:$mport")

pp compare "${small[@]}" --repeat 2 --json --record "$tmp/t.trace" >"$tmp/c.json" 2>"$tmp/c.err" \
  || fail "compare --json: $(cat "$tmp/c.err")"
python3 - "$tmp/c.json" <<'PY' || fail "compare --json: $(cat "$tmp/c.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["inflight"] == 2048 and r["repeat"] == 2 and r["warmup"] == 1, r
rows = {s["strategy"]: s for s in r["strategies"]}
assert sorted(rows) == ["none", "scan", "xarray"], rows.keys()
traffic = set()
for name, s in rows.items():
    assert len(s["rounds"]) == 2, (name, s["rounds"])
    for x in s["rounds"]:
        traffic.add((x["batches"], x["page_ops"], x["alloc_fast"], x["alloc_slow"],
                     x["recycle_cached"], x["recycle_ring"], x["recycle_released"]))
        assert x["batches"] == r["trace_batches"] and x["page_ops"] == r["trace_page_ops"], x
        assert x["recycle_cached"] > 0 and x["alloc_slow"] > 0, x
        assert x["inflight_at_destroy"] == 2048, (name, x)
        assert x["late_returned"] == 2048, (name, x)
        assert x["destroy_ns"] > 0 and x["traffic_ns"] > 0 and x["ns_per_page_op"] > 0, x
        if name == "none":
            assert x["pages_unmapped"] == 0, x
            assert x["frames_scanned"] == 0, x
            assert x["violations"] > 0 and x["live_at_unbind"] == 2048, x
            assert x["call_after_unbind"] == 2048, x
        else:
            assert x["pages_unmapped"] == 2048, (name, x)
            assert x["violations"] == 0, (name, x)
        if name == "scan":
            assert x["frames_scanned"] > 0, x
        if name == "xarray":
            assert x["frames_scanned"] == 0, x
            assert x["index_bytes"] > 0, x
        else:
            assert x["index_bytes"] == 0, (name, x)
    assert s["destroy_ns_best"] <= s["destroy_ns_median"], s
    assert s["ns_per_page_op_best"] <= s["ns_per_page_op_median"], s
# The same traffic under every strategy: the same batches and page ops, and the pools saw it the
# same way (their stats agree).
assert len(traffic) == 1, traffic
assert rows["none"]["tracking_ratio_best"] == 1.0, rows["none"]
for name in ("xarray", "scan"):
    assert rows[name]["tracking_ratio_best"] > 0, rows[name]
PY
ok "compare --json: the seed-002 invariants hold, the same traffic everywhere"

# Nothing left: the 7 devices the compare made (1 warm-up + 3 strategies x 2 rounds) unbound and
# deleted, no pool left (the held pages were returned).
pp --json list-devices >"$tmp/devices.json"
python3 - "$tmp/devices.json" <<'PY' || fail "devices left: $(cat "$tmp/devices.json")"
import json, sys
d = json.load(open(sys.argv[1])).get("devices", [])
assert len(d) == 0, d
PY
no_pools_within_3s || fail "pools left: $(pp list-pools)"
ok "every device deleted, no pool left"

# The text table: a header and one aligned row a strategy.
pp compare "${small[@]}" --repeat 1 >"$tmp/c.txt" 2>"$tmp/c.err" \
  || fail "compare: $(cat "$tmp/c.err")"
cat "$tmp/c.txt"
for s in xarray scan none; do grep -q "^$s " "$tmp/c.txt" || fail "table: no $s row"; done
grep -q "^strategy .*destroy .*pages unmapped .*frames scanned .*tracking cost .*index bytes .*violations" \
  "$tmp/c.txt" || fail "table: header"
[ "$(grep -E '^(strategy|xarray|scan|none) ' "$tmp/c.txt" | awk '{print length($0)}' | sort -u | wc -l)" -eq 1 ] \
  || fail "table: rows not aligned"
grep -q "^none .*1.00x (baseline)" "$tmp/c.txt" || fail "table: none is the baseline"
ok "compare: the table"

# --replay of the recorded trace: the same traffic.
head -1 "$tmp/t.trace" | grep -qx "ppctl-compare-trace v1" || fail "--record: no header"
pp compare --replay "$tmp/t.trace" --repeat 1 --warmup 0 --metrics off --json >"$tmp/r.json" \
  2>"$tmp/r.err" || fail "compare --replay: $(cat "$tmp/r.err")"
python3 - "$tmp/c.json" "$tmp/r.json" <<'PY' || fail "--replay differs: $(cat "$tmp/r.json")"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for k in ("trace_batches", "trace_page_ops", "inflight"):
    assert a[k] == b[k], (k, a[k], b[k])
assert b["traffic"].startswith("replay "), b["traffic"]
ra = {s["strategy"]: s["rounds"][0] for s in a["strategies"]}
rb = {s["strategy"]: s["rounds"][0] for s in b["strategies"]}
for name in ra:
    for k in ("page_ops", "alloc_fast", "alloc_slow", "recycle_cached", "recycle_ring",
              "pages_unmapped"):
        assert ra[name][k] == rb[name][k], (name, k, ra[name][k], rb[name][k])
    assert rb[name]["index_bytes"] is None, rb[name]  # --metrics off
PY
ok "compare --replay: the recorded traffic again"

# Errors. A trace that is not one: exit 2 with the file and line.
printf 'ppctl-compare-trace v1\nA 4\nR 9\n' >"$tmp/bad.trace"
rc=0
pp compare --replay "$tmp/bad.trace" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "bad trace: exit 2 expected, got $rc"
grep -q "bad.trace line 3: position 9" "$tmp/err" || fail "bad trace: $(cat "$tmp/err")"
ok "bad trace: $(cat "$tmp/err")"
# No daemon there: exit 1, UNAVAILABLE, and what to check.
rc=0
"$PPCTL" compare --target 127.0.0.1:1 --metrics off --inflight 16 --timeout-ms 2000 \
  2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "no daemon: exit 1 expected, got $rc"
grep -q "UNAVAILABLE" "$tmp/err" && grep -q "is pagepoold running" "$tmp/err" \
  || fail "no daemon: $(cat "$tmp/err")"
ok "no daemon: $(cat "$tmp/err")"
# A daemon limit: the message names the flag to raise.
start_daemon limits --memory-gib 1 --max-held-per-stream 1500 --max-devices 3
rc=0
pp compare --inflight 2048 --metrics off 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] || fail "held limit: exit 1 expected, got $rc"
grep -q "RESOURCE_EXHAUSTED" "$tmp/err" && grep -q "higher --max-held-per-stream" "$tmp/err" \
  || fail "held limit: $(cat "$tmp/err")"
ok "held limit: $(cat "$tmp/err")"
rc=0
pp compare --inflight 256 --batches 8 --batch 64 --working-set 512 --metrics off 2>"$tmp/err" \
  || rc=$?
[ "$rc" -eq 1 ] || fail "device limit: exit 1 expected, got $rc"
grep -q "higher --max-devices" "$tmp/err" || fail "device limit: $(cat "$tmp/err")"
ok "device limit: $(cat "$tmp/err")"
no_pools_within_3s || fail "pools left after the refusals: $(pp list-pools)"
ok "nothing left after the refusals"
echo PASS
