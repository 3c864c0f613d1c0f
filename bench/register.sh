#!/usr/bin/env bash
# Registers: `check --map` of
#   - a 100,000-row .xlsx (read whole; goals ≤ 10 s and ≤ 256 MiB peak RSS),
#   - a 1,000,000-row ;-separated CSV (streamed; goal ≤ 64 MiB peak RSS),
# both in a site team's columns (title row, project names, severities, a template title,
# photos over two columns with multi-line cells), made by examples/gen_bench_register.rs.
# Knobs: XLSX_ROWS (100000), CSV_ROWS (1000000), BENCH_RUNS (3).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

XLSX_ROWS=${XLSX_ROWS:-100000}
CSV_ROWS=${CSV_ROWS:-1000000}
build
# The generator runs in the debug profile: it is not what is measured.
(cd "$ROOT" && cargo build --locked --quiet --example gen_bench_register)
GEN="$ROOT/target/debug/examples/gen_bench_register"
"$GEN" "$WORK/xlsx" "$XLSX_ROWS" xlsx
"$GEN" "$WORK/csv" "$CSV_ROWS" csv
log "register: $XLSX_ROWS-row xlsx ($(du -h "$WORK/xlsx/register.xlsx" | cut -f1)), $CSV_ROWS-row csv ($(du -h "$WORK/csv/register.csv" | cut -f1)), $RUNS runs"

declare -A walls rsss
for run in $(seq "$RUNS"); do
    for case in xlsx csv; do
        dir="$WORK/$case"
        timed "check-$case" "$BIN" check "$dir/register.$case" --map "$dir/register.map.toml"
        grep -q "^ok: " "$WORK/check-$case.out" ||
            { echo "unexpected: $(tail -3 "$WORK/check-$case.out")" >&2; exit 1; }
        walls[$case]+="$WALL " rsss[$case]+="$RSS_KB "
        log "run $run, $case: ${WALL}s, peak RSS $(mib "$RSS_KB") MiB ($(tail -1 "$WORK/check-$case.out"))"
    done
done
read -r -a w <<<"${walls[xlsx]}"
read -r -a r <<<"${rsss[xlsx]}"
wall=$(median "${w[@]}") rss=$(mib "$(median "${r[@]}")")
met=yes
[[ $(verdict "$wall" "<=" 10) == yes && $(verdict "$rss" "<=" 256) == yes ]] || met="**no**"
row "\`check --map\`, $XLSX_ROWS-row .xlsx" "$wall s; peak RSS $rss MiB" "≤ 10 s, ≤ 256 MiB" "$met"
read -r -a w <<<"${walls[csv]}"
read -r -a r <<<"${rsss[csv]}"
wall=$(median "${w[@]}") rss=$(mib "$(median "${r[@]}")")
row "\`check --map\`, $CSV_ROWS-row ; CSV" "$wall s; peak RSS $rss MiB" "≤ 64 MiB" "$(verdict "$rss" "<=" 64)"
