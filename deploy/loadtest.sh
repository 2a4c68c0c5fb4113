#!/usr/bin/env bash
# One command for a containerized load test of pagepoold:
#
#   bash deploy/loadtest.sh [SCENARIO]        SCENARIO: a name in deploy/scenarios/ (default: steady)
#                                             or the path of a scenario file
#   bash deploy/loadtest.sh --list            the scenarios and what they do
#
# Builds the images (the base with deploy/base-image.sh, then deploy/Containerfile and
# deploy/prometheus/Containerfile; layer-cached, so later runs take seconds), and for each strategy
# of the scenario: starts deploy/compose.yaml (daemon, GENERATORS load generators, Prometheus), waits
# until Prometheus scrapes the daemon, starts the generators, waits for them, collects each one's JSON
# result and the Prometheus series over the run, stops the stack. Then merges everything into
# results/<UTC time>/merged.json, prints a summary, and exits non-zero on any error, on any violation a
# scenario does not expect, or when something is missing (a generator's result, Prometheus data).
# Everything started is torn down on exit, error or Ctrl-C.
#
# Environment: ENGINE=podman|docker (default: podman when installed), RESULTS_ROOT (default
# deploy/results), PROJECT (compose project, default pplt), PROM_PORT (host port of Prometheus,
# default 19090), BASE_IMAGE (default localhost/debian:bookworm-slim with podman,
# debian:bookworm-slim with docker), NO_BUILD=1 (use the images as they are), KEEP_STACK=1 (leave
# the last stack running for a look, then `podman-compose -p pplt down` in deploy/).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
PY=/usr/bin/python3
log() { echo "loadtest: $*"; }
die() { echo "loadtest: error: $*" >&2; exit 1; }

if [ "${1:-}" = "--list" ]; then
  for f in "$here"/scenarios/*.env; do
    printf '%-18s %s\n' "$(basename "$f" .env)" "$(sed -n 's/^# *//p' "$f" | head -1)"
  done
  exit 0
fi
case "${1:-}" in -h|--help) sed -n '2,24p' "$0"; exit 0 ;; esac
scenario_arg="${1:-steady}"
if [ -f "$scenario_arg" ]; then scenario_file="$scenario_arg"
elif [ -f "$here/scenarios/$scenario_arg.env" ]; then scenario_file="$here/scenarios/$scenario_arg.env"
else die "no scenario '$scenario_arg' (deploy/scenarios/: $(cd "$here/scenarios" && ls ./*.env | sed 's|^\./||; s|\.env$||' | tr '\n' ' '))"
fi
scenario="$(basename "$scenario_file" .env)"

# --- the scenario: KEY=VALUE lines (shell syntax, see deploy/scenarios/README.md) -----------------
PATTERN=steady GENERATORS=2 STREAMS=2 BATCH=64 WINDOW=1 DURATION=10 STRATEGIES=xarray IOMMU_MODE=strict
TRAFFIC_ARGS="" EXPECT_VIOLATIONS="" MEMORY_GIB=4 DESCRIPTION=""
# shellcheck disable=SC1090
. "$scenario_file"
for v in GENERATORS STREAMS BATCH WINDOW DURATION MEMORY_GIB; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$scenario_file: $v must be a positive integer, not '${!v}'"
done
for s in $STRATEGIES $EXPECT_VIOLATIONS; do
  case "$s" in xarray|scan|none) ;; *) die "$scenario_file: unknown strategy '$s' (xarray, scan, none)" ;; esac
done

# --- the engine --------------------------------------------------------------------------------
ENGINE="${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}"
case "$ENGINE" in
  podman)
    command -v podman >/dev/null || die "podman is missing (apt-get install -y podman runc podman-compose; see deploy/README.md)"
    command -v podman-compose >/dev/null || die "podman-compose is missing (apt-get install -y podman-compose)"
    compose=(podman-compose)
    BASE_IMAGE="${BASE_IMAGE:-localhost/debian:bookworm-slim}" ;;
  docker)
    docker compose version >/dev/null 2>&1 || die "docker compose (v2) is missing"
    compose=(docker compose)
    BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}" ;;
  *) die "ENGINE must be podman or docker, not '$ENGINE'" ;;
