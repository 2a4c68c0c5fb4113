#!/usr/bin/env bash
# Runs the daemon's pod spec from deploy/k8s (overlays/podman: the base Deployment, ports published on
# 127.0.0.1:15051 and 127.0.0.1:19464) under `podman kube play` on a machine without a cluster, and
# checks it from the host: grpc.health.v1 through ppctl, a short `ppctl traffic` run, /metrics, the
# pod's user and read-only root. Then `podman kube down`. Needs podman, kubectl (kustomize) and the
# image localhost/pagepoold:latest (deploy/build-images.sh builds it).
#
#   bash deploy/k8s/podman-play.sh         prints "podman_play: N passed, M failed", exit 0 if none failed
#
# ppctl runs from the image on the host's network namespace (podman run --network host), or set
# PPCTL=/path/to/ppctl to use a host build. KEEP=1 leaves the pod running.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/../containers.conf}"
IMAGE="${PAGEPOOLD_IMAGE:-localhost/pagepoold:latest}"
GRPC=127.0.0.1:15051 METRICS=127.0.0.1:19464
for tool in podman kubectl; do
  command -v "$tool" >/dev/null || { echo "podman_play: SKIP: $tool is not installed"; exit 0; }
done
podman image exists "$IMAGE" || { echo "podman_play: $IMAGE is missing: bash deploy/build-images.sh" >&2; exit 1; }

tmp="$(mktemp -d)"
manifest="$tmp/daemon.yaml"
kubectl kustomize "$here/overlays/podman" >"$manifest"
down() { [ "${KEEP:-0}" = 1 ] || podman kube down "$manifest" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap down EXIT
trap 'exit 130' INT TERM

ppctl() {
  if [ -n "${PPCTL:-}" ]; then "$PPCTL" "$@"
  else podman run --rm --network host --entrypoint ppctl "$IMAGE" "$@"
  fi
}
export -f ppctl
export IMAGE PPCTL="${PPCTL:-}"
passed=0 failed=0
check() {  # description command...
  local what="$1"; shift
  if "$@" >"$tmp/out" 2>&1; then passed=$((passed + 1)); echo "  ok   $what"
  else failed=$((failed + 1)); echo "  FAIL $what"; sed 's/^/       /' "$tmp/out" | tail -15
  fi
}

podman kube down "$manifest" >/dev/null 2>&1 || true
echo "podman_play: podman kube play (Deployment pagepoold from deploy/k8s/overlays/podman)"
check "kube play starts the pod" podman kube play "$manifest"
pod="$(podman pod ps --filter name=pagepoold -q | head -1)"
ctr="$(podman ps --filter "pod=$pod" --format '{{.Names}}' | grep -v -- '-infra$' | head -1)"

healthy() {  # polls grpc.health.v1 from the host for up to 20 s
  for _ in $(seq 1 40); do
    if [ -n "${PPCTL:-}" ]; then
      # A host ppctl: `health` when it has it, else ListDevices as liveness.
      "$PPCTL" --target "$GRPC" health 2>/dev/null && return 0
      "$PPCTL" --target "$GRPC" list-devices >/dev/null 2>&1 && return 0
    else
      podman run --rm --network host -e PP_HEALTH_TARGET="$GRPC" --entrypoint pp-health "$IMAGE" \
        >/dev/null 2>&1 && return 0
    fi
    sleep 0.5
  done
  return 1
}
check "gRPC health from the host on $GRPC (grpc.health.v1 via ppctl)" healthy
check "ppctl --target $GRPC traffic steady --duration 2 (zero errors)" \
  ppctl --target "$GRPC" traffic steady --duration 2
check "ppctl --target $GRPC list-devices shows the traffic's device" \
  bash -c "ppctl --target $GRPC list-devices | grep -q '^device'"
check "/metrics on $METRICS answers pagepool_ families" \
  bash -c "curl -sf http://$METRICS/metrics | grep -q '^pagepool_traffic_page_ops_total'"
check "the container runs as uid 10001 (non-root)" \
  bash -c "[ \"\$(podman exec $ctr id -u)\" = 10001 ]"
check "the root filesystem is read-only (readOnlyRootFilesystem)" \
  bash -c "! podman exec $ctr touch /var/lib/pagepool/x"
check "the pod's resource limit reached the container (memory 1Gi)" \
  bash -c "[ \"\$(podman inspect -f '{{.HostConfig.Memory}}' $ctr)\" = 1073741824 ]"
# The Job's generator as its pod would run it (JOB_COMPLETION_INDEX, PRINT_RESULT, read-only root,
# /results an emptyDir), and collect-results.sh's cut of the result out of the log.
job_generator() {
  mkdir -p "$tmp/results" && chmod 0777 "$tmp/results"   # an emptyDir is world-writable too
  podman run --rm --network host --read-only -v "$tmp/results:/results:z" \
    -e JOB_COMPLETION_INDEX=1 -e PRINT_RESULT=1 -e PPCTL_TARGET="$GRPC" -e PATTERN=steady \
    -e DURATION=2 --entrypoint pp-generate "$IMAGE" >"$tmp/gen.log" 2>&1 || return 1
  sed -n '/^=== gen-2.json ===$/,/^=== end gen-2.json ===$/p' "$tmp/gen.log" | sed '1d;$d' \
    | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["page_ops"] > 0 and r["errors"] == 0, r'
}
check "the Job's generator (index 1 -> gen-2.json) prints a result collect-results.sh can cut out" job_generator
check "kube down removes the pod" bash -c "podman kube down '$manifest' && ! podman pod exists '$pod'"
echo "podman_play: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
