#!/usr/bin/env bash
# Renders deploy/k8s/base and every deploy/k8s/overlays/* with `kubectl kustomize` and validates each
# rendering offline against the Kubernetes API schema plus pagepoold's own rules
# (validate_manifests.js --project). Needs kubectl (for kustomize) and node + npm (for the pinned
# kubernetes-models packages, installed into tests/deploy/node_modules on first use); skips, saying
# so, with exit 0 where either is absent. Exit 1 when a rendering fails or is invalid.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
k8s="$(cd "$here/../../deploy/k8s" && pwd)"
for tool in kubectl node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "validate_manifests: SKIP: $tool is not installed (kubectl renders the kustomizations; node/npm run kubernetes-models)"
    exit 0
  fi
done
if [ ! -d "$here/node_modules/kubernetes-models" ]; then
  echo "validate_manifests: npm ci (kubernetes-models 4.5.1, @kubernetes-models/validate 4.0.0, yaml 2.9.1)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) >/dev/null
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
for dir in "$k8s/base" "$k8s"/overlays/*/; do
  dir="${dir%/}"
  name="$(basename "$dir")"
  [ "$name" = base ] || name="overlays-$name"
  if ! kubectl kustomize "$dir" >"$tmp/$name.yaml" 2>"$tmp/$name.err"; then
    echo "FAIL $name: kubectl kustomize: $(cat "$tmp/$name.err")"
    failed=$((failed + 1)); continue
  fi
  if node "$here/validate_manifests.js" --project "$tmp/$name.yaml" | sed "s|$tmp/||; s|^validate_manifests:|  $name:|"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
done
echo "validate_manifests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
