#!/usr/bin/env bash
# Builds the load-test images (layer-cached: a rebuild with unchanged sources takes seconds):
#   localhost/debian:bookworm-slim        deploy/base-image.sh (podman with a localhost/ base only)
#   localhost/pagepoold:latest            deploy/Containerfile (pagepoold + ppctl; build context: repo)
#   localhost/pagepool-prometheus:latest  deploy/prometheus/Containerfile
#
#   bash deploy/build-images.sh [LOG_DIR]   build logs go to LOG_DIR (default: a temp folder)
#
# Environment: ENGINE=podman|docker (default podman when installed), BASE_IMAGE (default
# localhost/debian:bookworm-slim with podman, debian:bookworm-slim with docker), PAGEPOOLD_IMAGE,
# PROMETHEUS_IMAGE, BUILD_JOBS (ninja jobs in the build stage, default 2), SOURCE_REV: build the
# sources of this git revision (git archive, read-only) instead of the working tree, with deploy/
# from the working tree, e.g. SOURCE_REV=HEAD while the working tree is mid-change.
# PAGEPOOLD_PREBUILT=BUILD_DIR: no compile in the image; pagepoold and ppctl come from a Release
# build tree of this Debian 12 host instead (BUILD_DIR/server/pagepoold, BUILD_DIR/client/ppctl,
# stripped into the context's deploy/.prebuilt/; the Containerfile's `prebuilt` target). CI's
# deploy stage does this with the binaries its release stage built and tested.
# The first pagepoold build compiles the project inside the container (see deploy/README.md for
# the measured time); later builds reuse the layers, and after a source change ccache (in a cache
# mount) recompiles only what it touches.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
log() { echo "build-images: $*"; }
ENGINE="${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}"
case "$ENGINE" in
  podman) flags=(--format docker --jobs 1); BASE_IMAGE="${BASE_IMAGE:-localhost/debian:bookworm-slim}" ;;
  docker) flags=(); BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}" ;;
  *) echo "build-images: ENGINE must be podman or docker" >&2; exit 2 ;;
esac
command -v "$ENGINE" >/dev/null || { echo "build-images: $ENGINE is not installed" >&2; exit 1; }
PAGEPOOLD_IMAGE="${PAGEPOOLD_IMAGE:-localhost/pagepoold:latest}"
PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-localhost/pagepool-prometheus:latest}"
logs="${1:-$(mktemp -d /tmp/pagepool-build.XXXXXX)}"
mkdir -p "$logs"

if [ "$ENGINE" = podman ] && [[ "$BASE_IMAGE" == localhost/* ]]; then
  BASE_IMAGE="$BASE_IMAGE" bash "$here/base-image.sh"
fi
build() {  # image log context args...
  local image="$1" logf="$2" t; t=$(date +%s); shift 2
  log "building $image (log: $logf)"
  if ! "$ENGINE" build "${flags[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$image" "$@" >"$logf" 2>&1; then
    tail -30 "$logf" >&2
    log "building $image failed (log: $logf)" >&2
    exit 1
  fi
  log "$image ready in $(( $(date +%s) - t )) s"
}
context="$repo"
if [ -n "${SOURCE_REV:-}" ]; then
  context="$(mktemp -d /tmp/pagepool-context.XXXXXX)"
  trap 'rm -rf "$context"' EXIT
  rev="$(git -C "$repo" rev-parse --short "$SOURCE_REV")"
  log "context: sources of $SOURCE_REV ($rev) from git archive, deploy/ from the working tree"
  git -C "$repo" archive "$SOURCE_REV" CMakeLists.txt base dma pool proto server client tests \
    | tar -x -C "$context"
  mkdir -p "$context/deploy"
  cp -r "$here/Containerfile" "$here/bin" "$context/deploy/"
fi
if [ -n "${PAGEPOOLD_PREBUILT:-}" ]; then
  prebuilt="$(cd "$PAGEPOOLD_PREBUILT" 2>/dev/null && pwd)" \
    || { echo "build-images: PAGEPOOLD_PREBUILT=$PAGEPOOLD_PREBUILT is not a directory" >&2; exit 2; }
  for b in server/pagepoold client/ppctl; do
    [ -x "$prebuilt/$b" ] || { echo "build-images: $prebuilt/$b is missing: build it first (cmake --build $PAGEPOOLD_PREBUILT --target pagepoold ppctl)" >&2; exit 2; }
  done
  type="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$prebuilt/CMakeCache.txt" 2>/dev/null)"
  sanitize="$(sed -n 's/^PAGEPOOL_SANITIZE:[A-Z]*=//p' "$prebuilt/CMakeCache.txt" 2>/dev/null)"
  if [ "$type" != Release ] || [ -n "$sanitize" ]; then
    echo "build-images: $prebuilt is not a Release build without sanitizers (CMAKE_BUILD_TYPE '$type', PAGEPOOL_SANITIZE '$sanitize')" >&2
    exit 2
  fi
  mkdir -p "$context/deploy/.prebuilt"
  install -s -m 0755 "$prebuilt/server/pagepoold" "$prebuilt/client/ppctl" "$context/deploy/.prebuilt/"
  log "binaries: $prebuilt (prebuilt target, no compile in the image)"
  build "$PAGEPOOLD_IMAGE" "$logs/build-pagepoold.log" --target prebuilt \
    -f "$context/deploy/Containerfile" "$context"
  build "$PROMETHEUS_IMAGE" "$logs/build-prometheus.log" "$here/prometheus"
  exit 0
fi
# uPlot for ppctl report, from npm on this host (client/report/package-lock.json): the build
# stage then needs neither npm nor the registry's certificate chain, which only the host trusts.
uplot_npm="$(mktemp -d /tmp/pagepool-uplot.XXXXXX)"
cp "$repo/client/report/package.json" "$repo/client/report/package-lock.json" "$uplot_npm/"
if ! (cd "$uplot_npm" && npm ci --no-audit --no-fund --loglevel=error) >"$logs/npm-uplot.log" 2>&1; then
  cat "$logs/npm-uplot.log" >&2
  log "npm ci of client/report failed (log: $logs/npm-uplot.log)" >&2
  exit 1
fi
mkdir -p "$context/deploy/.uplot"
cp "$uplot_npm"/node_modules/uplot/dist/uPlot.iife.min.js \
  "$uplot_npm"/node_modules/uplot/dist/uPlot.min.css "$context/deploy/.uplot/"
rm -rf "$uplot_npm"
build "$PAGEPOOLD_IMAGE" "$logs/build-pagepoold.log" --build-arg BUILD_JOBS="${BUILD_JOBS:-2}" \
  -f "$context/deploy/Containerfile" "$context"
build "$PROMETHEUS_IMAGE" "$logs/build-prometheus.log" "$here/prometheus"