esac
[ -x "$PY" ] || die "$PY is missing (apt-get install -y python3)"
PROJECT="${PROJECT:-pplt}"
PROM_PORT="${PROM_PORT:-19090}"
PAGEPOOLD_IMAGE="${PAGEPOOLD_IMAGE:-localhost/pagepoold:latest}"
PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-localhost/pagepool-prometheus:latest}"
export BASE_IMAGE PAGEPOOLD_IMAGE PROMETHEUS_IMAGE PROM_PORT

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="${RESULTS_ROOT:-$here/results}/$stamp-$scenario"
mkdir -p "$out"
cp "$scenario_file" "$out/scenario.env"
log "scenario $scenario: ${DESCRIPTION:-$PATTERN}"
log "results in $out"

# --- teardown, also on error and Ctrl-C ----------------------------------------------------------
stack_up=0
compose_env=()
teardown() {
  [ "$stack_up" -eq 1 ] || return 0
  stack_up=0
  if [ "${KEEP_STACK:-0}" = 1 ]; then log "KEEP_STACK=1: leaving project $PROJECT up"; return 0; fi
  (cd "$here" && env "${compose_env[@]}" "${compose[@]}" -p "$PROJECT" down -t 5) >>"$out/compose.log" 2>&1 || true
  # Whatever is left of the project (an interrupted `up`), and the network podman-compose 1.0.3
  # leaves behind.
  local left
  left="$("$ENGINE" ps -a -q --filter "label=com.docker.compose.project=$PROJECT")"
  [ -z "$left" ] || "$ENGINE" rm -f $left >/dev/null 2>&1 || true
  "$ENGINE" network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
}
on_signal() { echo; log "interrupted, tearing down"; teardown; exit 130; }
trap teardown EXIT
trap on_signal INT TERM

# --- images (deploy/build-images.sh) ---------------------------------------------------------------
if [ "${NO_BUILD:-0}" != 1 ]; then
  t=$(date +%s)
  ENGINE="$ENGINE" bash "$here/build-images.sh" "$out" \
    || die "image build failed (logs: $out/build-*.log)"
  log "images ready in $(( $(date +%s) - t )) s"
fi

# --- helpers -------------------------------------------------------------------------------------
prom="http://127.0.0.1:$PROM_PORT"
# prom_get PATH QUERY [START END STEP]: GET from the Prometheus HTTP API, JSON on stdout.
prom_get() {
  "$PY" - "$prom" "$@" <<'PYEOF'
import json, sys, urllib.parse, urllib.request
base, path, query = sys.argv[1], sys.argv[2], sys.argv[3]
params = {"query": query}
if len(sys.argv) > 4:
    params.update(start=sys.argv[4], end=sys.argv[5], step=sys.argv[6])
url = base + path + "?" + urllib.parse.urlencode(params)
with urllib.request.urlopen(url, timeout=10) as r:
    sys.stdout.write(r.read().decode())
PYEOF
}
# The number of result series of an instant query (0 when Prometheus does not answer).
prom_count() {
  prom_get /api/v1/query "$1" 2>/dev/null \
    | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(len(d["data"]["result"]))' 2>/dev/null || echo 0
}
containers_of() {  # service -> container ids
  "$ENGINE" ps -a -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1"
}
# Prometheus series saved for each run: name, then the PromQL query.
queries=(
  "up|up{job=\"pagepoold\"}"
  "pool_inflight|sum(pagepool_pool_inflight)"
  "pool_inflight_by_pool|pagepool_pool_inflight"
  "domain_table_bytes|sum(pagepool_domain_table_bytes)"
  "domain_table_bytes_by_device|pagepool_domain_table_bytes"
  "domain_violations|sum(pagepool_domain_violations_total)"
  "domain_violations_by_kind|sum by (kind) (pagepool_domain_violations_total)"
  "page_ops_rate|sum(rate(pagepool_traffic_page_ops_total[3s]))"
  "traffic_batches_rate|sum(rate(pagepool_traffic_batches_total[3s]))"
  "traffic_errors_rate|sum(rate(pagepool_traffic_errors_total[3s]))"
  "rpc_rate|sum by (method, code) (rate(pagepool_rpc_finished_total[3s]))"
)

