#!/usr/bin/env bash
# Soak test of pagepoold: the real daemon under mixed ppctl load for SOAK_SECONDS (default 600),
# its RSS sampled every second, then leak, violation and shutdown checks (tests/soak/soak.py says
# what runs and what is checked). Writes rss.csv and summary.json to SOAK_OUT (default build/soak).
# Usage: soak.sh PAGEPOOLD PPCTL
# Debian's python3 (the script needs nothing beyond the standard library).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: soak.sh PAGEPOOLD PPCTL" >&2; exit 2; }
exec /usr/bin/python3 "$(dirname "$0")/soak.py" --pagepoold "$1" --ppctl "$2"
