#!/usr/bin/env bash
# Criterion micro-benchmarks of the per-request path (benches/hot_path.rs):
# key parse and checksum, index lookup at 1k/100k/1M keys, the authentication
# decision, the limiter, auth + limit together at 1M keys (with cold and
# with just-written request headers), error rendering. Writes a table to
# bench/RESULTS-hot-path.md. About 3 minutes on 2 cores after the build
# (most of it generating a million keys, four times).
#   WARMUP=1 MEASURE=3 bench/hot_path.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WARMUP=${WARMUP:-1}
MEASURE=${MEASURE:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo bench --locked --bench hot_path -- --warm-up-time "$WARMUP" --measurement-time "$MEASURE" 2>&1 | tee "$out"
{
  echo "# keygate hot-path micro-benchmarks"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- command: \`WARMUP=$WARMUP MEASURE=$MEASURE bench/hot_path.sh\` (criterion; the middle figure is the estimate)"
  echo
  echo "| benchmark | low | estimate | high |"
  echo "|---|---:|---:|---:|"
  awk '
    /^Benchmarking / || /^Found / || /outlier/ || /^ *(change|Performance|No change)/ { next }
    /^[^ ].*time: +\[/ { name = $0; sub(/ +time:.*/, "", name) }
    /^[^ ]/ && !/time:/ { name = $0 }
    /time: +\[/ {
      line = $0; sub(/.*\[/, "", line); sub(/\].*/, "", line); split(line, f, " ")
      printf "| %s | %s %s | %s %s | %s %s |\n", name, f[1], f[2], f[3], f[4], f[5], f[6]
    }' "$out"
} > bench/RESULTS-hot-path.md
echo "wrote bench/RESULTS-hot-path.md"
