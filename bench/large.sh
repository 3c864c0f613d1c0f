#!/usr/bin/env bash
# Large file: one ticket with a 2 GiB attachment (a sparse file made in the work dir, deleted
# after) imported against a separate sandbox: peak RSS of the importer (goal ≤ 32 MiB), MB/s
# over the whole process (hash + upload; MB = 10^6 bytes), and the sandbox's peak RSS.
# Knob: LARGE_MIB (2048).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIB=${LARGE_MIB:-2048}
BYTES=$((MIB * 1024 * 1024))
build
DIR="$WORK/large"
mkdir -p "$DIR/files"
truncate -s "$BYTES" "$DIR/files/large.bin"
python3 "$ROOT/bench/gen_manifest.py" "$DIR" --tickets 1 --attach files/large.bin
log "large file: $MIB MiB (sparse), $RUNS runs"

walls=() rsss=() srsss=() cpus=()
for run in $(seq "$RUNS"); do
    start_sandbox
    db=$(fresh_db "${STORES[0]}")
    DATABASE_URL=$db timed large "$BIN" import "$DIR/manifest.csv" --api-url "$SANDBOX_URL" \
        --api-rate 100000/s --upload-rate 100000/s --quiet
    [[ $(sandbox_ticket_count) == 1 ]] || { echo "the ticket was not created" >&2; exit 1; }
    srss=$(sandbox_rss_kb)
    walls+=("$WALL") rsss+=("$RSS_KB") srsss+=("$srss") cpus+=("$CPU")
    log "run $run: ${WALL}s, cpu ${CPU}s, importer peak RSS $(mib "$RSS_KB") MiB, sandbox peak RSS $(mib "$srss") MiB"
    stop_sandbox
    drop_db "$db"
done
rm -f "$DIR/files/large.bin"

wall=$(median "${walls[@]}") rss=$(median "${rsss[@]}") srss=$(median "${srsss[@]}") cpu=$(median "${cpus[@]}")
mbs=$(calc "$BYTES / $wall / 1000000" 1)
echo "large file: $MIB MiB in ${wall}s = $mbs MB/s (hash + upload), cpu ${cpu}s; importer peak RSS $(mib "$rss") MiB; sandbox peak RSS $(mib "$srss") MiB"
row "large file: $MIB MiB imported (${STORES[0]} store), importer peak RSS" "$(mib "$rss") MiB" "≤ 32 MiB" "$(verdict "$(mib "$rss")" '<=' 32)"
row "large file: throughput (hash + upload, whole process)" "$mbs MB/s (${wall} s; CPU ${cpu} s); sandbox peak RSS $(mib "$srss") MiB" "—" "—"
