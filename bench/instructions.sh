#!/usr/bin/env bash
# Instructions keygate runs per request, counted by callgrind: on a shared or
# noisy machine, where requests/s and CPU time move 15-25% from run to run,
# this count repeats within about 1%, so a change to the hot path shows up
# even when the load benchmark cannot see it. User space only (the kernel's
# socket work is not in it). Keygate runs under valgrind three times: idle
# (start-up and shutdown alone), then serving REQUESTS chat completions, then
# REQUESTS 401s, each at a fixed RATE; a run's count less the idle one, over
# REQUESTS, is the cost of one request. Writes bench/INSTRUCTIONS.md with the
# functions the chat requests spend most in; the chat run's profile stays in
# PROFILE (default target/bench-instructions.callgrind) for callgrind_annotate.
# Loopback only, bounded.
#   REQUESTS=4000 RATE=200 bench/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-4000}
RATE=${RATE:-200}
PROFILE=${PROFILE:-target/bench-instructions.callgrind}
MOCK_PORT=18021 KEYGATE_PORT=18022
SECONDS_PER_RUN=$(((REQUESTS + RATE - 1) / RATE))

source bench/lib.sh
need valgrind valgrind
need callgrind_annotate valgrind

cargo build --release --locked --bin keygate --example bench_upstream --example bench_rate 2>&1 | tail -1
start_mock $MOCK_PORT

fail() {
  echo "instructions.sh: $*" >&2
  exit 1
}

# counted NAME KEY|- STATUS: keygate under callgrind on a fresh database;
# with a key ("new" makes one), REQUESTS requests at RATE, which must all get
# STATUS. Leaves the instruction total in $work/NAME.total. The failed-auth
# throttle is off, so the 401 run measures 401s, not its 429s.
counted() {
  local name=$1 key=$2 status=$3 vg made ready=no
  rm -f "$work"/k.db*
  env KEYGATE_ADMIN_KEY=bench-admin KEYGATE_LOG=warn KEYGATE_ANOMALY__ENABLED=false \
    KEYGATE_LIMITS__FAILED_AUTH_PER_MINUTE=0 \
    valgrind --tool=callgrind --callgrind-out-file="$work/$name.cg" \
    target/release/keygate serve --listen 127.0.0.1:$KEYGATE_PORT --database "sqlite://$work/k.db" \
    --upstream "http://127.0.0.1:$MOCK_PORT/v1" >"$work/$name.out" 2>"$work/$name.log" & vg=$!
  pids+=($vg)
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$KEYGATE_PORT/readyz" >/dev/null && { ready=yes; break; }
    sleep 0.1
  done
  [ $ready = yes ] || { tail -5 "$work/$name.log" >&2; fail "$name: keygate under valgrind never became ready"; }
  # The idle run makes its key too, so the admin calls cancel out.
  made=$(create_key $KEYGATE_PORT)
  [ -n "$made" ] || fail "$name: could not create a key"
  if [ "$key" != "-" ]; then
    [ "$key" = "new" ] && key=$made
    target/release/examples/bench_rate "http://127.0.0.1:$KEYGATE_PORT" "$key" "$RATE" "$SECONDS_PER_RUN" >"$work/$name.rate"
    local sent ok
    read -r sent ok < <(awk '/^RATE/ {print $2, $3}' "$work/$name.rate")
    [ "${sent:-0}" -gt 0 ] || fail "$name: bench_rate sent nothing"
    if [ "$status" = 200 ]; then
      [ "$ok" = "$sent" ] || fail "$name: $ok of $sent requests succeeded"
    else
      [ "$ok" = 0 ] || fail "$name: $ok of $sent requests succeeded; expected $status"
      # One more request (1 in $sent) shows what they got: the status this run is for.
      local got
      got=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}' "http://127.0.0.1:$KEYGATE_PORT/v1/chat/completions")
      [ "$got" = "$status" ] || fail "$name: the requests got $got, not $status"
    fi
  fi
  kill -INT $vg
  wait $vg || true
  sed -n 's/^summary: //p' "$work/$name.cg" >"$work/$name.total"
  grep -Eq '^[0-9]+$' "$work/$name.total" || fail "$name: callgrind wrote no total"
}

counted idle - -
counted chat new 200
counted denied sk-wrong 401
cp "$work/chat.cg" "$PROFILE"
idle=$(cat "$work/idle.total")
sent() { awk '/^RATE/ {print $2}' "$work/$1.rate"; }
per() { echo $((($(cat "$work/$1.total") - idle) / $(sent "$1"))); }

out=bench/INSTRUCTIONS.md
{
  echo "# keygate instructions per request"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- command: \`REQUESTS=$REQUESTS RATE=$RATE bench/instructions.sh\` (callgrind, user space only)"
  echo
  echo "| case | requests | instructions per request |"
  echo "|---|---:|---:|"
  echo "| chat (metered, proxied to the mock) | $(sent chat) | $(per chat) |"
  echo "| 401 (unknown key) | $(sent denied) | $(per denied) |"
  echo
  echo "Start-up and shutdown alone: $idle instructions."
  echo
  echo "## Where the chat run spends them (own cost, whole run)"
  echo
  echo '```'
  callgrind_annotate --inclusive=no "$work/chat.cg" 2>/dev/null | grep -E '^ *[0-9,]+ \([ 0-9.]+%\)  ' |
    grep -v 'PROGRAM TOTALS' | sed -E 's|/root/.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/library/||; s| \[[^]]*\]$||' | awk 'NR <= 30'
  echo '```'
  echo
  echo "## keygate's own functions, with what they call (whole run)"
  echo
  echo '```'
  callgrind_annotate --inclusive=yes "$work/chat.cg" 2>/dev/null | grep -E "  ($PWD/)?src/" |
    sed -E "s|  $PWD/|  |; s| \[[^]]*\]$||" | awk '!seen[$NF]++' | awk 'NR <= 25'
  echo '```'
} >"$work/report.md"
# Written whole or not at all.
mv "$work/report.md" "$out"
cat "$out"