# --- one run: the stack for one strategy -----------------------------------------------------------
# The host pid of the daemon container's pagepoold (under `init: true` a child of the container's
# init), or nothing when it cannot be found (then no CPU figure is kept).
daemon_pid() {
  local init
  init="$("$ENGINE" inspect -f '{{.State.Pid}}' "$(containers_of pagepoold)" 2>/dev/null)" || return 0
  [ -n "$init" ] && [ "$init" != 0 ] || return 0
  if [ "$(cat "/proc/$init/comm" 2>/dev/null)" = pagepoold ]; then
    echo "$init"
  else
    pgrep -P "$init" -x pagepoold | head -n 1 || true
  fi
}
# utime + stime of pid $1 in clock ticks, or nothing.
cpu_ticks() {
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 0
  awk '{print $14 + $15}' "/proc/$1/stat"
}

run_one() {  # strategy dir
  local strategy="$1" dir="$2" t0 t1 id n waited
  mkdir -p "$dir/prometheus" "$dir/logs"
  # The generators run as uid 10001: let them write their results here.
  chmod 0777 "$dir"
  log "[$strategy] starting $PROJECT: pagepoold, $GENERATORS x generator ($PATTERN), prometheus"
  local left
  left="$("$ENGINE" ps -a -q --filter "label=com.docker.compose.project=$PROJECT")"
  if [ -n "$left" ]; then
    log "[$strategy] removing containers left from an earlier run of project $PROJECT"
    "$ENGINE" rm -f $left >/dev/null 2>&1 || true
  fi
  "$ENGINE" network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
  stack_up=1
  compose_env=(GENERATORS="$GENERATORS" PATTERN="$PATTERN" DURATION="$DURATION" STREAMS="$STREAMS"
    BATCH="$BATCH" WINDOW="$WINDOW" STRATEGY="$strategy" IOMMU_MODE="$IOMMU_MODE" TRAFFIC_ARGS="$TRAFFIC_ARGS"
    MEMORY_GIB="$MEMORY_GIB" START_SIGNAL=/results/.start RESULTS_DIR="$dir")
  (cd "$here" && env "${compose_env[@]}" "${compose[@]}" -p "$PROJECT" up -d --no-build) \
    >"$dir/logs/compose-up.log" 2>&1 \
    || { tail -20 "$dir/logs/compose-up.log" >&2; die "[$strategy] compose up failed"; }
  # podman-compose 1.0.3 exits 0 even when a container failed to start: check.
  for svc in pagepoold prometheus; do
    id="$(containers_of "$svc")"
    [ -n "$id" ] || { tail -20 "$dir/logs/compose-up.log" >&2; die "[$strategy] no $svc container (log: $dir/logs/compose-up.log)"; }
    [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$id")" = true ] \
      || { "$ENGINE" logs "$id" 2>&1 | tail -20 >&2; die "[$strategy] $svc is not running"; }
  done
  n="$(containers_of generator | wc -l)"
  [ "$n" -eq "$GENERATORS" ] || die "[$strategy] $n generator containers, expected $GENERATORS"

  # Start the generators once Prometheus has scraped the daemon, so the series cover the whole run.
  waited=0
  until [ "$(prom_count 'up{job="pagepoold"} == 1')" -ge 1 ]; do
    waited=$((waited + 1))
    [ "$waited" -le 120 ] || die "[$strategy] Prometheus did not scrape pagepoold:9464 within 60 s"
    sleep 0.5
  done
  local dpid cpu0
  dpid="$(daemon_pid)"
  cpu0="$(cpu_ticks "$dpid")"
  t0=$(date +%s)
  touch "$dir/.start"
  log "[$strategy] Prometheus scrapes the daemon; generators started (${DURATION} s, $STREAMS streams x batch $BATCH each)"

  for id in $(containers_of generator); do
    local name code
    name="$("$ENGINE" inspect -f '{{.Name}}' "$id")"; name="${name#/}"
    code="$(timeout $((DURATION + 120)) "$ENGINE" wait "$id" 2>/dev/null | tail -1)" || code=timeout
    "$ENGINE" logs "$id" >"$dir/logs/$name.log" 2>&1 || true
    echo "$name $code" >>"$dir/generators.exit"   # judged by merge_results.py
  done
  t1=$(date +%s)
  # The daemon's CPU time over the generators' run (user + system, from the host's /proc).
  if [ -n "$cpu0" ]; then
    echo "$cpu0 $(cpu_ticks "$dpid") $(getconf CLK_TCK)" >"$dir/daemon_cpu"
  fi
  log "[$strategy] generators done in $((t1 - t0)) s"
  # Wait for a scrape that began at least a second after the generators ended, so the series hold
  # the final counters (the violations of a late return are counted at the very end of a run).
  local t_end
  waited=0
  until [ "$(prom_get /api/v1/query 'timestamp(up{job="pagepoold"})' 2>/dev/null \
             | "$PY" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)' \
             2>/dev/null || echo 0)" -ge $((t1 + 2)) ]; do
    waited=$((waited + 1))
    [ "$waited" -le 40 ] || { log "[$strategy] warning: no scrape after the run's end"; break; }
    sleep 0.25
  done
  t_end=$(( $(date +%s) + 1 ))

  local q name query
  for q in "${queries[@]}"; do
    name="${q%%|*}" query="${q#*|}"
    prom_get /api/v1/query_range "$query" $((t0 - 2)) "$t_end" 1 >"$dir/prometheus/$name.json" \
      || log "[$strategy] warning: query $name failed"
  done
  echo "$t0 $t1" >"$dir/window"

  # Stop the daemon first (SIGTERM through init) so its log ends with its shutdown summary.
  id="$(containers_of pagepoold)"
  "$ENGINE" stop -t 10 "$id" >/dev/null 2>&1 || true
  "$ENGINE" logs "$id" >"$dir/logs/pagepoold.log" 2>&1 || true
  "$ENGINE" logs "$(containers_of prometheus)" >"$dir/logs/prometheus.log" 2>&1 || true
  teardown
  rm -rf "$dir/.claims" "$dir/.start"
  return 0
}

