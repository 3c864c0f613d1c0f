#!/usr/bin/env bash
# Pipeline throughput: 400 tickets / 800 files of 1–40 KB imported against a separate sandbox
# process (no rate limit, no faults), next to the straightforward baseline
# (benches/baseline.rs) against the same sandbox in the same run. Goal: importer ≥ 3× faster.
# Knobs: PIPELINE_TICKETS (400), PIPELINE_FILES (800), BASELINE_CONCURRENCY (16),
# PIPELINE_PERF=1 records a perf profile of the importer's last run into $WORK/perf.data.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TICKETS=${PIPELINE_TICKETS:-400}
FILES=${PIPELINE_FILES:-800}
build
BASELINE=$(bench_exe baseline)
DIR="$WORK/pipeline"
python3 "$ROOT/bench/gen_manifest.py" "$DIR" --tickets "$TICKETS" --files "$FILES" --min-kb 1 --max-kb 40
log "pipeline: $TICKETS tickets, $FILES files ($(du -sh "$DIR/files" | cut -f1)), $RUNS runs"

walls=() cpus=() rsss=() runs=() bwalls=() bcpus=() brsss=()
for run in $(seq "$RUNS"); do
    start_sandbox
    db=$(fresh_db)
    importer=("$BIN" import "$DIR/manifest.csv" --api-url "$SANDBOX_URL"
        --api-rate 100000/s --upload-rate 100000/s --quiet)
    if [[ "${PIPELINE_PERF:-0}" == 1 && $run == "$RUNS" ]]; then
        importer=(perf record -F 2000 -g -o "$WORK/perf.data" -- "${importer[@]}")
    fi
    DATABASE_URL=$db timed importer "${importer[@]}"
    created=$(sandbox_ticket_count)
    [[ $created == "$TICKETS" ]] || { echo "importer: sandbox holds $created tickets, expected $TICKETS" >&2; exit 1; }
    walls+=("$WALL") cpus+=("$CPU") rsss+=("$RSS_KB")
    # The importer's own clock for the worker-pool phase ("this run: … in 1.2s").
    runs+=("$(sed -n 's/^this run: .* in \([0-9.]*\)s$/\1/p' "$WORK/importer.out")")
    BASELINE_CONCURRENCY=${BASELINE_CONCURRENCY:-16} timed baseline "$BASELINE" --bench "$DIR/manifest.csv" "$SANDBOX_URL"
    created=$(sandbox_ticket_count)
    [[ $created == $((2 * TICKETS)) ]] || { echo "baseline: sandbox holds $created tickets, expected $((2 * TICKETS))" >&2; exit 1; }
    bwalls+=("$WALL") bcpus+=("$CPU") brsss+=("$RSS_KB")
    log "run $run: importer ${walls[-1]}s (pool phase ${runs[-1]}s, cpu ${cpus[-1]}s, rss $(mib "${rsss[-1]}") MiB); baseline ${bwalls[-1]}s (cpu ${bcpus[-1]}s, rss $(mib "${brsss[-1]}") MiB) — $(sed -n 's/.*(pool \(.*\))/pool \1/p' "$WORK/baseline.out")"
    stop_sandbox
    drop_db "${db##*/}"
done

wall=$(median "${walls[@]}") cpu=$(median "${cpus[@]}") rss=$(median "${rsss[@]}") pool=$(median "${runs[@]}")
bwall=$(median "${bwalls[@]}") bcpu=$(median "${bcpus[@]}") brss=$(median "${brsss[@]}")
ratio=$(calc "$bwall / $wall")
echo "pipeline importer: ${wall}s wall ($(calc "$TICKETS / $wall" 1) tickets/s, $(calc "$FILES / $wall" 1) files/s), pool phase ${pool}s, cpu ${cpu}s, peak RSS $(mib "$rss") MiB"
echo "pipeline baseline: ${bwall}s wall ($(calc "$TICKETS / $bwall" 1) tickets/s, $(calc "$FILES / $bwall" 1) files/s), cpu ${bcpu}s, peak RSS $(mib "$brss") MiB"
echo "pipeline ratio (baseline wall ÷ importer wall): ${ratio}×"
row "pipeline: importer, $TICKETS tickets / $FILES files of 1–40 KB" \
    "${wall} s wall ($(calc "$TICKETS / $wall" 1) tickets/s, $(calc "$FILES / $wall" 1) files/s); worker-pool phase ${pool} s; CPU ${cpu} s; peak RSS $(mib "$rss") MiB" "—" "—"
row "pipeline: baseline (pool of ${BASELINE_CONCURRENCY:-16} tasks, vendor recipe, no queue)" \
    "${bwall} s wall ($(calc "$TICKETS / $bwall" 1) tickets/s, $(calc "$FILES / $bwall" 1) files/s); CPU ${bcpu} s; peak RSS $(mib "$brss") MiB" "—" "—"
row "pipeline: speed-up over the baseline" "${ratio}×" "≥ 3×" "$(verdict "$ratio" '>=' 3)"
