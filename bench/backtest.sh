#!/usr/bin/env bash
# What a backtest costs: `shiphat verify backtest` replaying a three-measurement Prometheus
# check over N past times, against a real Prometheus loaded with a day of recorded series
# (`promtool tsdb create-blocks-from openmetrics`), with the plugin compiled already.
#
# Usage: bench/backtest.sh SHIPHAT PLUGIN_DIR [N]
#   SHIPHAT     the binary to measure
#   PLUGIN_DIR  where metrics_verifier.wasm is (plugins/target/wasm32-wasip2/release)
#   N           how many times to replay (default 200), spread over the day
#
# Prints a Markdown table on stdout; progress goes to stderr. Needs Debian's `prometheus`
# package (prometheus and promtool), curl and python3.
set -euo pipefail
shiphat=$(realpath "$1")
plugins=$(realpath "$2")
n=${3:-200}
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
unset SHIPHAT_SERVER SHIPHAT_TOKEN SHIPHAT_CACHE_DIR RUST_LOG

# A day of one gauge, a sample every 15 s, from 2026-11-02T00:00:00Z.
start=1793577600
python3 - "$start" >"$work/series.om" <<'EOF'
import sys
start = int(sys.argv[1])
print("# TYPE checkout_error_ratio gauge")
for t in range(start, start + 86400, 15):
    ratio = 0.09 if (t - start) % 7200 < 600 else 0.004
    print(f'checkout_error_ratio{{service="checkout"}} {ratio} {t}')
print("# EOF")
EOF
promtool tsdb create-blocks-from openmetrics "$work/series.om" "$work/data" >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'scrape_configs: []\n' >"$work/prometheus.yml"
prometheus --web.listen-address="127.0.0.1:$port" --storage.tsdb.path="$work/data" \
  --storage.tsdb.retention.time=100y --config.file="$work/prometheus.yml" \
  >"$work/prometheus.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null && break
  sleep 0.1
done

cat >"$work/verify.yaml" <<EOF
name: checkout
steps:
  - id: verify
    uses: metrics-verifier
    allow: { http: ["127.0.0.1:$port"] }
    with:
      provider: prometheus
      address: http://127.0.0.1:$port
      metrics:
        - name: error_ratio
          query: max(checkout_error_ratio{service="checkout"})
          success_condition: result < 0.05
          interval: 1m
          count: 3
EOF
args=()
for i in $(seq 0 $((n - 1))); do
  args+=(--at "$(date -u -d "@$((start + i * 86400 / n))" +%Y-%m-%dT%H:%M:%SZ)")
done
run() {
  "$shiphat" verify backtest "$work/verify.yaml" --plugin-path "$plugins" \
    --cache-dir "$work/cache" "$@" >"$work/out.txt"
}
echo "compiling the plugin once" >&2
run --at "$(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)"
t0=$(date +%s%N)
run "${args[@]}"
t1=$(date +%s%N)
queries=$(awk -v n="$n" 'BEGIN { print n * 3 }')
echo "| replays | wall | per replay | verdicts |"
echo "|---|---|---|---|"
awk -v n="$n" -v d="$((t1 - t0))" -v last="$(tail -1 "$work/out.txt")" \
  'BEGIN { printf "| %d | %.0f ms | %.2f ms | %s |\n", n, d / 1e6, d / 1e6 / n, last }'
echo "(each replay asks Prometheus up to 3 instant queries; $queries at most in all)" >&2
