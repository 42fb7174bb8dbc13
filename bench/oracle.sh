#!/usr/bin/env bash
# Timing of refused keys (benches/oracle.rs): does the authentication decision
# take the same time for an unknown key, a wrong secret for a real id, and a
# revoked, suspended, expired or mistyped key? dudect-style: the classes are
# measured interleaved in random order, the slowest 10% of each cropped, and
# Welch's t against the unknown key reported (|t| > 4.5: told apart). Writes
# bench/RESULTS-oracle.md. About a minute after the release build.
#   KEYS=100000 SAMPLES=1000000 bench/oracle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-100000}
SAMPLES=${SAMPLES:-1000000}
table=$(KEYS=$KEYS SAMPLES=$SAMPLES cargo bench --locked --bench oracle 2>/dev/null)
echo "$table"
[ "$(printf '%s\n' "$table" | grep -c '^| ')" -ge 7 ] || { echo "oracle: no table" >&2; exit 1; }
{
  echo "# keygate: timing of refused keys"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- command: \`KEYS=$KEYS SAMPLES=$SAMPLES bench/oracle.sh\` (release build; one index of $KEYS keys)"
  echo "- method: dudect-style; classes interleaved at random, slowest 10% of each cropped; Welch's t against"
  echo "  the unknown key (|t| > 4.5 would mean the two are told apart by the time of the decision alone)"
  echo
  printf '%s\n' "$table"
} > bench/RESULTS-oracle.md
echo "wrote bench/RESULTS-oracle.md"
