#!/usr/bin/env bash
# Ingest: a 100,000-row manifest through `enqueue` (100 shared 1 KB files named round-robin,
# one per row): seconds and peak RSS of the `enqueue` process (goals ≤ 5 s, ≤ 64 MiB). The
# database is created and migrated first (`migrate`, untimed). Knob: INGEST_ROWS (100000).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROWS=${INGEST_ROWS:-100000}
build
DIR="$WORK/ingest"
python3 "$ROOT/bench/gen_manifest.py" "$DIR" --tickets "$ROWS" --shared-files 100
log "ingest: $ROWS rows ($(du -h "$DIR/manifest.csv" | cut -f1)), $RUNS runs"

walls=() rsss=() cpus=()
for run in $(seq "$RUNS"); do
    db=$(fresh_db)
    DATABASE_URL=$db "$BIN" migrate >/dev/null
    DATABASE_URL=$db timed ingest "$BIN" enqueue "$DIR/manifest.csv" --quiet
    grep -q "$ROWS tickets and $ROWS files added" "$WORK/ingest.out" ||
        { echo "unexpected: $(cat "$WORK/ingest.out")" >&2; exit 1; }
    walls+=("$WALL") rsss+=("$RSS_KB") cpus+=("$CPU")
    log "run $run: ${WALL}s, cpu ${CPU}s, peak RSS $(mib "$RSS_KB") MiB"
    drop_db "${db##*/}"
done

wall=$(median "${walls[@]}") rss=$(median "${rsss[@]}") cpu=$(median "${cpus[@]}")
echo "ingest: $ROWS rows enqueued in ${wall}s ($(calc "$ROWS / $wall" 0) rows/s), cpu ${cpu}s, peak RSS $(mib "$rss") MiB"
row "ingest: \`enqueue\` of a $ROWS-row manifest" "${wall} s ($(calc "$ROWS / $wall" 0) rows/s); CPU ${cpu} s" "≤ 5 s" "$(verdict "$wall" '<=' 5)"
row "ingest: peak RSS of \`enqueue\`" "$(mib "$rss") MiB" "≤ 64 MiB" "$(verdict "$(mib "$rss")" '<=' 64)"
