#!/usr/bin/env bash
# Ingest: a 100,000-row manifest through `enqueue` (100 shared 1 KB files named round-robin,
# one per row), on each store (BENCH_STORES): seconds and peak RSS of the `enqueue` process
# (goals ≤ 5 s, ≤ 64 MiB). The store is created and migrated first (`migrate`, untimed).
# Knob: INGEST_ROWS (100000).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROWS=${INGEST_ROWS:-100000}
build
DIR="$WORK/ingest"
python3 "$ROOT/bench/gen_manifest.py" "$DIR" --tickets "$ROWS" --shared-files 100
log "ingest: $ROWS rows ($(du -h "$DIR/manifest.csv" | cut -f1)), $RUNS runs, stores: ${STORES[*]}"

declare -A walls rsss cpus
for run in $(seq "$RUNS"); do
    for store in "${STORES[@]}"; do
        db=$(fresh_db "$store")
        DATABASE_URL=$db "$BIN" migrate >/dev/null 2>&1
        DATABASE_URL=$db timed ingest "$BIN" enqueue "$DIR/manifest.csv" --quiet
        grep -q "$ROWS tickets and $ROWS files added" "$WORK/ingest.out" ||
            { echo "unexpected: $(cat "$WORK/ingest.out")" >&2; exit 1; }
        walls[$store]+="$WALL " rsss[$store]+="$RSS_KB " cpus[$store]+="$CPU "
        log "run $run, $store: ${WALL}s, cpu ${CPU}s, peak RSS $(mib "$RSS_KB") MiB"
        drop_db "$db"
    done
done

for store in "${STORES[@]}"; do
    read -r -a w <<<"${walls[$store]}"; read -r -a r <<<"${rsss[$store]}"; read -r -a c <<<"${cpus[$store]}"
    wall=$(median "${w[@]}") rss=$(median "${r[@]}") cpu=$(median "${c[@]}")
    echo "ingest on $store: $ROWS rows enqueued in ${wall}s ($(calc "$ROWS / $wall" 0) rows/s), cpu ${cpu}s, peak RSS $(mib "$rss") MiB"
    row "ingest: \`enqueue\` of a $ROWS-row manifest, $store" "${wall} s ($(calc "$ROWS / $wall" 0) rows/s); CPU ${cpu} s" "≤ 5 s" "$(verdict "$wall" '<=' 5)"
    row "ingest: peak RSS of \`enqueue\`, $store" "$(mib "$rss") MiB" "≤ 64 MiB" "$(verdict "$(mib "$rss")" '<=' 64)"
done
