#!/usr/bin/env bash
# Rate efficiency: the importer's `run` with --api-rate 50/s against a sandbox limited to 50/s.
# Efficiency = (API calls ÷ 50) ÷ wall time of the `run` process (goal ≥ 0.97); 429s served
# (goal 0), both read from the sandbox's GET /sandbox/stats. The manifest is enqueued first,
# untimed. Knobs: RATE_TICKETS (150, with 2 files each: 450 API calls ≈ 9 s), RATE (50).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TICKETS=${RATE_TICKETS:-150}
RATE=${RATE:-50}
build
DIR="$WORK/rate"
python3 "$ROOT/bench/gen_manifest.py" "$DIR" --tickets "$TICKETS" --files $((2 * TICKETS)) --min-kb 1 --max-kb 8
log "rate: $TICKETS tickets, $((2 * TICKETS)) files at ${RATE}/s, $RUNS runs"

effs=() walls=() limited=() calls=()
for run in $(seq "$RUNS"); do
    start_sandbox --rate "${RATE}/s"
    db=$(fresh_db)
    DATABASE_URL=$db "$BIN" enqueue "$DIR/manifest.csv" --quiet >/dev/null
    DATABASE_URL=$db timed rate "$BIN" run --api-url "$SANDBOX_URL" \
        --api-rate "${RATE}/s" --upload-rate 100000/s --quiet
    stats=$(sandbox_stats)
    n=$(jq '[.requests | to_entries[] | select(.key | startswith("POST /api/")) | .value[]] | add' <<<"$stats")
    r=$(jq '.rateLimited' <<<"$stats")
    created=$(sandbox_ticket_count)
    [[ $created == "$TICKETS" ]] || { echo "sandbox holds $created tickets, expected $TICKETS" >&2; exit 1; }
    eff=$(calc "($n / $RATE) / $WALL" 3)
    effs+=("$eff") walls+=("$WALL") limited+=("$r") calls+=("$n")
    log "run $run: $n API calls in ${WALL}s → efficiency $eff; $r × 429"
    stop_sandbox
    drop_db "$db"
done

eff=$(median "${effs[@]}") wall=$(median "${walls[@]}") r=$(median "${limited[@]}") n=$(median "${calls[@]}")
max429=$(printf '%s\n' "${limited[@]}" | sort -g | tail -1)
echo "rate: $n API calls at ${RATE}/s in ${wall}s: efficiency $eff (ideal $(calc "$n / $RATE" 1)s); 429s served: $r (max of runs $max429)"
row "rate efficiency: \`run --api-rate ${RATE}/s\` vs sandbox \`--rate ${RATE}/s\`, $n API calls" \
    "$eff ((calls ÷ ${RATE}) ÷ ${wall} s wall of \`run\`)" "≥ 0.97" "$(verdict "$eff" '>=' 0.97)"
row "rate: 429s served by the sandbox" "$r (worst run: $max429)" "0" "$(verdict "$max429" '<=' 0)"
