#!/usr/bin/env bash
# Installs every Debian 12 package pagepoold needs to build, test and run. Idempotent; run as root.
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev libboost-dev libboost-system-dev liburcu-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-grpcio python3-protobuf curl openssl time
  # containerized load tests (deploy/, ../shared/CONTAINERS.md) and the report test (chromium)
  podman runc crun debootstrap podman-compose slirp4netns uidmap fuse-overlayfs chromium
)
# npm brings the chart library ppctl report inlines (client/report/) and the manifest validator's
# packages (tests/deploy/); Debian's nodejs/npm unless a node with npm is already installed.
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
