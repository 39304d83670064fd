#!/usr/bin/env bash
# The daemon's throughput and memory: no-op steps per second through `shiphat serve` at 1, 10
# and 50 concurrent runs of a 100-step chain (timed by the daemon's own clock: each round from
# its first run's creation to its last run's end, as the API reports them, with one light
# client process starting the runs and polling), the resident memory of a fresh daemon, the memory
# each queued run adds, and the fsync latency of the disk the store is on (the ceiling of one
# run: each step's start is committed before its plugin runs, and its end shares the next
# step's start's commit, so one fsync a step, one after the other). Then
# what the web page waits for: the page itself and the API calls behind its views, timed on
# the history the benchmark left (hundreds of runs, a thousand queued).
#
# Usage: bench/daemon.sh [--quick] [--no-build]
# Prints one Markdown table on stdout; progress goes to stderr. Needs curl and python3 (for the
# fsync probe). Uses the release build of shiphat and the release plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0
build=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    *) echo "unknown argument \`$arg\`; use --quick or --no-build" >&2; exit 2 ;;
  esac
done

if [ "$build" = 1 ]; then
  cargo xtask plugins >&2
  cargo build --release -p shiphat >&2
fi
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
shiphat="${SHIPHAT_BIN:-$target_dir/release/shiphat}"  # SHIPHAT_BIN: another build
plugins="$root/plugins/target/wasm32-wasip2/release"
[ -x "$shiphat" ] || { echo "no \`$shiphat\`; run without --no-build" >&2; exit 2; }
[ -f "$plugins/noop.wasm" ] || { echo "no \`$plugins/noop.wasm\`; run \`cargo xtask plugins\`" >&2; exit 2; }

STEPS=100
QUEUED=1000
[ "$quick" = 1 ] && QUEUED=200

work=$(mktemp -d "${TMPDIR:-/tmp}/shiphat-daemon-bench.XXXXXX")
pid=""
cleanup() {
  if [ -n "${ROUNDS_PID:-}" ]; then kill "$ROUNDS_PID" 2>/dev/null || true; fi
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/workflows" "$work/data"
{
  echo "name: chain"
  echo "steps:"
  echo "  - id: s1"
  echo "    uses: noop"
  for i in $(seq 2 "$STEPS"); do
    echo "  - id: s$i"
    echo "    uses: noop"
    echo "    needs: s$((i - 1))"
  done
} >"$work/workflows/chain.yaml"
cat >"$work/workflows/hold.yaml" <<'EOF'
name: hold
concurrency: hold
steps:
  - id: wait
    uses: echo
    with: { message: holding the key, sleep_ms: 600000 }
EOF

export SHIPHAT_PLUGIN_PATH="$plugins" SHIPHAT_CACHE_DIR="$work/cache"
unset SHIPHAT_SERVER SHIPHAT_TOKEN SHIPHAT_CONFIG RUST_LOG
token=$("$shiphat" token create bench --role admin --data-dir "$work/data" 2>/dev/null)

"$shiphat" serve --listen 127.0.0.1:0 --data-dir "$work/data" --workflows "$work/workflows" \
  2>"$work/serve.log" &
pid=$!
addr=""
for _ in $(seq 1 600); do
  addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/serve.log" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "the daemon did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
url="http://$addr"

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }
api() { curl -sS --max-time 60 -H "Authorization: Bearer $token" "$@"; }
start_run() { # WORKFLOW
  api -X POST -H 'Content-Type: application/json' -d "{\"workflow\":\"$1\"}" "$url/api/v1/runs" \
    | grep -o '"id":"[^"]*"' | cut -d'"' -f4
}
# One round: starts C runs of `chain` at once and waits until N have succeeded in all, from one
# Python process that lives as long as the benchmark (a coprocess). On two cores, a client that
# forks a curl per run and a curl and an awk per poll takes CPU from the runs it times (one run
# alone measured 60 ms instead of 40; 50 runs, 150 processes at each round's start). Fails when
# a run failed, or after 10 minutes.
cat >"$work/round.py" <<'PY'
import json, re, sys, threading, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
def call(path, body=None):
    request = urllib.request.Request(url + path, data=body, headers={
        "Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=60).read().decode()
def count(text, status):
    pattern = r'^shiphat_runs_total\{[^}]*workflow="chain"[^}]*status="%s"[^}]*\} (\S+)' % status
    return sum(float(m) for m in re.findall(pattern, text, re.M))
def round_(runs, want):
    starts = [threading.Thread(target=call, args=("/api/v1/runs", b'{"workflow":"chain"}'))
              for _ in range(runs)]
    for t in starts: t.start()
    for t in starts: t.join()
    deadline = time.monotonic() + 600
    while True:
        text = call("/metrics")
        if count(text, "failed"):
            return "a run failed"
        if count(text, "succeeded") >= want:
            return "ok"
        if time.monotonic() > deadline:
            return "runs did not finish in 10 minutes"
        time.sleep(0.05)
for line in sys.stdin:
    runs, want = map(int, line.split())
    print(round_(runs, want), flush=True)
PY
round() { # C N: start C runs, wait for N to have succeeded
  [ -n "${ROUNDS_PID:-}" ] || coproc ROUNDS { python3 -u "$work/round.py" "$url" "$token"; }
  echo "$1 $2" >&"${ROUNDS[1]}"
  local reply
  read -r reply <&"${ROUNDS[0]}"
  [ "$reply" = ok ] || { echo "$reply" >&2; return 1; }
}
# The milliseconds the daemon took for the last round, by its own clock: from the first of the
# newest N runs of `chain` being created to the last one finishing. The client's own clock
# would add the time it takes to notice the end, a poll away.
round_span_ms() { # N
  api "$url/api/v1/runs?workflow=chain&limit=$1" | python3 -c '
import json, sys
runs = json.load(sys.stdin)["runs"]
print(max(r["finished_ms"] for r in runs) - min(r["created_ms"] for r in runs))'
}

# Idle: a fresh daemon with its workflows loaded, after a second's rest.
sleep 1
idle_kib=$(rss_kib)

# Warm-up: one run, so every size is measured on a warm daemon.
round 1 1

done_runs=1
rows=()
concurrencies="1 10 50 200"
[ "$quick" = 1 ] && concurrencies="1 10"
for concurrency in $concurrencies; do
  # Enough rounds that each figure covers at least ~1,000 steps.
  rounds=$(((1000 + concurrency * STEPS - 1) / (concurrency * STEPS)))
  [ "$quick" = 1 ] && rounds=1
  echo "running $rounds round(s) of $concurrency concurrent $STEPS-step runs" >&2
  span_ms=0
  for _ in $(seq 1 "$rounds"); do
    done_runs=$((done_runs + concurrency))
    round "$concurrency" "$done_runs" || { tail -20 "$work/serve.log" >&2; exit 1; }
    span_ms=$((span_ms + $(round_span_ms "$concurrency")))
  done
  # The goals of issue 16: one run alone, and 50 at once (the others have none).
  case "$concurrency" in 1) goal="≥ 4000" ;; 50) goal="≥ 10000" ;; *) goal="" ;; esac
  rows+=("$(awk -v c="$concurrency" -v r="$rounds" -v s="$STEPS" -v m="$span_ms" -v k="$(rss_kib)" -v g="$goal" \
    'BEGIN { n = c * r * s; printf "| steps/s at %d concurrent run(s) (%d steps; %.1f runs/s; RSS after %.1f MiB) | %.0f | %s |", c, n, c * r * 1000 / m, k / 1024, n * 1000 / m, g }')")
