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
# With --postgres, the daemons share one PostgreSQL database instead (a throwaway server started
# here and removed on exit, as the store's tests start theirs, with the server's durable
# defaults): the same chain at 1 and 50 concurrent runs through one daemon, then through three
# (each round's runs started round-robin across them; any daemon may claim any run), the idle
# memory of each daemon, and the takeover: a run of an `idempotent` step under `resume: auto`
# whose daemon is killed with SIGKILL, timed from the end of its lease (as the database records
# it) to the run being `running` again on another daemon, as the API shows it; and how long
# an event committed through one daemon takes to reach an event stream of another.
#
# Usage: bench/daemon.sh [--quick] [--no-build] [--postgres]
# Prints one Markdown table on stdout; progress goes to stderr. Needs curl and python3 (for the
# fsync probe); --postgres needs Debian's `postgresql` package (/usr/lib/postgresql/N/bin).
# Uses the release build of shiphat and the release plugins. In the postgres mode
# BENCH_LEASE_RENEW_MS and BENCH_LEASE_EXPIRES_MS set the daemons' `[lease]` (2000 and 10000,
# the daemon's defaults). With BENCH_PG_STATEMENTS=1 the server loads `pg_stat_statements`, and
# after the table comes, for each throughput row, what its statements cost per step: the
# statements the daemons sent (each a round trip, or part of one) and the time the server took
# to execute them, then each statement, those run inside a function too, the costliest first.
# BENCH_PG_SQL: SQL run on the benchmark's database once its schema is migrated, before any
# daemon starts: to measure a change of the server's side (a function of the schema, say)
# against the same binary, without another build. BENCH_PG_OPTS: more of the server's settings,
# as `-c NAME=VALUE ...` (`auto_explain`'s, say); BENCH_PG_LOG: a file the server's log is
# copied to on exit (the server's directory is removed).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0
build=1
postgres=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    --postgres) postgres=1 ;;
    *) echo "unknown argument \`$arg\`; use --quick, --no-build or --postgres" >&2; exit 2 ;;
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
pids=()  # the daemons, by number
urls=()
pg_dir=""  # the PostgreSQL server's directory, once it exists
# PostgreSQL refuses to run as root: then its programs run as the `postgres` user that
# Debian's package creates.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
  if [ -n "${ROUNDS_PID:-}" ]; then kill "$ROUNDS_PID" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$pg_dir" ]; then
    [ -n "${BENCH_PG_LOG:-}" ] && cp "$pg_dir/server.log" "$BENCH_PG_LOG" 2>/dev/null || true
    # Immediate: the data is thrown away.
    (cd / && as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w -t 90 stop) >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/workflows"
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
if [ "$postgres" = 1 ]; then
  # The takeover's run: one step that waits, and may run again after a crash.
  cat >"$work/workflows/takeover.yaml" <<'EOF'
name: takeover
resume: auto
steps:
  - id: wait
    uses: echo
    idempotent: true
    with: { message: waiting to be taken over, sleep_ms: 600000 }
EOF
  # The event stream's run: twenty steps 20 ms apart, each start and end an event.
  {
    echo "name: tick"
    echo "steps:"
    for i in $(seq 1 20); do
      echo "  - id: t$i"
      echo "    uses: echo"
      echo "    with: { message: tick, sleep_ms: 20 }"
      [ "$i" -gt 1 ] && echo "    needs: t$((i - 1))"
    done
  } >"$work/workflows/tick.yaml"
fi

export SHIPHAT_PLUGIN_PATH="$plugins" SHIPHAT_CACHE_DIR="$work/cache"
unset SHIPHAT_SERVER SHIPHAT_TOKEN SHIPHAT_CONFIG SHIPHAT_STORE SHIPHAT_STORE_PASSWORD RUST_LOG

