#!/usr/bin/env bash
# Queue: the foundation's no-op job benchmark (benches/queue.rs: 20,000 jobs, 10 workers,
# batched claim and completion, fencing intact), run RUNS times; medians of its figures.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QUEUE=$(bench_exe queue)
export DATABASE_URL="$PG/postgres"
log "queue: $RUNS runs"
enq=() proc=()
for run in $(seq "$RUNS"); do
    timed queue "$QUEUE" --bench
    enq+=("$(sed -n 's/^enqueue: \([0-9]*\) jobs\/s.*/\1/p' "$WORK/queue.out")")
    proc+=("$(sed -n 's/^processed: \([0-9]*\) jobs\/s.*/\1/p' "$WORK/queue.out")")
    log "run $run: enqueue ${enq[-1]} jobs/s, processed ${proc[-1]} jobs/s"
done
e=$(median "${enq[@]}") p=$(median "${proc[@]}")
echo "queue: enqueue $e jobs/s, processed $p jobs/s (no-op jobs, 10 workers)"
row "queue: no-op jobs, 20,000, 10 workers, claim/complete batches of 200" "enqueue $e jobs/s; processed $p jobs/s" "beat 34k/s processed (graphile-worker batched)" "$(verdict "$p" '>=' 34000)"
