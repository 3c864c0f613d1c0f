#!/usr/bin/env bash
# Rate efficiency against the strictest server: the sandbox limited to LIMIT calls/s with a
# token bucket of burst 1 (`--rate 20/s --rate-burst 1`, whole-second Retry-After), on each
# store (BENCH_STORES), for each limit (LIMITS: 20 and 37). Per limit, four setups:
#   1 process, `import` (enqueue and run in one process) at `--api-rate` = the true limit;
#   1 process, `import --api-rate auto` (the limit nobody gave it);
#   3 `run` processes on one store (enqueued before) each given the true limit;
#   3 `run` processes on one store each given `auto`.
# Efficiency = (API calls answered other than 429 ÷ LIMIT) ÷ wall time as a user sees it:
# from the process start to its exit (`import`: enqueue, start-up and tail included; three
# `run`s: the first starting to the last ending). 429s as a share of all API calls; the
# busiest second as the sandbox counted every arrival. Each setup starts from a fresh store
# (`auto` learns from nothing: the worst case). Goals: fixed 1 process ≥ 0.93, ≤ 1% 429s;
# fixed 3 processes ≥ 0.90, ≤ 2% 429s, ≤ LIMIT + 1 in any second; auto 1 process at 37/s
# ≥ 0.85, ≤ 3% 429s.
# Knobs: RATE_TICKETS_20 (130), RATE_TICKETS_37 (700) tickets with one file each (two API
# calls a ticket); LIMITS ("20 37"); BEFORE_BIN=path of an older build to measure its fixed
# rows side by side ("before" rows).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -r -a LIMITS <<<"${LIMITS:-20 37}"
build

tickets_for() {
    local var="RATE_TICKETS_$1"
    echo "${!var:-$(( $1 >= 30 ? 700 : 130 ))}"
}

# scenario BIN STORE PROCS RATE LIMIT DIR: sets EFF, SHARE429, PEAK, CALLS, WALL.
scenario() {
    local bin=$1 store=$2 procs=$3 rate=$4 limit=$5 dir=$6
    local tickets
    tickets=$(tickets_for "$limit")
    start_sandbox --rate "${limit}/s" --rate-burst 1
    local db
    db=$(fresh_db "$store")
    local start end pids=() i
    if ((procs == 1)); then
        start=$(date +%s.%N)
        DATABASE_URL=$db "$bin" import "$dir/manifest.csv" --api-url "$SANDBOX_URL" \
            --api-rate "$rate" --upload-rate 100000/s --quiet >"$WORK/rate-run-1.out" 2>"$WORK/rate-run-1.err" &
        pids+=($!)
    else
        DATABASE_URL=$db "$bin" enqueue "$dir/manifest.csv" --quiet >/dev/null
        start=$(date +%s.%N)
        for i in $(seq "$procs"); do
            DATABASE_URL=$db "$bin" run --api-url "$SANDBOX_URL" --api-rate "$rate" \
                --upload-rate 100000/s --quiet >"$WORK/rate-run-$i.out" 2>"$WORK/rate-run-$i.err" &
            pids+=($!)
        done
    fi
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { echo "run $((i + 1)) failed:" >&2; tail -5 "$WORK/rate-run-$((i + 1)).err" >&2; exit 1; }
    done
    end=$(date +%s.%N)
    local stats all refused created
    stats=$(sandbox_stats)
    all=$(jq '[.requests | to_entries[] | select(.key | startswith("POST /api/")) | .value[]] | add' <<<"$stats")
    refused=$(jq '.rateLimited' <<<"$stats")
    PEAK=$(jq '.apiPeakPerSecond' <<<"$stats")
    created=$(sandbox_ticket_count)
    [[ $created == "$tickets" ]] || { echo "sandbox holds $created tickets, expected $tickets" >&2; exit 1; }
    WALL=$(calc "$end - $start" 2)
    CALLS=$((all - refused))
    EFF=$(calc "($CALLS / $limit) / $WALL" 3)
    SHARE429=$(calc "100 * $refused / $all" 1)
    stop_sandbox
    drop_db "$db"
}

bins=(after)
[[ -n "${BEFORE_BIN:-}" ]] && bins=(before after)
log "rate: limits ${LIMITS[*]} (strict, burst 1), $RUNS runs, stores: ${STORES[*]}, builds: ${bins[*]}"

declare -A effs shares peaks
for limit in "${LIMITS[@]}"; do
    dir="$WORK/rate-$limit"
    tickets=$(tickets_for "$limit")
    python3 "$ROOT/bench/gen_manifest.py" "$dir" --tickets "$tickets" --files "$tickets" --min-kb 1 --max-kb 8
    for run in $(seq "$RUNS"); do
        for store in "${STORES[@]}"; do
            for setup in "1 ${limit}/s" "1 auto" "3 ${limit}/s" "3 auto"; do
                read -r procs rate <<<"$setup"
                for which in "${bins[@]}"; do
                    # An older build knows no `auto`.
                    [[ $which == before && $rate == auto ]] && continue
                    bin=$BIN
                    [[ $which == before ]] && bin=$BEFORE_BIN
                    scenario "$bin" "$store" "$procs" "$rate" "$limit" "$dir"
                    key="$limit|$store|$procs|$rate|$which"
                    effs[$key]+="$EFF " shares[$key]+="$SHARE429 " peaks[$key]+="$PEAK "
                    log "run $run, ${limit}/s, $store, $procs × $rate, $which: $CALLS calls in ${WALL}s → efficiency $EFF; ${SHARE429}% 429s; busiest second $PEAK"
                done
            done
        done
    done
done

for limit in "${LIMITS[@]}"; do
    for store in "${STORES[@]}"; do
        for setup in "1 ${limit}/s" "1 auto" "3 ${limit}/s" "3 auto"; do
            read -r procs rate <<<"$setup"
            for which in "${bins[@]}"; do
                [[ $which == before && $rate == auto ]] && continue
                key="$limit|$store|$procs|$rate|$which"
                read -r -a e <<<"${effs[$key]}"; read -r -a s <<<"${shares[$key]}"; read -r -a p <<<"${peaks[$key]}"
                eff=$(median "${e[@]}") share=$(median "${s[@]}") peak=$(printf '%s\n' "${p[@]}" | sort -g | tail -1)
                goal="—" met="—"
                if [[ $which == after && $procs == 1 && $rate != auto ]]; then
                    goal="≥ 0.93, ≤ 1% 429s"
                    met=$(verdict "$eff >= 0.93 && $share" '<=' 1)
                elif [[ $which == after && $procs == 3 && $rate != auto ]]; then
                    goal="≥ 0.90, ≤ 2% 429s, ≤ $((limit + 1)) in any second"
                    met=$(verdict "$eff >= 0.90 && $share <= 2 && $peak" '<=' $((limit + 1)))
                elif [[ $procs == 1 && $rate == auto && $limit == 37 ]]; then
                    goal="≥ 0.85, ≤ 3% 429s"
                    met=$(verdict "$eff >= 0.85 && $share" '<=' 3)
                fi
                if ((procs == 1)); then what="1 \`import\`"; else what="3 \`run\`s"; fi
                row "rate ($which), $store, $(tickets_for "$limit") tickets: $what × \`--api-rate $rate\` vs strict ${limit}/s" \
                    "efficiency $eff; ${share}% 429s; busiest second $peak calls" "$goal" "$met"
            done
        done
    done
done
