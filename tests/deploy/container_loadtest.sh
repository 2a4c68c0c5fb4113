#!/usr/bin/env bash
# CI stage: a short containerized load test (deploy/loadtest.sh ci: the daemon, two generators,
# Prometheus) and assertions on its merged result. Installs podman and what it needs with apt-get
# when missing (the list of /work/shared/CONTAINERS.md). Run as root on Debian 12:
#
#   bash tests/deploy/container_loadtest.sh       last line: "container_loadtest: N passed, M failed"
#
# Warm (images cached) it takes about a minute; the very first run builds the base image and compiles
# pagepoold inside the build stage (see deploy/README.md for measured times), unless
# PAGEPOOLD_PREBUILT=BUILD_DIR names a Release build whose binaries the image takes instead
# (deploy/build-images.sh; tests/run_all.sh's deploy stage passes build/).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pkgs=(podman runc crun debootstrap podman-compose slirp4netns uidmap fuse-overlayfs python3 curl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "container_loadtest: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { echo "container_loadtest: apt-get install failed"; echo "container_loadtest: 0 passed, 1 failed"; exit 1; }
fi

results_root="${RESULTS_ROOT:-$(mktemp -d /tmp/container_loadtest.XXXXXX)}"
start=$(date +%s)
RESULTS_ROOT="$results_root" bash "$repo/deploy/loadtest.sh" ci
rc=$?
elapsed=$(( $(date +%s) - start ))
dir="$(ls -d "$results_root"/*-ci 2>/dev/null | tail -1)"
echo "container_loadtest: deploy/loadtest.sh ci exited $rc after $elapsed s; results in ${dir:-(none)}"

RC="$rc" /usr/bin/python3 - "${dir:-/nonexistent}" <<'PY'
import json, os, sys
d = sys.argv[1]
passed = failed = 0
def check(what, ok, detail=""):
    global passed, failed
    if ok: passed += 1; print(f"  ok   {what}")
    else: failed += 1; print(f"  FAIL {what}" + (f": {detail}" if detail else ""))
check("deploy/loadtest.sh ci exits 0", os.environ["RC"] == "0", f"exit status {os.environ['RC']}")
try:
    m = json.load(open(os.path.join(d, "merged.json")))
except (OSError, ValueError) as e:
    check("merged.json written", False, str(e)); m = None
if m:
    check("merged.json written", True)
    runs = m["runs"]
    check("one run (strategy xarray)", len(runs) == 1 and runs[0]["strategy"] == "xarray")
    r = runs[0]
    gens = r["generators"]
    check("both generators' results present", sorted(g["index"] for g in gens) == [1, 2],
          f"indexes {[g['index'] for g in gens]}")
    check("every generator exited 0", all(g["exit_status"] == 0 for g in gens) and
          all(c == "0" for c in r["container_exits"].values()), str(r["container_exits"]))
    check("every generator carried traffic", len(gens) == 2 and
          all(g["result"]["page_ops_per_sec"] > 0 for g in gens))
    check("zero errors", r["totals"]["errors"] == 0, str(r["totals"]["errors"]))
    check("zero violations (generators)", r["totals"]["violations"] == 0, str(r["totals"]["violations"]))
    p = r["prometheus"]
    check("Prometheus scraped the daemon (up == 1 series non-empty)",
          p.get("up", {}).get("points", 0) > 0 and p["up"]["max"] == 1.0, str(p.get("up", {}).get("points")))
    check("Prometheus: pagepool_traffic_page_ops_total rose", (p.get("page_ops_rate", {}).get("max") or 0) > 0)
    check("Prometheus: pagepool_pool_inflight series non-empty", p.get("pool_inflight", {}).get("points", 0) > 0)
    check("Prometheus: pagepool_domain_table_bytes series non-empty",
          p.get("domain_table_bytes", {}).get("points", 0) > 0)
    check("Prometheus: zero violations (pagepool_domain_violations_total)",
          (p.get("domain_violations", {}).get("max") or 0) == 0)
    for g in gens:
        print(f"  generator {g['index']}: {g['result']['page_ops_per_sec']:,.0f} page ops/s, "
              f"p99 {g['result']['rpc_p99_us']:.1f} us")
print(f"container_loadtest: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