start_daemon() { # N [ARGS...]: starts daemon N with data directory `dataN`; sets pids[N], urls[N]
  local n=$1 addr="" p
  shift
  "$shiphat" serve --listen 127.0.0.1:0 --data-dir "$work/data$n" --workflows "$work/workflows" \
    "$@" 2>"$work/serve$n.log" &
  p=$!
  pids[n]=$p
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/serve$n.log" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$p" 2>/dev/null || { cat "$work/serve$n.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "daemon $n did not start:" >&2; cat "$work/serve$n.log" >&2; exit 1; }
  urls[n]="http://$addr"
  # It listens at once and loads its workflows' plugins behind; measure it once they are.
  for _ in $(seq 1 600); do
    curl -sf --max-time 10 -o /dev/null "${urls[n]}/readyz" && return
    sleep 0.1
  done
  echo "daemon $n never became ready:" >&2
  cat "$work/serve$n.log" >&2
  exit 1
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; } # PID
api() { curl -sS --max-time 60 -H "Authorization: Bearer $token" "$@"; }
start_run() { # WORKFLOW: through `$url`
  api -X POST -H 'Content-Type: application/json' -d "{\"workflow\":\"$1\"}" "$url/api/v1/runs" \
    | grep -o '"id":"[^"]*"' | cut -d'"' -f4
}
# One round: starts C runs of `chain` at once and waits until N have succeeded in all, from one
# Python process that lives as long as the benchmark (a coprocess). On two cores, a client that
# forks a curl per run and a curl and an awk per poll takes CPU from the runs it times (one run
# alone measured 60 ms instead of 40; 50 runs, 150 processes at each round's start). The runs
# are started round-robin across the daemons in `urls` (one, except in the postgres mode), and
# those that succeeded are summed over their `/metrics` (each daemon counts the runs it ran).
# Fails when a run failed, or after 10 minutes.
cat >"$work/round.py" <<'PY'
import json, re, sys, threading, time, urllib.request
token = sys.argv[1]
def call(url, path, body=None):
    request = urllib.request.Request(url + path, data=body, headers={
        "Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=60).read().decode()
def count(text, status):
    pattern = r'^shiphat_runs_total\{[^}]*workflow="chain"[^}]*status="%s"[^}]*\} (\S+)' % status
    return sum(float(m) for m in re.findall(pattern, text, re.M))
started = 0  # runs started so far: the next goes to the daemon after the last one's
def round_(urls, runs, want):
    global started
    starts = [threading.Thread(target=call, args=(
        urls[(started + i) % len(urls)], "/api/v1/runs", b'{"workflow":"chain"}'))
        for i in range(runs)]
    started += runs
    for t in starts: t.start()
    for t in starts: t.join()
    deadline = time.monotonic() + 600
    while True:
        texts = [call(url, "/metrics") for url in urls]
        if sum(count(text, "failed") for text in texts):
            return "a run failed"
        if sum(count(text, "succeeded") for text in texts) >= want:
            return "ok"
        if time.monotonic() > deadline:
            return "runs did not finish in 10 minutes"
        time.sleep(0.05)
for line in sys.stdin:
    runs, want, urls = line.split()
    print(round_(urls.split(","), int(runs), int(want)), flush=True)
PY
round() { # C N: start C runs across the daemons in `urls`, wait for N to have succeeded
  [ -n "${ROUNDS_PID:-}" ] || coproc ROUNDS { python3 -u "$work/round.py" "$token"; }
  echo "$1 $2 $(IFS=,; echo "${urls[*]}")" >&"${ROUNDS[1]}"
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
# Runs the rounds of C concurrent runs that one row measures: enough that it covers at least
# ~1,000 steps (one with --quick). Sets `rounds` and `span_ms`, their total by the daemons' clock.
done_runs=0
measure_rounds() { # C
  rounds=$(((1000 + $1 * STEPS - 1) / ($1 * STEPS)))
  [ "$quick" = 1 ] && rounds=1
  echo "running $rounds round(s) of $1 concurrent $STEPS-step runs on ${#urls[@]} daemon(s)" >&2
  span_ms=0
  for _ in $(seq 1 "$rounds"); do
    done_runs=$((done_runs + $1))
    round "$1" "$done_runs" || { for log in "$work"/serve*.log; do tail -20 "$log" >&2; done; exit 1; }
    span_ms=$((span_ms + $(round_span_ms "$1")))
  done
}

if [ "$postgres" = 1 ]; then
  bench_postgres() {
    # The newest server installed, started as the store's tests start theirs
    # (engine/store/src/testing.rs), but with the server's durable defaults (`fsync` and
    # `synchronous_commit` on), so that its commits wait for the disk as SQLite's do.
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [ -x "$pg_bin/initdb" ] || {
      echo "no PostgreSQL server programs in /usr/lib/postgresql/*/bin; install Debian's \`postgresql\` package (\`apt-get install postgresql\`)" >&2
      exit 2
    }
    # In /tmp, where the `postgres` user can reach it.
    pg_dir=$(mktemp -d /tmp/shiphat-bench-pg.XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_dir"
    # The server's programs run from `/`: the `postgres` user may not enter this directory.
    (cd / && as_pg "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U shiphat -E UTF8 --locale=C \
      --no-sync) >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; exit 1; }
    # A port picked free and released: another process taking it in between fails the start.
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local statements=${BENCH_PG_STATEMENTS:-0} preload=""
    # `track=all`: the statements inside functions too (marked `in a function` below).
    [ "$statements" = 1 ] && preload="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
    (cd / && as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 90 \
      -o "-k $pg_dir -p $port -c listen_addresses=127.0.0.1 $preload ${BENCH_PG_OPTS:-}" start) >"$work/pg_ctl.log" 2>&1 \
      || { cat "$work/pg_ctl.log" >&2; cat "$pg_dir/server.log" >&2; exit 1; }
    "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U shiphat bench
    sql() { "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U shiphat -d bench -Atqc "$1"; }
    [ "$statements" = 1 ] && sql "CREATE EXTENSION pg_stat_statements"
    # Rows of three columns (calls, µs, statement) as a Markdown table's rows.
    stats() {
      "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U shiphat -d bench -Atq -F $'\t' -c "$1" \
        | awk -F'\t' '{ gsub(/\|/, "\\|", $3); printf "| %s | %s | `%s` |\n", $1, $2, $3 }'
    }
    local statement_tables=()
    local postmaster
    postmaster=$(head -n1 "$pg_dir/data/postmaster.pid")

    local renew_ms=${BENCH_LEASE_RENEW_MS:-2000} expires_ms=${BENCH_LEASE_EXPIRES_MS:-10000}
    # The server trusts loopback connections: no password.
    cat >"$work/shiphat.toml" <<EOF
store = "postgres://shiphat@127.0.0.1:$port/bench"

[lease]
renew = "${renew_ms}ms"
expires = "${expires_ms}ms"
EOF
    # Tokens live in the database: one, for every daemon.
    token=$("$shiphat" token create bench --role admin --config "$work/shiphat.toml" 2>"$work/token.log") \
      || { cat "$work/token.log" >&2; exit 1; }
    # `token create` opened the store, which migrated the schema.
    [ -n "${BENCH_PG_SQL:-}" ] && sql "$BENCH_PG_SQL" >/dev/null

    # CPU time in clock ticks of these processes and of their children, the ended ones
    # included (the server's backends, the client's Python).
    cpu_ticks() { # PID...
      python3 - "$@" <<'PY'
import glob, sys
pids = set(sys.argv[1:])
ticks = 0
for path in glob.glob("/proc/[0-9]*/stat"):
    try:
        fields = open(path).read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        continue  # ended meanwhile
    pid = path.split("/")[2]
    if pid in pids:  # utime, stime, and those of its ended children
        ticks += sum(int(f) for f in fields[11:15])
    elif fields[1] in pids:  # a child: utime, stime
        ticks += int(fields[11]) + int(fields[12])
print(ticks)
PY
    }
    # The runs of `chain` that succeeded on each daemon, as `a b c`.
    ran() {
      local u
      for u in "${urls[@]}"; do
        curl -sS --max-time 60 "$u/metrics" \
          | awk '/^shiphat_runs_total\{.*workflow="chain".*status="succeeded"/ { s += $2 } END { printf "%d ", s }'
      done
    }
    local rows=() idle=() concurrencies="1 50" hz
    [ "$quick" = 1 ] && concurrencies="1 10"
    hz=$(getconf CLK_TCK)
    # One row per concurrency, on the daemons started so far.
    throughput_rows() {
      local c before_ran after_ran daemons_before pg_before client_before goal
      for c in $concurrencies; do
        goal=""
        [ "${#urls[@]}" = 3 ] && [ "$c" = 50 ] && goal="≥ one SQLite daemon's"
        before_ran=$(ran)
        daemons_before=$(cpu_ticks "${pids[@]}")
        pg_before=$(cpu_ticks "$postmaster")
        client_before=$(cpu_ticks "$ROUNDS_PID")
        [ "$statements" = 1 ] && sql "SELECT pg_stat_statements_reset()" >/dev/null
        measure_rounds "$c"
        if [ "$statements" = 1 ]; then
          local n=$((c * rounds * STEPS))
          statement_tables+=("$(
            echo
            echo "Statements per step, ${#urls[@]} daemon(s), $c concurrent run(s) ($n steps):"
            echo
            echo "| calls a step | µs a step | statement |"
            echo "|---|---|---|"
            stats "SELECT round(sum(calls)::numeric / $n, 2), round((sum(total_exec_time) * 1000 / $n)::numeric), 'all sent by clients' FROM pg_stat_statements WHERE toplevel"
            stats "SELECT round(calls::numeric / $n, 2), round((total_exec_time * 1000 / $n)::numeric), CASE WHEN toplevel THEN '' ELSE '(in a function) ' END || left(regexp_replace(query, '\s+', ' ', 'g'), 100) FROM pg_stat_statements WHERE calls >= $n / 100 ORDER BY total_exec_time DESC LIMIT 14"
          )")
        fi
        after_ran=$(ran)
        rows+=("$(awk -v c="$c" -v r="$rounds" -v s="$STEPS" -v m="$span_ms" -v d="${#urls[@]}" \
          -v before="$before_ran" -v after="$after_ran" -v hz="$hz" \
          -v cd="$(($(cpu_ticks "${pids[@]}") - daemons_before))" \
          -v cp="$(($(cpu_ticks "$postmaster") - pg_before))" \
          -v cc="$(($(cpu_ticks "$ROUNDS_PID") - client_before))" \
          -v g="$goal" '
          BEGIN {
            n = c * r * s
            split(before, b, " "); split(after, a, " ")
            per = ""
            for (i = 1; i <= d; i++) per = per (i > 1 ? " / " : "") a[i] - b[i]
            us = 1e6 / hz / n
            printf "| steps/s, %d daemon(s), %d concurrent run(s) (%d steps; %.1f runs/s; runs per daemon %s; CPU a step: daemons %.0f µs, PostgreSQL %.0f µs, client %.0f µs) | %.0f | %s |",
              d, c, n, c * r * 1000 / m, per, cd * us, cp * us, cc * us, n * 1000 / m, g
          }')")
      done
    }

    # One daemon: idle, warmed up by one run, then the rounds.
    start_daemon 1 --config "$work/shiphat.toml"
    url=${urls[1]}
    sleep 1
    idle[1]=$(rss_kib "${pids[1]}")
    done_runs=1
    round 1 1
    throughput_rows

    # Three daemons on the same database: two more, idle, then three warm-up runs, one started
    # through each.
    start_daemon 2 --config "$work/shiphat.toml"
    start_daemon 3 --config "$work/shiphat.toml"
    sleep 1
    idle[2]=$(rss_kib "${pids[2]}")
    idle[3]=$(rss_kib "${pids[3]}")
    done_runs=$((done_runs + 3))
    round 3 "$done_runs"
    throughput_rows

    # Events across daemons: runs started through daemon 1 (whichever daemon claims them),
    # each followed through daemon 2's event stream; for each event that arrives live (stamped
    # after the stream opened), its arrival less the time the runner stamped it.
    echo "event streams across daemons" >&2
    local sse
    sse=$(python3 - "${urls[1]}" "${urls[2]}" "$token" "$([ "$quick" = 1 ] && echo 1 || echo 5)" <<'PY'
import datetime, json, sys, time, urllib.request
start_url, follow_url, token, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
auth = {"Authorization": "Bearer " + token}
late = []
for _ in range(runs):
    request = urllib.request.Request(start_url + "/api/v1/runs", data=b'{"workflow": "tick"}',
                                     headers=dict(auth, **{"Content-Type": "application/json"}))
    run = json.load(urllib.request.urlopen(request, timeout=60))["id"]
    stream = urllib.request.Request(follow_url + "/api/v1/runs/" + run + "/events", headers=auth)
    with urllib.request.urlopen(stream, timeout=60) as events:
        opened = time.time()
        for line in events:
            if not line.startswith(b"data:"):
                continue
            now = time.time()
            event = json.loads(line[5:])
            stamped = datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
            if stamped > opened:
                late.append((now - stamped) * 1000)
            if event["event"] == "run_finished":
                break
late.sort()
print("%d events: median %.1f ms, p95 %.1f ms, max %.1f ms" % (
    len(late), late[len(late) // 2], late[int(len(late) * 0.95)], late[-1]))
PY
)

    # The takeover: a run on one daemon, that daemon killed, the run watched through another.
    # Which daemon holds the run is the store's to say (`lease_owner`, `HOST:PID:RANDOM`).
    cat >"$work/watch.py" <<'PY'
import json, sys, time, urllib.request
url, token, run, until, bound = sys.argv[1:6]
deadline = time.monotonic() + float(bound)
while time.monotonic() < deadline:
    request = urllib.request.Request(url + "/api/v1/runs/" + run,
                                     headers={"Authorization": "Bearer " + token})
    seen = json.load(urllib.request.urlopen(request, timeout=10))
    done = {
        "started": seen["status"] == "running"
            and any(s["status"] == "running" for s in seen["steps"]),
        "resumed": seen["status"] == "running" and "resumed" in (seen.get("detail") or ""),
        "ended": seen["status"] in ("succeeded", "failed", "cancelled"),
    }[until]
    if done:
        print(int(time.time() * 1000))
        sys.exit(0)
    time.sleep(0.05)
print("run %s not %s after %s s: %s" % (run, until, bound, json.dumps(seen)), file=sys.stderr)
sys.exit(1)
PY
    watch() { python3 "$work/watch.py" "$url" "$token" "$@"; } # RUN UNTIL SECONDS
    local trials=5 from_expiry=() from_kill=() id owner owner_pid victim kill_ms lease_end seen n
    [ "$quick" = 1 ] && trials=1
    for trial in $(seq 1 "$trials"); do
      echo "takeover $trial of $trials (lease ${expires_ms} ms, renewed every ${renew_ms} ms)" >&2
      url=${urls[1]}
      id=$(start_run takeover)
      watch "$id" started 60 >/dev/null
      owner=$(sql "SELECT lease_owner FROM runs WHERE id = '$id'")
      owner_pid=$(echo "$owner" | awk -F: '{ print $(NF - 1) }')
      victim=""
      for n in "${!pids[@]}"; do [ "${pids[n]}" = "$owner_pid" ] && victim=$n; done
      [ -n "$victim" ] || { echo "run \`$id\` is held by \`$owner\`, none of the daemons" >&2; exit 1; }
      kill -9 "${pids[victim]}"
      kill_ms=$(python3 -c 'import time; print(int(time.time() * 1000))')
      wait "${pids[victim]}" 2>/dev/null || true
      # Read after the kill: nobody renews it any more.
      lease_end=$(sql "SELECT lease_expires_ms FROM runs WHERE id = '$id'")
      for n in "${!urls[@]}"; do [ "$n" != "$victim" ] && url=${urls[n]}; done
      seen=$(watch "$id" resumed $(((expires_ms + renew_ms) / 1000 + 60)))
      from_expiry+=($((seen - lease_end)))
      from_kill+=($((seen - kill_ms - expires_ms)))
      # The run goes, and its daemon comes back for the next trial.
      api -X POST "$url/api/v1/runs/$id/cancel" >/dev/null
      watch "$id" ended 60 >/dev/null
      start_daemon "$victim" --config "$work/shiphat.toml"
    done
    spread() { printf '%s\n' "$@" | sort -n | awk '{ t[NR] = $1 } END { printf "%d / %d / %d ms", t[1], t[int((NR + 1) / 2)], t[NR] }'; }

    echo "| measure | value | goal |"
    echo "|---|---|---|"
    for row in "${rows[@]}"; do echo "$row"; done
    awk -v a="${idle[1]}" -v b="${idle[2]}" -v c="${idle[3]}" \
      'BEGIN { printf "| idle RSS of each fresh daemon (1 / 2 / 3) | %.1f / %.1f / %.1f MiB |  |\n", a / 1024, b / 1024, c / 1024 }'
    echo "| takeover after \`kill -9\`: the lease's recorded end to \`running\` on another daemon, polled every 50 ms (lease ${expires_ms} ms, renewed every ${renew_ms} ms; min / median / max of $trials) | $(spread "${from_expiry[@]}") | ≤ 1000 ms |"
    echo "| the same, from the kill + ${expires_ms} ms | $(spread "${from_kill[@]}") |  |"
    echo "| an event committed through one daemon, to an event stream of another: the runner's time stamp to the client's read | $sse | ≤ 100 ms |"
    for table in "${statement_tables[@]}"; do echo "$table"; done
  }
  bench_postgres
  exit 0
fi

mkdir -p "$work/data0"
token=$("$shiphat" token create bench --role admin --data-dir "$work/data0" 2>/dev/null)
start_daemon 0
pid=${pids[0]}
url=${urls[0]}

# Idle: a fresh daemon with its workflows loaded, after a second's rest.
sleep 1
idle_kib=$(rss_kib "$pid")

# Warm-up: one run, so every size is measured on a warm daemon.
done_runs=1
round 1 1

rows=()
concurrencies="1 10 50 200"
[ "$quick" = 1 ] && concurrencies="1 10"
for concurrency in $concurrencies; do
  measure_rounds "$concurrency"
  # The goals of issue 16: one run alone, and 50 at once (the others have none).
  case "$concurrency" in 1) goal="≥ 4000" ;; 50) goal="≥ 10000" ;; *) goal="" ;; esac
  rows+=("$(awk -v c="$concurrency" -v r="$rounds" -v s="$STEPS" -v m="$span_ms" -v k="$(rss_kib "$pid")" -v g="$goal" \
    'BEGIN { n = c * r * s; printf "| steps/s at %d concurrent run(s) (%d steps; %.1f runs/s; RSS after %.1f MiB) | %.0f | %s |", c, n, c * r * 1000 / m, k / 1024, n * 1000 / m, g }')")
done

# Queued runs: one run holds the key `hold`, then QUEUED more wait behind it.
start_run hold >/dev/null
before_kib=$(rss_kib "$pid")
seq 1 "$QUEUED" | xargs -P 8 -I{} curl -sS --max-time 60 -o /dev/null -X POST \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"workflow":"hold"}' "$url/api/v1/runs"
queued=$(curl -sS --max-time 10 "$url/metrics" | awk '/^shiphat_queue_depth/ { print $2 + 0 }')
sleep 1
after_kib=$(rss_kib "$pid")

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
fsync=$(python3 - "$work/data0/fsync-probe" <<'EOF'
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
