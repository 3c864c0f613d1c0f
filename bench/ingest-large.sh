#!/usr/bin/env bash
# Ingest at scale, in flat memory: `enqueue` on each store (BENCH_STORES) and `check` of
#   - 1,000,000 rows without files (goals: ≤ 20 s and ≤ 64 MiB peak RSS, enqueue and check),
#   - 100,000 rows with a file each, 100,000 files of 1 KB (goal: ≤ 64 MiB),
#   - 100,000 rows without files (goal: no slower than the previous build),
# side by side with a previous build when BENCH_BASE_BIN names its binary (the two alternate,
# run after run, on fresh stores; e.g. main's HEAD built into another target dir:
#   git worktree add --detach /tmp/base main && (cd /tmp/base &&
#   CARGO_TARGET_DIR=/tmp/base-target cargo build --release --locked --bin visibuild-import)
#   BENCH_BASE_BIN=/tmp/base-target/release/visibuild-import bash bench/ingest-large.sh).
# Each store is created and migrated first (`migrate`, untimed). Knobs: LARGE_ROWS (1000000),
# ROWS (100000). The 100,000 files take about 400 MB of disk in the work dir.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LARGE_ROWS=${LARGE_ROWS:-1000000}
ROWS=${ROWS:-100000}
BASE=${BENCH_BASE_BIN:-}
build
python3 "$ROOT/bench/gen_manifest.py" "$WORK/large" --tickets "$LARGE_ROWS" --no-files
python3 "$ROOT/bench/gen_manifest.py" "$WORK/small" --tickets "$ROWS" --no-files
python3 "$ROOT/bench/gen_manifest.py" "$WORK/files" --tickets "$ROWS" --files "$ROWS" --min-kb 1 --max-kb 1
declare -A describe=(
    [large]="$LARGE_ROWS rows without files"
    [files]="$ROWS rows with a file each"
    [small]="$ROWS rows without files"
)
declare -A expect=([large]="$LARGE_ROWS tickets and 0 files" [files]="$ROWS tickets and $ROWS files"
    [small]="$ROWS tickets and 0 files")
builds=(new)
[[ -n "$BASE" ]] && builds+=(base)
bin_of() { if [[ $1 == base ]]; then echo "$BASE"; else echo "$BIN"; fi; }
log "ingest-large: builds ${builds[*]}, stores ${STORES[*]}, $RUNS runs"

declare -A walls rsss
for run in $(seq "$RUNS"); do
    for case in small files large; do
        manifest="$WORK/$case/manifest.csv"
        for build in "${builds[@]}"; do
            timed check "$(bin_of "$build")" check "$manifest"
            walls[$case,check,$build]+="$WALL " rsss[$case,check,$build]+="$RSS_KB "
            log "run $run, $case, check, $build: ${WALL}s, peak RSS $(mib "$RSS_KB") MiB"
        done
        for store in "${STORES[@]}"; do
            for build in "${builds[@]}"; do
                db=$(fresh_db "$store")
                DATABASE_URL=$db "$(bin_of "$build")" migrate >/dev/null 2>&1
                DATABASE_URL=$db timed enqueue "$(bin_of "$build")" enqueue "$manifest" --quiet
                grep -q "${expect[$case]} added" "$WORK/enqueue.out" ||
                    { echo "unexpected: $(cat "$WORK/enqueue.out")" >&2; exit 1; }
                walls[$case,$store,$build]+="$WALL " rsss[$case,$store,$build]+="$RSS_KB "
                log "run $run, $case, enqueue on $store, $build: ${WALL}s, peak RSS $(mib "$RSS_KB") MiB"
                drop_db "$db"
            done
        done
    done
done

# figure CASE WHERE BUILD → "WALL RSS_MIB" (medians)
figure() {
    read -r -a w <<<"${walls[$1,$2,$3]}"
    read -r -a r <<<"${rsss[$1,$2,$3]}"
    echo "$(median "${w[@]}") $(mib "$(median "${r[@]}")")"
}
for case in large files small; do
    for where in check "${STORES[@]}"; do
        read -r wall rss <<<"$(figure "$case" "$where" new)"
        what="\`check\`"
        [[ $where != check ]] && what="\`enqueue\` on $where"
        result="$wall s; peak RSS $rss MiB"
        if [[ -n "$BASE" ]]; then
            read -r base_wall base_rss <<<"$(figure "$case" "$where" base)"
            result+=" (previous build: $base_wall s, $base_rss MiB)"
        fi
        case $case in
        large)
            goal="≤ 20 s, ≤ 64 MiB"
            met=$([[ $(verdict "$wall" '<=' 20) == yes && $(verdict "$rss" '<=' 64) == yes ]] && echo yes || echo "**no**")
            ;;
        files)
            goal="≤ 64 MiB"
            met=$(verdict "$rss" '<=' 64)
            ;;
        small)
            goal="time ≤ the previous build's"
            met="—"
            [[ -n "$BASE" ]] && met=$(verdict "$wall" '<=' "$base_wall")
            ;;
        esac
        echo "ingest-large: $what, ${describe[$case]}: $result"
        row "ingest at scale: $what, ${describe[$case]}" "$result" "$goal" "$met"
    done
done
