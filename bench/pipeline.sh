#!/usr/bin/env bash
# Pipeline throughput: 400 tickets / 800 files of 1–40 KB imported against a separate sandbox
# process (no rate limit, no faults) by the importer on each store (BENCH_STORES: SQLite and
# Postgres), next to the straightforward baseline (benches/baseline.rs: the vendor's recipe
# per ticket on 8 tasks, no queue) against the same sandbox, in the same run. Goal: the
# importer at least half as fast as the baseline (ratio baseline wall ÷ importer wall ≥ 0.5).
# Knobs: PIPELINE_TICKETS (400), PIPELINE_FILES (800), BASELINE_CONCURRENCY (8),
# PIPELINE_PERF=1 records a perf profile of the importer's last run into $WORK/perf.data.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TICKETS=${PIPELINE_TICKETS:-400}
FILES=${PIPELINE_FILES:-800}
CONCURRENCY=${BASELINE_CONCURRENCY:-8}
build
BASELINE=$(bench_exe baseline)
DIR="$WORK/pipeline"
python3 "$ROOT/bench/gen_manifest.py" "$DIR" --tickets "$TICKETS" --files "$FILES" --min-kb 1 --max-kb 40
log "pipeline: $TICKETS tickets, $FILES files ($(du -sh "$DIR/files" | cut -f1)), $RUNS runs, stores: ${STORES[*]}"

declare -A walls cpus rsss pools
bwalls=() bcpus=() brsss=()
for run in $(seq "$RUNS"); do
    start_sandbox
    expected=0
    for store in "${STORES[@]}"; do
        db=$(fresh_db "$store")
        importer=("$BIN" import "$DIR/manifest.csv" --api-url "$SANDBOX_URL"
            --api-rate 100000/s --upload-rate 100000/s --quiet)
        if [[ "${PIPELINE_PERF:-0}" == 1 && $run == "$RUNS" ]]; then
            importer=(perf record -F 2000 -g -o "$WORK/perf-$store.data" -- "${importer[@]}")
        fi
        DATABASE_URL=$db timed importer "${importer[@]}"
        expected=$((expected + TICKETS))
        created=$(sandbox_ticket_count)
        [[ $created == "$expected" ]] || { echo "importer ($store): sandbox holds $created tickets, expected $expected" >&2; exit 1; }
        walls[$store]+="$WALL " cpus[$store]+="$CPU " rsss[$store]+="$RSS_KB "
        # The importer's own clock for the worker-pool phase ("this run: … in 1.2s").
        pools[$store]+="$(sed -n 's/^this run: .* in \([0-9.]*\)s$/\1/p' "$WORK/importer.out") "
        log "run $run, $store: importer ${WALL}s (cpu ${CPU}s, rss $(mib "$RSS_KB") MiB)"
        drop_db "$db"
    done
    BASELINE_CONCURRENCY=$CONCURRENCY timed baseline "$BASELINE" --bench "$DIR/manifest.csv" "$SANDBOX_URL"
    created=$(sandbox_ticket_count)
    [[ $created == $((expected + TICKETS)) ]] || { echo "baseline: sandbox holds $created tickets, expected $((expected + TICKETS))" >&2; exit 1; }
    bwalls+=("$WALL") bcpus+=("$CPU") brsss+=("$RSS_KB")
    log "run $run: baseline ${bwalls[-1]}s (cpu ${bcpus[-1]}s, rss $(mib "${brsss[-1]}") MiB)"
    stop_sandbox
done

bwall=$(median "${bwalls[@]}") bcpu=$(median "${bcpus[@]}") brss=$(median "${brsss[@]}")
echo "pipeline baseline ($CONCURRENCY tasks): ${bwall}s wall, cpu ${bcpu}s, peak RSS $(mib "$brss") MiB"
row "pipeline: baseline (vendor recipe on $CONCURRENCY tasks, no queue), $TICKETS tickets / $FILES files of 1–40 KB" \
    "${bwall} s wall ($(calc "$TICKETS / $bwall" 1) tickets/s); CPU ${bcpu} s; peak RSS $(mib "$brss") MiB" "—" "—"
for store in "${STORES[@]}"; do
    read -r -a w <<<"${walls[$store]}"; read -r -a c <<<"${cpus[$store]}"
    read -r -a r <<<"${rsss[$store]}"; read -r -a p <<<"${pools[$store]}"
    wall=$(median "${w[@]}") cpu=$(median "${c[@]}") rss=$(median "${r[@]}") pool=$(median "${p[@]}")
    ratio=$(calc "$bwall / $wall")
    echo "pipeline importer on $store: ${wall}s wall, pool phase ${pool}s, cpu ${cpu}s, peak RSS $(mib "$rss") MiB; ratio ${ratio}×"
    row "pipeline: importer on $store" \
        "${wall} s wall ($(calc "$TICKETS / $wall" 1) tickets/s, $(calc "$FILES / $wall" 1) files/s); worker-pool phase ${pool} s; CPU ${cpu} s; peak RSS $(mib "$rss") MiB" "—" "—"
    row "pipeline: baseline wall ÷ importer wall, $store" "${ratio}×" "≥ 0.5×" "$(verdict "$ratio" '>=' 0.5)"
done
