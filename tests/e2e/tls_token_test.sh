#!/usr/bin/env bash
# ppctl against a pagepoold that requires mutual TLS and a bearer token: a throwaway CA, server and
# client certificates made with openssl here, the real pagepoold on 127.0.0.1:<free port> with
# --tls-cert/--tls-key/--tls-client-ca and --auth-token-file, and the real ppctl with --tls-ca,
# --tls-cert, --tls-key and --auth-token-file:
#   - with certificate, key and token: unary calls, server streams (list-inflight, watch-events),
#     the Traffic stream and unary traffic, health;
#   - without a client certificate, or with one the CA did not sign: UNAVAILABLE (the handshake);
#   - without the token, or with another one: UNAUTHENTICATED; health stays open;
#   - bad client options (only one of --tls-cert/--tls-key, a missing file, an empty token file):
#     exit 2 with a message naming the option, before any call.
# Every process is bounded (`timeout`); the exit trap kills the daemon by PID.
# Usage: tls_token_test.sh PAGEPOOLD PPCTL
set -euo pipefail
PAGEPOOLD=$1
PPCTL=$2
tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log:" >&2; tail -40 "$tmp/log" >&2; exit 1; }
ok() { echo "ok: $*"; }

# A CA, a server certificate for 127.0.0.1 and a client certificate it signed; a rogue
# self-signed client certificate.
(
  cd "$tmp"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=pagepool-test-ca \
    -keyout ca.key -out ca.pem
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile server.ext -out server.pem
  openssl req -newkey rsa:2048 -nodes -subj /CN=ppctl -keyout client.key -out client.csr
  openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -out client.pem
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rogue -keyout rogue.key \
    -out rogue.pem
) >"$tmp/openssl.log" 2>&1 || fail "openssl: $(cat "$tmp/openssl.log")"
printf 'pp-test-token-0123456789\n' >"$tmp/token"
printf 'not-the-token\n' >"$tmp/wrong-token"
: >"$tmp/empty-token"
ok "certificates and tokens made"

"$PAGEPOOLD" --listen 127.0.0.1:0 --metrics-listen off --memory-gib 1 \
  --tls-cert "$tmp/server.pem" --tls-key "$tmp/server.key" --tls-client-ca "$tmp/ca.pem" \
  --auth-token-file "$tmp/token" >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "(port " "$tmp/log" && break; sleep 0.1; done
port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/log" | head -1)
[ -n "$port" ] || fail "pagepoold did not report its port"
target=127.0.0.1:$port

# ppctl with the CA only; callers add a client certificate and a token.
ppca() { timeout 30 "$PPCTL" --target "$target" --tls-ca "$tmp/ca.pem" --timeout-ms 5000 "$@"; }
# ppctl with everything the daemon asks for.
pp() {
  ppca --tls-cert "$tmp/client.pem" --tls-key "$tmp/client.key" --auth-token-file "$tmp/token" "$@"
}
# Runs ppctl "$@" expecting exit status 1 and `pattern` in its error output.
refused() {
  local pattern=$1
  shift
  local rc=0
  "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "$* should exit 1, got $rc: $(cat "$tmp/out" "$tmp/err")"
  grep -q -- "$pattern" "$tmp/err" || fail "$*: no '$pattern' in: $(cat "$tmp/err")"
}

# Certificate, key and token: every kind of call works.
pp create-device --name tls0 | grep -q 'device 1 "tls0"' || fail "create-device"
pp list-devices | grep -q tls0 || fail "list-devices"
pool=$(pp create-pool 1 | sed -n 's/^pool \([0-9]*\) on device 1.*/\1/p')
[ -n "$pool" ] || fail "create-pool"
pp allocate "$pool" --count 3 >"$tmp/pages" || fail "allocate"
pp list-inflight "$pool" >"$tmp/inflight" || fail "list-inflight (server stream)"
[ "$(grep -c . "$tmp/inflight")" -ge 3 ] || fail "list-inflight: $(cat "$tmp/inflight")"
pp watch-events --include-existing --count 2 >"$tmp/events" || fail "watch-events (stream)"
[ "$(grep -c . "$tmp/events")" -eq 2 ] || fail "watch-events: $(cat "$tmp/events")"
pp return "$pool" $(awk '{print $1}' "$tmp/pages") | grep -q "returned: 3 pages" || fail "return"
ok "mutual TLS + token: unary calls, list-inflight and watch-events streams"
pp traffic steady --duration 1 --streams 2 --window 4 --out "$tmp/steady.json" >"$tmp/steady.txt" \
  || fail "traffic steady: $(cat "$tmp/steady.txt")"
