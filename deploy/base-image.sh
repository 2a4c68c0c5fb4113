#!/usr/bin/env bash
# Builds the base image localhost/debian:bookworm-slim from Debian's packages with debootstrap
# (no image registry is reachable from the machines this project runs on). Skips when the image
# exists already; --force rebuilds it. Run as root (debootstrap needs it).
#
#   bash deploy/base-image.sh [--force]
#
# Environment: BASE_IMAGE (default localhost/debian:bookworm-slim), SUITE (default bookworm),
# DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR (default: the mirrors this host's apt uses for SUITE and
# SUITE-security, read from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian:bookworm-slim}"
SUITE="${SUITE:-bookworm}"

# The first URI this host's apt uses for suite $1 (deb822 .sources files, then sources.list).
host_mirror() {
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk -v want="$1" '/^[[:space:]]*$/ {u = ""} /^URIs:/ {u = $2}
        /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == want && u != "") {print u; exit}}' "$f"
    done
    if [ -f /etc/apt/sources.list ]; then
      awk -v want="$1" '$1 == "deb" && $3 == want {print $2; exit}' /etc/apt/sources.list
    fi
  } | head -n 1 || true
}
MIRROR="${DEBIAN_MIRROR:-$(host_mirror "$SUITE")}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(host_mirror "$SUITE-security")}"
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "base-image: unknown argument '$1' (use --force or nothing)" >&2; exit 2 ;;
esac

log() { echo "base-image: $*"; }
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || { log "$tool is missing: apt-get install -y podman runc debootstrap" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { log "debootstrap needs root" >&2; exit 1; }
if [ -z "$MIRROR" ]; then
  log "this host's apt has no mirror for $SUITE: set DEBIAN_MIRROR to a Debian mirror URL" >&2
  exit 1
fi

if [ "$force" -eq 0 ] && podman image exists "$BASE_IMAGE"; then
  log "$BASE_IMAGE exists ($(podman image inspect --format '{{.Created}}' "$BASE_IMAGE" | cut -d. -f1)); nothing to do (--force rebuilds it)"
  exit 0
fi

work="$(mktemp -d /var/tmp/pagepool-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
start=$(date +%s)
log "debootstrap --variant=minbase $SUITE from $MIRROR (about 25 s)"
if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
  tail -20 "$work/debootstrap.log" >&2
  log "debootstrap failed (log above)" >&2
  exit 1
fi
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE-updates" > "$rootfs/etc/apt/sources.list"
if [ -n "$SECURITY_MIRROR" ]; then
  echo "deb $SECURITY_MIRROR $SUITE-security main" >> "$rootfs/etc/apt/sources.list"
fi
# Slim: no downloaded packages, no package lists (each image's RUN apt-get update fetches them).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
log "importing as $BASE_IMAGE"
tar -C "$rootfs" -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
log "built $BASE_IMAGE in $(( $(date +%s) - start )) s: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
