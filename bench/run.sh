#!/usr/bin/env bash
# Load benchmark, loopback only, bounded: the mock upstream directly, keygate in
# front of it, and nginx with a static map of bearer keys in front of it (the
# floor for "a proxy that checks a key"), for non-streaming chat, streaming chat
# and the 401 path. Writes a table to bench/RESULTS.md.
#   DURATION=5 CONCURRENCY=64 THREADS=2 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-64}
THREADS=${THREADS:-2}
MOCK_PORT=18001 KEYGATE_PORT=18002 NGINX_PORT=18003 BARE_PORT=18004

source bench/lib.sh
need wrk wrk
need nginx nginx-light

cargo build --release --locked --bin keygate --example bench_upstream --example bench_rate 2>&1 | tail -1
start_mock $MOCK_PORT
start_keygate $KEYGATE_PORT $MOCK_PORT
KEY=$(create_key $KEYGATE_PORT)

# The same database without metering (started after the key exists, so its
# index loads it), to measure what metering costs.
start_keygate $BARE_PORT $MOCK_PORT KEYGATE_USAGE__ENABLED=false

cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 128; }
  map_hash_bucket_size 256;
  map \$http_authorization \$key_ok { "Bearer $KEY" 1; default 0; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      if (\$key_ok = 0) { return 401 '{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'; }
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer upstream";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
sleep 0.5

run() { # target case url key stream
  local out
  out=$(KEY="$4" STREAM="$5" wrk -t"$THREADS" -c"$CONCURRENCY" -d"${DURATION}s" --latency -s bench/chat.lua "$3/v1/chat/completions" | grep '^RESULT')
  echo "$1 $2 ${out#RESULT }"
}
results="$work/results"
{
  run direct chat "http://127.0.0.1:$MOCK_PORT" none 0
  run keygate chat "http://127.0.0.1:$KEYGATE_PORT" "$KEY" 0
  run keygate-unmetered chat "http://127.0.0.1:$BARE_PORT" "$KEY" 0
  run nginx chat "http://127.0.0.1:$NGINX_PORT" "$KEY" 0
  run direct stream "http://127.0.0.1:$MOCK_PORT" none 1
  run keygate stream "http://127.0.0.1:$KEYGATE_PORT" "$KEY" 1
  run keygate-unmetered stream "http://127.0.0.1:$BARE_PORT" "$KEY" 1
  run nginx stream "http://127.0.0.1:$NGINX_PORT" "$KEY" 1
  run keygate 401 "http://127.0.0.1:$KEYGATE_PORT" sk-wrong 0
  run nginx 401 "http://127.0.0.1:$NGINX_PORT" sk-wrong 0
} | tee "$results"
rss_kb=$(ps -o rss= -p "${pids[1]}" | tr -d ' ')

# Open loop: latency at a fixed 5k requests/s (what keygate adds at p99), and
# the first byte of a stream under a light load (what it adds to TTFB).
rate() { # target case url key rps [stream]
  local out
  out=$(target/release/examples/bench_rate "$3" "$4" "$5" "$DURATION" "${6:-}" | grep '^RATE')
  echo "$1 $2 $5 ${out#RATE }"
}
rates="$work/rates"
{
  rate direct chat "http://127.0.0.1:$MOCK_PORT" none 5000
  rate keygate chat "http://127.0.0.1:$KEYGATE_PORT" "$KEY" 5000
  rate nginx chat "http://127.0.0.1:$NGINX_PORT" "$KEY" 5000
  rate direct stream "http://127.0.0.1:$MOCK_PORT" none 50 stream
  rate keygate stream "http://127.0.0.1:$KEYGATE_PORT" "$KEY" 50 stream
  rate nginx stream "http://127.0.0.1:$NGINX_PORT" "$KEY" 50 stream
} | tee "$rates"

# Idle memory with 100k keys: the bench database exported, grown to 100k keys
# (copies of the bench key's rows with new ids and digests) and imported.
target/release/keygate export --database "sqlite://$work/k.db" --output "$work/base.jsonl" 2>/dev/null
python3 - "$work/base.jsonl" "$work/100k.jsonl" <<'PY'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
lines = open(src).read().splitlines()
header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
key = next(r["row"] for r in rows if r["table"] == "api_keys" and r["row"]["kind"] == "project")
secret = next(r["row"] for r in rows if r["table"] == "api_key_secrets" and r["row"]["key_id"] == key["id"])
alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
with open(dst, "w") as out:
    header["rows"] += 200_000
    out.write(json.dumps(header) + "\n")
    for line in lines[1:]:
        out.write(line + "\n")
    for i in range(100_000):
        kid = "".join(alphabet[b % 62] for b in os.urandom(12))
        out.write(json.dumps({"table": "api_keys", "row": dict(key, id=kid, name=f"bench-{i}")}) + "\n")
        row = dict(secret, key_id=kid, digest={"hex": os.urandom(32).hex()})
        out.write(json.dumps({"table": "api_key_secrets", "row": row}) + "\n")
PY
target/release/keygate import "$work/100k.jsonl" --database "sqlite://$work/100k.db" 2>/dev/null
KEYGATE_LOG=warn target/release/keygate serve --listen 127.0.0.1:18005 --database "sqlite://$work/100k.db" \
  --upstream "http://127.0.0.1:$MOCK_PORT/v1" 2>"$work/100k.log" & pids+=($!)
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:18005/readyz" >/dev/null && break; sleep 0.1; done
sleep 1
idle_kb=$(ps -o rss= -p "${pids[-1]}" | tr -d ' ')
{
  echo "# keygate load benchmark"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- command: \`DURATION=$DURATION CONCURRENCY=$CONCURRENCY THREADS=$THREADS bench/run.sh\` (wrk, loopback, ${DURATION}s per case)"
  echo "- keygate RSS after the closed-loop runs: $((rss_kb / 1024)) MiB; idle with 100k keys: $((idle_kb / 1024)) MiB"
  echo
  echo "| case | target | requests/s | p50 | p99 | p99.9 | vs direct | vs nginx | non-2xx | socket errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk '
    { rps[$1" "$2]=$4; line[NR]=$0 }
    END {
      for (i = 1; i <= NR; i++) {
        split(line[i], f, " ");
        d = rps["direct "f[2]]; n = rps["nginx "f[2]];
        vd = d ? sprintf("%.0f%%", 100*f[4]/d) : "-"; vn = n ? sprintf("%.0f%%", 100*f[4]/n) : "-";
        printf "| %s | %s | %.0f | %.2f ms | %.2f ms | %.2f ms | %s | %s | %s | %s |\n", f[2], f[1], f[4], f[5]/1000, f[6]/1000, f[7]/1000, vd, vn, f[8], f[9]
      }
    }' "$results"
} > bench/RESULTS.md
{
  echo
  echo "Open loop (bench_rate): requests leave at a fixed rate; latency of the whole answer and of its first byte."
  echo
  echo "| case | target | rate/s | sent | ok | p50 | p99 | p99.9 | first byte p50 | first byte p99 | p99 added over direct | first byte p50 added |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk '
    { p99[$1" "$2]=$7; fb[$1" "$2]=$9; line[NR]=$0 }
    END {
      for (i = 1; i <= NR; i++) {
        split(line[i], f, " ");
        d99 = p99["direct "f[2]]; dfb = fb["direct "f[2]];
        printf "| %s | %s | %s | %s | %s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %+d us | %+d us |\n", f[2], f[1], f[3], f[4], f[5], f[6]/1000, f[7]/1000, f[8]/1000, f[9]/1000, f[10]/1000, f[7]-d99, f[9]-dfb
      }
    }' "$rates"
} >> bench/RESULTS.md
cat bench/RESULTS.md
