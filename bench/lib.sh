# Shared helpers for the bench/*.sh scripts (sourced, not run).
# Knobs: BENCH_RUNS (3), BENCH_WORK (a fresh /tmp dir), BENCH_PG (the Postgres server, no
# database: postgres://postgres@127.0.0.1:5432), BENCH_RESULTS (a file collecting table rows).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release/visibuild-import"
RUNS=${BENCH_RUNS:-3}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
export VISIBUILD_TOKEN=sandbox-token
unset VISIBUILD_CLIENT_ID VISIBUILD_CLIENT_SECRET VISIBUILD_API_URL VISIBUILD_REGION
WORK=${BENCH_WORK:-$(mktemp -d /tmp/vi-bench.XXXXXX)}
mkdir -p "$WORK"
SANDBOX_PID=""
DATABASES=()

cleanup() {
    stop_sandbox || true
    for db in "${DATABASES[@]}"; do drop_db "$db" || true; done
    if [[ -z "${BENCH_WORK:-}" ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

log() { echo "[$(date +%T)] $*" >&2; }

# Build the importer (release) once per script.
build() {
    (cd "$ROOT" && cargo build --release --locked --quiet --bin visibuild-import)
}

# Path of a harness-less bench binary, built with the bench profile.
bench_exe() {
    (cd "$ROOT" && cargo bench --locked --quiet --no-run --bench "$1" --message-format=json) |
        jq -r --arg n "$1" 'select(.reason == "compiler-artifact" and .target.name == $n and .executable != null) | .executable' |
        tail -1
}

# fresh_db [postgres|sqlite]: a fresh store URL (the binary creates and migrates it on first
# use): a Postgres database, dropped on exit, or an SQLite file in the work dir.
fresh_db() {
    local name="vi_bench_$$_${RANDOM}${RANDOM}"
    if [[ "${1:-postgres}" == sqlite ]]; then
        echo "sqlite:$WORK/$name.db"
        return
    fi
    DATABASES+=("$name")
    echo "$PG/$name"
}

# The stores a benchmark runs on, one after the other: BENCH_STORES (default both).
read -r -a STORES <<<"${BENCH_STORES:-sqlite postgres}"

# drop_db URL-or-name: drops a Postgres database, or removes an SQLite file.
drop_db() {
    if [[ "$1" == sqlite:* ]]; then
        local file=${1#sqlite:}
        rm -f "$file" "$file-wal" "$file-shm"
        return
    fi
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS \"${1##*/}\" WITH (FORCE)" >/dev/null 2>&1
}

# start_sandbox [sandbox flags…]: a separate sandbox process on a free port; sets SANDBOX_URL.
start_sandbox() {
    local out="$WORK/sandbox.out"
    : >"$out"
    "$BIN" sandbox --listen 127.0.0.1:0 "$@" >"$out" 2>"$WORK/sandbox.err" &
    SANDBOX_PID=$!
    local deadline=$((SECONDS + 20))
    until grep -q "listening on" "$out"; do
        if ((SECONDS > deadline)) || ! kill -0 "$SANDBOX_PID" 2>/dev/null; then
            echo "sandbox did not start:" >&2
            cat "$WORK/sandbox.err" >&2
            return 1
        fi
        sleep 0.05
    done
    SANDBOX_URL=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$out" | head -1)
}

# Peak RSS of the running sandbox, in KiB.
sandbox_rss_kb() {
    awk '/^VmHWM:/ {print $2}' "/proc/$SANDBOX_PID/status"
}

stop_sandbox() {
    if [[ -n "$SANDBOX_PID" ]]; then
        kill -INT "$SANDBOX_PID" 2>/dev/null || true
        wait "$SANDBOX_PID" 2>/dev/null || true
        SANDBOX_PID=""
    fi
}

sandbox_stats() { curl -fsS "$SANDBOX_URL/sandbox/stats"; }
sandbox_ticket_count() { curl -fsS "$SANDBOX_URL/sandbox/tickets" | jq ".tickets | length"; }

# timed NAME CMD…: run CMD under /usr/bin/time -v; its stdout goes to $WORK/NAME.out, and
# WALL (s), CPU (user+sys s) and RSS_KB (peak) are set. Fails if CMD fails.
timed() {
    local name=$1
    shift
    local status attempt
    for attempt in 1 2 3; do
        wait_for_pg
        status=0
        /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || status=$?
        # Another suite may restart the shared Postgres: a run that could not even connect
        # did nothing yet, so it is run again rather than reported.
        if ((status == 0)) || ! grep -qE "cannot connect|the database system is" "$WORK/$name.err"; then
            break
        fi
        log "$name: Postgres was restarting; running it again"
    done
    if ((status != 0)); then
        echo "$name failed (exit $status):" >&2
        tail -20 "$WORK/$name.err" >&2
        tail -20 "$WORK/$name.out" >&2
        return "$status"
    fi
    WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$WORK/$name.time")
    CPU=$(awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {printf "%.2f", u + s}' "$WORK/$name.time")
    RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")
}

# Wait (up to 60 s) until Postgres accepts connections.
wait_for_pg() {
    local deadline=$((SECONDS + 60))
    until psql -qtA "$PG/postgres" -c "SELECT 1" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "Postgres at $PG is not answering" >&2; return 1; }
        sleep 0.5
    done
}

# median X Y Z…
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN {printf \"%.${2:-2}f\", $1}"; }

mib() { calc "$1 / 1024" 1; }

# row BENCHMARK FIGURE GOAL MET: one line of the results table (printed, and collected).
row() {
    local line="| $1 | $2 | $3 | $4 |"
    echo "$line"
    if [[ -n "${BENCH_RESULTS:-}" ]]; then echo "$line" >>"$BENCH_RESULTS"; fi
}

# verdict ACTUAL OP GOAL → yes/no (OP is >= or <=).
verdict() {
    if awk "BEGIN {exit !($1 $2 $3)}"; then echo yes; else echo "**no**"; fi
}
