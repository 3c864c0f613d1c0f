#!/usr/bin/env bash
# Queue: the no-op job benchmark (benches/queue.rs: 20,000 jobs, 10 workers, batched claim
# and completion — one `apply` of 200 transitions —, fencing intact) on each store
# (BENCH_STORES), run RUNS times; medians of its figures. Goal: ≥ 40,000 jobs/s on Postgres.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QUEUE=$(bench_exe queue)
export DATABASE_URL="$PG/postgres"
log "queue: $RUNS runs, stores: ${STORES[*]}"
declare -A enq proc
for run in $(seq "$RUNS"); do
    for store in "${STORES[@]}"; do
        QUEUE_BENCH_STORE=$store timed queue "$QUEUE" --bench
        e=$(sed -n 's/^enqueue: \([0-9]*\) jobs\/s.*/\1/p' "$WORK/queue.out")
        p=$(sed -n 's/^processed: \([0-9]*\) jobs\/s.*/\1/p' "$WORK/queue.out")
        enq[$store]+="$e " proc[$store]+="$p "
        log "run $run, $store: enqueue $e jobs/s, processed $p jobs/s"
    done
done
for store in "${STORES[@]}"; do
    read -r -a es <<<"${enq[$store]}"; read -r -a ps <<<"${proc[$store]}"
    e=$(median "${es[@]}") p=$(median "${ps[@]}")
    echo "queue on $store: enqueue $e jobs/s, processed $p jobs/s (no-op jobs, 10 workers)"
    if [[ $store == postgres ]]; then
        row "queue: no-op jobs on postgres, 20,000, 10 workers, claim/complete batches of 200" "enqueue $e jobs/s; processed $p jobs/s" "≥ 40,000 jobs/s processed" "$(verdict "$p" '>=' 40000)"
    else
        row "queue: no-op jobs on $store, 20,000, 10 workers, claim/complete batches of 200" "enqueue $e jobs/s; processed $p jobs/s" "—" "—"
    fi
done
