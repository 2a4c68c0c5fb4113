#!/usr/bin/env bash
# The README's grpcurl examples, run as written: every command of the ```sh blocks in README.md's
# "## grpcurl" section runs, in order, against a fresh pagepoold (defaults, 127.0.0.1:<free port>;
# 127.0.0.1:50051 in the commands is replaced by that address), with the real grpcurl.
#   - a ```json block after a ```sh block shows the output of that block's last command: every
#     `"key": value` line of it (and every `"key"`) must appear in what grpcurl printed;
#   - a ```text block starting with ERROR: shows that command's error: grpcurl must fail and print
#     the same `Code:` line and a `Message:` line that starts the same way up to the first ';';
#   - any other command must exit 0.
# grpcurl is $GRPCURL, else ../shared/tools/grpcurl next to the repository; without it the test
# is skipped (exit 0 with a message; ctest reads "SKIP" through SKIP_REGULAR_EXPRESSION).
# Usage: readme_grpcurl_test.sh PAGEPOOLD [README]
set -euo pipefail
PAGEPOOLD=$1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
README=${2:-$repo/README.md}
GRPCURL=${GRPCURL:-$repo/../shared/tools/grpcurl}
if [ ! -x "$GRPCURL" ]; then
  echo "SKIP: grpcurl not found (set \$GRPCURL, or put it at ../shared/tools/grpcurl)"
  exit 0
fi
tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log:" >&2; cat "$tmp/log" >&2; exit 1; }

# The section's steps, one per line: CMD<TAB>command, JSON<TAB>n (the block is in $tmp/json.n),
# ERR<TAB>n (in $tmp/err.n).
awk -v dir="$tmp" '
  /^## / { insec = ($0 == "## grpcurl") ; next }
  !insec { next }
  /^```/ {
    if (fence == "") {
      fence = substr($0, 4); n++; cmd = ""
      if (fence == "json") file = dir "/json." n
      else if (fence == "text") file = dir "/err." n
      else file = ""
      next
    }
    if (fence == "json") print "JSON\t" n
    if (fence == "text") print "ERR\t" n
    fence = ""; next
  }
  fence == "sh" {
    line = $0
    if (line ~ /\\$/) { cmd = cmd substr(line, 1, length(line) - 1); next }
    cmd = cmd line
    if (cmd ~ /^grpcurl /) print "CMD\t" cmd
    cmd = ""; next
  }
  fence != "" && file != "" { print > file }
' "$README" >"$tmp/steps"
[ "$(grep -c '^CMD' "$tmp/steps")" -ge 5 ] || fail "found only $(grep -c '^CMD' "$tmp/steps") grpcurl commands in README's grpcurl section"

"$PAGEPOOLD" --listen 127.0.0.1:0 --metrics-listen off >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "(port " "$tmp/log" && break; sleep 0.1; done
port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/log" | head -1)
[ -n "$port" ] || fail "pagepoold did not report its port"

mapfile -t steps <"$tmp/steps"
ran=0
last_rc=0
last_cmd=""
for i in "${!steps[@]}"; do
  kind=${steps[$i]%%$'\t'*}
  arg=${steps[$i]#*$'\t'}
  next_kind=""
  [ $((i + 1)) -lt ${#steps[@]} ] && next_kind=${steps[$((i + 1))]%%$'\t'*}
  case "$kind" in
    CMD)
      cmd=${arg//127.0.0.1:50051/127.0.0.1:$port}
      last_cmd=$arg
      last_rc=0
      eval "\"\$GRPCURL\" -max-time 20 ${cmd#grpcurl }" >"$tmp/out" 2>"$tmp/stderr" || last_rc=$?
      ran=$((ran + 1))
      # A command followed by an ERR block is checked there; any other must succeed.
      if [ "$next_kind" != "ERR" ] && [ "$last_rc" -ne 0 ]; then
        fail "exit $last_rc: $last_cmd: $(cat "$tmp/stderr")"
      fi
      echo "ok: $last_cmd"
      ;;
    JSON)
      while IFS= read -r line; do
        trimmed=$(echo "$line" | sed 's/^ *//; s/,$//')
        case "$trimmed" in
          \"*\":*[!{[]) grep -qF -- "$trimmed" "$tmp/out" \
            || fail "README shows '$trimmed' after: $last_cmd; grpcurl printed: $(cat "$tmp/out")" ;;
          \"*\":*) key=${trimmed%%:*}
            grep -qF -- "$key" "$tmp/out" \
            || fail "README shows key $key after: $last_cmd; grpcurl printed: $(cat "$tmp/out")" ;;
        esac
      done <"$tmp/json.$arg"
      echo "ok:   output as the README shows it"
      ;;
    ERR)
      [ "$last_rc" -ne 0 ] || fail "README shows an error after: $last_cmd; it succeeded"
      code=$(sed -n 's/^ *Code: //p' "$tmp/err.$arg")
      msg=$(sed -n 's/^ *Message: //p' "$tmp/err.$arg" | cut -d';' -f1)
      grep -qF "Code: $code" "$tmp/stderr" || fail "expected Code: $code, got: $(cat "$tmp/stderr")"
      grep -qF "Message: $msg" "$tmp/stderr" \
        || fail "expected a message starting '$msg', got: $(cat "$tmp/stderr")"
      echo "ok:   fails with $code as the README shows"
      ;;
  esac
done
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || fail "pagepoold exit status $rc after SIGTERM"
echo "PASS: $ran README grpcurl commands"