done

# Queued runs: one run holds the key `hold`, then QUEUED more wait behind it.
start_run hold >/dev/null
before_kib=$(rss_kib)
seq 1 "$QUEUED" | xargs -P 8 -I{} curl -sS --max-time 60 -o /dev/null -X POST \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"workflow":"hold"}' "$url/api/v1/runs"
queued=$(curl -sS --max-time 10 "$url/metrics" | awk '/^shiphat_queue_depth/ { print $2 + 0 }')
sleep 1
after_kib=$(rss_kib)

# The web page's calls, each the median of 20 requests, on the history above.
median_ms() { # PATH: the median time of 20 GETs, in milliseconds
  for _ in $(seq 1 20); do
    curl -sS --max-time 60 -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $token" "$url$1"
  done | sort -n | awk '{ t[NR] = $1 } END { printf "%.2f", t[int((NR + 1) / 2)] * 1000 }'
}
chain_run=$(api "$url/api/v1/runs?workflow=chain&status=succeeded&limit=1" \
  | grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4)
page_rows=(
  "| web: \`GET /\` (the page) | $(median_ms /) ms |  |"
  "| web: runs list, \`GET /api/v1/runs?limit=50\` | $(median_ms '/api/v1/runs?limit=50') ms |  |"
  "| web: a 100-step run, \`GET /api/v1/runs/{id}\` | $(median_ms "/api/v1/runs/$chain_run") ms |  |"
  "| web: environments, \`GET /api/v1/environments\` | $(median_ms /api/v1/environments) ms |  |"
)

# The disk: fsync latency of a 4 KiB append in the data directory.
fsync=$(python3 - "$work/data/fsync-probe" <<'EOF'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
lat = []
for _ in range(200):
    os.write(fd, b"x" * 4096)
    t = time.perf_counter(); os.fsync(fd); lat.append(time.perf_counter() - t)
os.close(fd); os.unlink(sys.argv[1])
lat.sort()
print("%.2f %.2f" % (lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.9)] * 1e3))
EOF
)
fsync_median=${fsync% *}
fsync_p90=${fsync#* }

echo "| measure | value | goal |"
echo "|---|---|---|"
for row in "${rows[@]}"; do echo "$row"; done
awk -v k="$idle_kib" 'BEGIN { printf "| idle RSS of a fresh daemon | %.1f MiB | ≤ 40 MiB |\n", k / 1024 }'
awk -v b="$before_kib" -v a="$after_kib" -v n="$QUEUED" -v q="$queued" \
  'BEGIN { printf "| RSS added per queued run (%d queued; queue depth %d) | %.1f KiB |  |\n", n, q, (a - b) / n }'
echo "| fsync of a 4 KiB append (median / p90) | $fsync_median / $fsync_p90 ms |  |"
awk -v m="$fsync_median" \
  'BEGIN { printf "| ceiling of one run: 1 / median fsync | %.0f steps/s |  |\n", 1000 / m }'
for row in "${page_rows[@]}"; do echo "$row"; done
