#!/usr/bin/env bash
# ppctl report, rendered in headless Chromium: real results from the real pagepoold (on
# 127.0.0.1:0, port read back from its first line) driven by the real ppctl — a short steady run
# with --window 4 and destroy-under-traffic under XARRAY and SCAN — plus a hand-written fixture
# whose peak is 2,653,714 ops/s and whose strings hold "</script>". For each page: every chart drew
# the expected series, its y-axis ticks cover the data and read as report.js formats them
# (check_report.py dom), and the screenshot is not blank (check_report.py png). Also ppctl
# report's exit statuses: 1 for an unreadable or invalid input, 2 for a bad command line.
# Skips (exit 77) when chromium is not installed (Debian package `chromium`).
# Usage: report_test.sh PAGEPOOLD PPCTL   (REPORT_TEST_KEEP=DIR keeps the pages and screenshots)
set -euo pipefail
PAGEPOOLD=$1
PPCTL=$2
here=$(cd "$(dirname "$0")" && pwd)
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  echo "SKIP: chromium is not installed (apt-get install chromium); the report page was not drawn"
  exit 77
fi
tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  if [ -n "${REPORT_TEST_KEEP:-}" ]; then mkdir -p "$REPORT_TEST_KEEP" && cp "$tmp"/*.{html,png,json} "$REPORT_TEST_KEEP"/ 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$tmp/log" ] && { echo "--- daemon log:" >&2; cat "$tmp/log" >&2; }; exit 1; }
ok() { echo "ok: $*"; }

# Draws $1.html: its DOM after the scripts ran to $1.dom, a 1280x1800 screenshot to $1.png.
render() {
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=5000 \
    --window-size=1280,1800 --dump-dom "file://$tmp/$1.html" >"$tmp/$1.dom" 2>"$tmp/$1.chromium.log" \
    || fail "chromium --dump-dom $1.html: $(tail -5 "$tmp/$1.chromium.log")"
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=5000 \
    --window-size=1280,1800 --screenshot="$tmp/$1.png" "file://$tmp/$1.html" \
    >>"$tmp/$1.chromium.log" 2>&1 || fail "chromium --screenshot $1.html"
  [ -s "$tmp/$1.png" ] || fail "no screenshot of $1.html"
}

"$PAGEPOOLD" --listen 127.0.0.1:0 --metrics-listen off --memory-gib 1 >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "(port " "$tmp/log" && break; sleep 0.1; done
port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/log" | head -1)
[ -n "$port" ] || fail "pagepoold did not report its port"
pp() { "$PPCTL" --target "127.0.0.1:$port" "$@"; }

pp traffic steady --duration 1.5 --streams 2 --batch 64 --window 4 --out "$tmp/steady.json" \
  >/dev/null || fail "traffic steady"
for s in xarray scan; do
  pp traffic destroy-under-traffic --duration 2 --strategy "$s" --out "$tmp/dut-$s.json" \
    --html "$tmp/dut-$s.html" >/dev/null || fail "destroy-under-traffic --strategy $s"
done
ok "results: steady (window 4), destroy-under-traffic under xarray and scan"

# The real results side by side; one real result alone (traffic --html); the fixture.
"$PPCTL" report "$tmp/steady.json" "$tmp/dut-xarray.json" "$tmp/dut-scan.json" \
  -o "$tmp/compare.html" --title "report_test" >/dev/null || fail "ppctl report"
cp "$here/fixtures/peak_2653714.json" "$tmp/"
"$PPCTL" report "$tmp/peak_2653714.json" -o "$tmp/fixture.html" >/dev/null || fail "report fixture"
# Three script elements (data, uPlot, report.js): the fixture's "</script>" did not end one.
[ "$(grep -o '</script>' "$tmp/fixture.html" | wc -l)" -eq 3 ] || fail "</script> not escaped"
ok "ppctl report wrote the pages"

render compare
python3 "$here/check_report.py" dom "$tmp/compare.dom" 3 || fail "compare.html DOM"
python3 "$here/check_report.py" png "$tmp/compare.png" 0.03 || fail "compare.png"
render dut-xarray
python3 "$here/check_report.py" dom "$tmp/dut-xarray.dom" 1 || fail "dut-xarray.html DOM"
grep -q 'data-charts-drawn="4"' "$tmp/dut-xarray.dom" || fail "dut-xarray.html: not 4 charts drawn"
render fixture
python3 "$here/check_report.py" dom "$tmp/fixture.dom" 1 M || fail "fixture.html DOM"
python3 "$here/check_report.py" png "$tmp/fixture.png" 0.03 || fail "fixture.png"
grep -q '<title>pagepoold load report</title>' "$tmp/fixture.dom" || fail "fixture: title changed"
grep -q '&quot;3M&quot;\]' "$tmp/fixture.dom" || fail "fixture: no \"3M\" tick above the 2.65M peak"
ok "every chart drew, axes cover the data, screenshots not blank"

# Exit statuses: unreadable or invalid input 1, bad command line 2; no daemon needed.
rc=0; "$PPCTL" report "$tmp/missing.json" -o "$tmp/x.html" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "cannot read .*missing.json" "$tmp/err" || fail "missing input: rc $rc"
echo '{"pattern": "steady"' >"$tmp/bad.json"
rc=0; "$PPCTL" report "$tmp/bad.json" -o "$tmp/x.html" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "bad.json: not a ppctl traffic result" "$tmp/err" || fail "bad input: rc $rc"
rc=0; "$PPCTL" report "$tmp/steady.json" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "report without -o should exit 2, got $rc"
rc=0; "$PPCTL" report -o "$tmp/x.html" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "report without results should exit 2, got $rc"
[ ! -e "$tmp/x.html" ] || fail "a failed report wrote its page"
ok "ppctl report: exit 1 for bad input, 2 for a bad command line"
echo PASS
