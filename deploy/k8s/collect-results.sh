#!/usr/bin/env bash
# Collects the load generators' results from a finished Job on a Kubernetes cluster. Each generator
# pod (PRINT_RESULT=1) prints its JSON result to its log between "=== gen-N.json ===" and
# "=== end gen-N.json ==="; this script waits for the Job, cuts each result out of each pod's log
# into OUT_DIR/gen-N.json (and the whole log into gen-N.log) and prints ops/s per generator.
#
#   bash deploy/k8s/collect-results.sh NAMESPACE [OUT_DIR] [TIMEOUT]
#   e.g. kubectl apply -k deploy/k8s/overlays/small
#        bash deploy/k8s/collect-results.sh pagepool-small results/k8s-small 600s
#
# (kubectl logs works after the pods end, for as long as the Job is kept: ttlSecondsAfterFinished.)
set -euo pipefail
ns="${1:?usage: collect-results.sh NAMESPACE [OUT_DIR] [TIMEOUT]}"
out="${2:-results/k8s-$(date -u +%Y%m%dT%H%M%SZ)}"
timeout="${3:-900s}"
job=ppctl-load
mkdir -p "$out"
echo "collect-results: waiting for job/$job in $ns (up to $timeout)"
if ! kubectl -n "$ns" wait --for=condition=complete "job/$job" --timeout="$timeout"; then
  echo "collect-results: job/$job did not complete; collecting what there is" >&2
  status=1
fi
for pod in $(kubectl -n "$ns" get pods -l "job-name=$job" -o name); do
  idx="$(kubectl -n "$ns" get "$pod" -o jsonpath='{.metadata.annotations.batch\.kubernetes\.io/job-completion-index}')"
  n=$((idx + 1))
  kubectl -n "$ns" logs "$pod" >"$out/gen-$n.log" 2>&1 || true
  sed -n "/^=== gen-$n.json ===\$/,/^=== end gen-$n.json ===\$/p" "$out/gen-$n.log" | sed '1d;$d' >"$out/gen-$n.json"
  [ -s "$out/gen-$n.json" ] || { echo "collect-results: no result in the log of $pod" >&2; rm -f "$out/gen-$n.json"; status=1; }
done
/usr/bin/python3 - "$out" <<'PY'
import glob, json, sys
tot = 0.0
for p in sorted(glob.glob(sys.argv[1] + "/gen-*.json")):
    r = json.load(open(p))
    tot += r["page_ops_per_sec"]
    print(f"  {p}: {r['pattern']} {r['page_ops_per_sec']:,.0f} page ops/s, p99 {r['rpc_p99_us']:.1f} us, "
          f"errors {r['errors']}, violations {r['violations']}")
print(f"  total: {tot:,.0f} page ops/s")
PY
exit "${status:-0}"