# --- the runs ------------------------------------------------------------------------------------
t_runs=$(date +%s)
for strategy in $STRATEGIES; do
  run_one "$strategy" "$out/$strategy"
done
log "runs done in $(( $(date +%s) - t_runs )) s"

# --- merge, summary, verdict ---------------------------------------------------------------------
set +e
SCENARIO="$scenario" STRATEGIES="$STRATEGIES" EXPECT_VIOLATIONS="$EXPECT_VIOLATIONS" \
  GENERATORS="$GENERATORS" PATTERN="$PATTERN" STREAMS="$STREAMS" BATCH="$BATCH" WINDOW="$WINDOW" \
  DURATION="$DURATION" IOMMU_MODE="$IOMMU_MODE" TRAFFIC_ARGS="$TRAFFIC_ARGS" \
  "$PY" "$here/merge_results.py" "$out" | tee "$out/summary.txt"
verdict=${PIPESTATUS[0]}
set -e

# An HTML report when this ppctl has `ppctl report` (issue 8, item 5).
if "$ENGINE" run --rm --entrypoint ppctl "$PAGEPOOLD_IMAGE" --help 2>/dev/null | grep -qE '^ +report( |$)'; then
  mapfile -t results < <(cd "$out" && ls -1 ./*/gen-*.json 2>/dev/null | sed 's|^\./|/out/|')
  if [ "${#results[@]}" -gt 0 ]; then
    chmod 0777 "$out"
    "$ENGINE" run --rm -v "$out:/out:z" --entrypoint ppctl "$PAGEPOOLD_IMAGE" report \
      "${results[@]}" -o /out/report.html >"$out/report.log" 2>&1 \
      && log "report: $out/report.html" || log "warning: ppctl report failed (see $out/report.log)"
  fi
fi
log "merged result: $out/merged.json"
exit "$verdict"
