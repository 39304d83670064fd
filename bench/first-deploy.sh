#!/usr/bin/env bash
# First-deploy latency of a workflow whose plugin is large: the Python example (notify, 19 MB),
# whose first compile takes tens of seconds. What the first deploy after a new plugin waits,
# for the one-shot CLI and for the daemon, each from an empty compile cache.
#
# Usage: bench/first-deploy.sh SHIPHAT NOTIFY_WASM
#   SHIPHAT      the binary to measure (an older one too: the rows it cannot do say `n/a`)
#   NOTIFY_WASM  plugins/examples/notify-py built by plugins/examples/build-any-language.sh
#
# Prints a Markdown table on stdout; progress goes to stderr. Needs curl and python3 (which
# plays the webhook notify posts to).
set -euo pipefail
shiphat=$(realpath "$1")
notify=$(realpath "$2")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
unset SHIPHAT_SERVER SHIPHAT_TOKEN SHIPHAT_CONFIG SHIPHAT_STORE SHIPHAT_CACHE_DIR RUST_LOG

now() { date +%s%N; }
ms() { awk -v d="$(($2 - $1))" 'BEGIN { printf "%.0f ms", d / 1e6 }'; } # START END
row() { printf '| %s | %s |\n' "$1" "$2"; }
took() { # RUN: from its acceptance to its end, as the daemon recorded them
  curl -sS --max-time 60 -H "Authorization: Bearer $token" "$url/api/v1/runs/$1" |
    python3 -c 'import json, sys; r = json.load(sys.stdin); print("%d ms" % (r["finished_ms"] - r["created_ms"]))'
}

# The webhook: answers every POST with 200.
python3 - "$work/hook.port" <<'EOF' &
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
open(sys.argv[1], "w").write(str(server.server_address[1]))
server.serve_forever()
EOF
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/hook.port" ] && break; sleep 0.05; done
hook="127.0.0.1:$(cat "$work/hook.port")"

mkdir -p "$work/workflows"
cat >"$work/workflows/tell.yaml" <<EOF
name: tell
steps:
  - id: notify
    uses: $notify
    with: { url: "http://$hook/hooks/deploys", release: "1.0", status: succeeded }
    allow: { http: ["$hook"] }
EOF
file="$work/workflows/tell.yaml"

echo "| measurement (empty compile cache at the start of each) | wall time |"
echo "|---|---|"

# The one-shot CLI: the first run compiles on the deploy path.
echo "cli: first run, cold cache" >&2
t0=$(now)
"$shiphat" run "$file" --cache-dir "$work/cache-cli" >/dev/null 2>"$work/cli.err"
row "\`shiphat run\`, first run" "$(ms "$t0" "$(now)")"
t0=$(now)
"$shiphat" run "$file" --cache-dir "$work/cache-cli" >/dev/null 2>&1
row "\`shiphat run\`, second run" "$(ms "$t0" "$(now)")"

# The same after `validate --warm`, where the binary has it.
if "$shiphat" validate --help | grep -q -- --warm; then
  echo "cli: validate --warm, then the first run" >&2
  t0=$(now)
  "$shiphat" validate --warm "$file" --cache-dir "$work/cache-warm" 2>/dev/null
  row "\`shiphat validate --warm\` (off the deploy path)" "$(ms "$t0" "$(now)")"
  t0=$(now)
  "$shiphat" run "$file" --cache-dir "$work/cache-warm" >/dev/null 2>&1
  row "\`shiphat run\` after \`validate --warm\`, first run" "$(ms "$t0" "$(now)")"
else
  row "\`shiphat validate --warm\`" "n/a"
fi

# The daemon: when it listens, when it is ready, and a deploy requested as soon as it listens.
echo "daemon: start on a cold cache" >&2
token=$("$shiphat" token create root --role admin --data-dir "$work/data")
: >"$work/serve.log"
t0=$(now)
"$shiphat" serve --listen 127.0.0.1:0 --data-dir "$work/data" --workflows "$work/workflows" \
  --cache-dir "$work/cache-daemon" 2>"$work/serve.log" &
pids+=($!)
addr=""
while [ -z "$addr" ]; do
  addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/serve.log" | head -n1)
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  [ -n "$addr" ] || sleep 0.01
done
listening=$(now)
url="http://$addr"
row "\`shiphat serve\`: listens" "$(ms "$t0" "$listening")"
asked=$(now)
id=$(curl -sS --max-time 600 -X POST -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d '{"workflow":"tell"}' "$url/api/v1/runs" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
answered=$(now)
row "\`shiphat serve\`: a run requested once it listens is answered" "$(ms "$asked" "$answered")"
ready=""
while :; do
  status=$(curl -sS --max-time 60 -H "Authorization: Bearer $token" "$url/api/v1/runs/$id" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
  if [ -z "$ready" ] && curl -sf --max-time 60 -o /dev/null "$url/readyz"; then ready=$(now); fi
  case "$status" in succeeded | failed | cancelled) break ;; esac
  # Coarse while the compile runs: a poll takes CPU from it.
  sleep 0.2
done
done_at=$(now)
[ "$status" = succeeded ] || { echo "the run $status" >&2; cat "$work/serve.log" >&2; exit 1; }
if [ -n "$ready" ]; then
  row "\`shiphat serve\`: ready (\`GET /readyz\`)" "$(ms "$t0" "$ready")"
else
  row "\`shiphat serve\`: ready (\`GET /readyz\`)" "n/a"
fi
row "\`shiphat serve\`: that first run succeeded, from the daemon's start" "$(ms "$t0" "$done_at")"
row "\`shiphat serve\`: that first run, accepted to finished (the daemon's clock)" "$(took "$id")"
id=$(curl -sS --max-time 600 -X POST -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d '{"workflow":"tell"}' "$url/api/v1/runs" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
while :; do
  status=$(curl -sS --max-time 60 -H "Authorization: Bearer $token" "$url/api/v1/runs/$id" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
  case "$status" in succeeded | failed | cancelled) break ;; esac
  sleep 0.01
done
row "\`shiphat serve\`: a run requested once ready, accepted to finished (the daemon's clock)" "$(took "$id")"