grep -q '"errors": 0,' "$tmp/steady.json" && grep -q '"violations": 0,' "$tmp/steady.json" \
  || fail "traffic steady result: $(head -c 600 "$tmp/steady.json")"
pp traffic unary --duration 0.5 --streams 1 --out "$tmp/unary.json" >"$tmp/unary.txt" \
  || fail "traffic unary: $(cat "$tmp/unary.txt")"
grep -q '"errors": 0,' "$tmp/unary.json" || fail "traffic unary had errors"
ok "mutual TLS + token: traffic steady (Traffic stream, window 4) and unary"
[ "$(pp health)" = SERVING ] || fail "health with certificate and token"
ok "mutual TLS + token: health SERVING"

# No client certificate, or one the CA did not sign: the handshake fails (UNAVAILABLE).
refused UNAVAILABLE ppca --auth-token-file "$tmp/token" list-devices
grep -q "needs a client certificate: --tls-cert and --tls-key" "$tmp/err" \
  || fail "no client certificate: the message does not point to --tls-cert"
ok "no client certificate: $(cat "$tmp/err")"
refused UNAVAILABLE ppca --tls-cert "$tmp/rogue.pem" --tls-key "$tmp/rogue.key" \
  --auth-token-file "$tmp/token" list-devices
ok "a client certificate the CA did not sign: $(cat "$tmp/err")"
refused UNAVAILABLE timeout 30 "$PPCTL" --target "$target" --timeout-ms 5000 \
  --auth-token-file "$tmp/token" list-devices
ok "plaintext: $(cat "$tmp/err")"

# Certificate but no token, or the wrong one: UNAUTHENTICATED, for unary calls and streams.
refused UNAUTHENTICATED ppca --tls-cert "$tmp/client.pem" --tls-key "$tmp/client.key" list-devices
grep -q "bearer token" "$tmp/err" || fail "no token: the message does not say a token is needed"
ok "no token: $(cat "$tmp/err")"
refused UNAUTHENTICATED ppca --tls-cert "$tmp/client.pem" --tls-key "$tmp/client.key" \
  --auth-token-file "$tmp/wrong-token" list-devices
ok "wrong token: $(cat "$tmp/err")"
refused UNAUTHENTICATED ppca --tls-cert "$tmp/client.pem" --tls-key "$tmp/client.key" \
  --auth-token-file "$tmp/wrong-token" list-inflight "$pool"
refused UNAUTHENTICATED ppca --tls-cert "$tmp/client.pem" --tls-key "$tmp/client.key" \
  traffic steady --pool-id "$pool" --duration 1
ok "wrong or no token: list-inflight and traffic refused too"
# Health stays open (Kubernetes' gRPC probes cannot send a token).
[ "$(ppca --tls-cert "$tmp/client.pem" --tls-key "$tmp/client.key" health)" = SERVING ] \
  || fail "health without a token"
ok "health without a token: SERVING"

# Bad client options: exit 2, a message naming the option, before any call.
usage() {
  local pattern=$1
  shift
  local rc=0
  ppca "$@" list-devices >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" -eq 2 ] || fail "$* should exit 2, got $rc: $(cat "$tmp/out" "$tmp/err")"
  grep -q -- "$pattern" "$tmp/err" || fail "$*: no '$pattern' in: $(cat "$tmp/err")"
}
usage "--tls-cert and --tls-key go together" --tls-cert "$tmp/client.pem"
usage "--tls-cert and --tls-key go together" --tls-key "$tmp/client.key"
usage "cannot read --tls-key $tmp/none.key" --tls-cert "$tmp/client.pem" --tls-key "$tmp/none.key"
usage "cannot read --auth-token-file $tmp/none" --auth-token-file "$tmp/none"
usage "holds no token" --auth-token-file "$tmp/empty-token"
ok "bad client options: exit 2 ($(cat "$tmp/err"))"

kill -TERM "$pid"
rc=0
timeout 30 tail --pid="$pid" -f /dev/null || fail "the daemon did not exit after SIGTERM"
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || fail "pagepoold exit status $rc after SIGTERM"
grep -q "violations:                  0" "$tmp/log" || fail "summary: violations"
ok "SIGTERM: exit 0, zero violations"
echo PASS
