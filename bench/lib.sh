# Shared by the bench scripts (sourced): tools, a scratch folder cleaned on
# exit, and starting the mock upstream and keygate with a bench key.

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# start_mock PORT
start_mock() {
  PORT=$1 target/release/examples/bench_upstream & pids+=($!)
}

# start_keygate PORT MOCK_PORT [VAR=value ...]: keygate on $work/k.db in front
# of the mock; waits until it is ready. The failed-auth throttle is off: a
# load of bad keys from one address would otherwise measure its 429s, not
# the 401 path.
start_keygate() {
  local port=$1 mock=$2
  shift 2
  env KEYGATE_ADMIN_KEY=bench-admin KEYGATE_LOG=warn KEYGATE_ANOMALY__ENABLED=false \
    KEYGATE_LIMITS__FAILED_AUTH_PER_MINUTE=0 "$@" \
    target/release/keygate serve --listen 127.0.0.1:"$port" --database "sqlite://$work/k.db" \
    --upstream "http://127.0.0.1:$mock/v1" 2>"$work/keygate-$port.log" & pids+=($!)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
}

# create_key PORT: prints a new project key made through keygate on PORT.
create_key() {
  local base="http://127.0.0.1:$1" project
  project=$(curl -fs -H "Authorization: Bearer bench-admin" "$base/v1/organization/projects" | sed 's/.*"id":"\(proj_[^"]*\)".*/\1/')
  curl -fs -H "Authorization: Bearer bench-admin" -H "Content-Type: application/json" \
    -d '{"name":"bench"}' "$base/v1/organization/projects/$project/api_keys" | sed 's/.*"value":"\([^"]*\)".*/\1/'
}
