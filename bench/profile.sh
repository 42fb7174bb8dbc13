#!/usr/bin/env bash
# Where keygate's CPU goes under load: perf samples keygate (call graphs)
# while wrk drives non-streaming chat through it to the mock upstream, then
# writes the breakdown by binary, thread and function to bench/PROFILE.md.
# Loopback only, bounded; needs perf (linux-perf). The samples stay in
# PERF_DATA (default target/bench-profile.data) for `perf report -i`.
#   DURATION=6 CONCURRENCY=64 bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-6}
CONCURRENCY=${CONCURRENCY:-64}
PERF_DATA=${PERF_DATA:-target/bench-profile.data}
MOCK_PORT=18011 KEYGATE_PORT=18012

source bench/lib.sh
need wrk wrk
command -v perf >/dev/null 2>&1 || { echo "perf not found: install linux-perf (Debian) and run again" >&2; exit 1; }

cargo build --release --locked --bin keygate --example bench_upstream 2>&1 | tail -1
start_mock $MOCK_PORT
start_keygate $KEYGATE_PORT $MOCK_PORT
KEY=$(create_key $KEYGATE_PORT)
keygate_pid=${pids[1]}

# Load for the whole recording, started first so perf sees a steady state.
KEY="$KEY" STREAM=0 wrk -t2 -c"$CONCURRENCY" -d"$((DURATION + 2))s" -s bench/chat.lua \
  "http://127.0.0.1:$KEYGATE_PORT/v1/chat/completions" >"$work/wrk.out" & load=$!
sleep 1
perf record -q -F 999 -g -p "$keygate_pid" -o "$PERF_DATA" -- sleep "$DURATION" 2>"$work/perf.err" || {
  cat "$work/perf.err" >&2
  echo "perf could not record; with perf_event_paranoid > 1 run as root or lower it" >&2
  exit 1
}
wait "$load"

# report LINES [perf report options]: the first LINES rows of one view (awk
# reads to the end, so no writer in the pipe dies of SIGPIPE under pipefail).
report() {
  local lines=$1
  shift
  perf report -i "$PERF_DATA" --stdio -g none "$@" 2>/dev/null >"$work/view" || true
  grep -v -e '^#' -e '^$' "$work/view" | sed 's/  */ /g' | awk -v n="$lines" 'NR <= n' | cut -c1-160
}
{
  echo "# keygate CPU profile under load"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- command: \`DURATION=$DURATION CONCURRENCY=$CONCURRENCY bench/profile.sh\` (perf at 999 Hz on keygate; wrk, non-streaming chat, loopback)"
  echo "- load: $(awk '/Requests\/sec/{print $2}' "$work/wrk.out") requests/s"
  echo
  echo "## By binary"
  echo '```'
  report 8 --no-children --sort dso
  echo '```'
  echo
  echo "## By thread"
  echo '```'
  report 8 --no-children --sort comm
  echo '```'
  echo
  echo "## Functions, self time (top 30)"
  echo '```'
  report 30 --no-children --sort dso,symbol
  echo '```'
  echo
  echo "## System calls, with what they cause in the kernel"
  echo '```'
  report 100000 --children --sort symbol | grep -E '\[k\] (__x64_sys_|do_writev|handle_softirqs|schedule)' | awk 'NR <= 15' 
  echo '```'
} > bench/PROFILE.md
cat bench/PROFILE.md
