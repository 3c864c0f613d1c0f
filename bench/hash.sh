#!/usr/bin/env bash
# Hashing: MD5 of a 1 GiB file of random bytes (made once in the work dir, in page cache,
# deleted after) by `pipeline::hash::md5_file` (benches/hash.rs) next to `md5sum` on the same
# file. MB = 10^6 bytes. Knob: HASH_MIB (1024).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIB=${HASH_MIB:-1024}
BYTES=$((MIB * 1024 * 1024))
HASH=$(bench_exe hash)
FILE="$WORK/hash.bin"
head -c "$BYTES" /dev/urandom >"$FILE"
cat "$FILE" >/dev/null # warm the page cache: both read from memory
log "hashing: $MIB MiB, $RUNS runs"

ours=() theirs=() rsss=()
for run in $(seq "$RUNS"); do
    timed hash "$HASH" --bench "$FILE"
    ours+=("$(calc "$BYTES / $WALL / 1000000" 1)") rsss+=("$RSS_KB")
    timed md5sum md5sum "$FILE"
    theirs+=("$(calc "$BYTES / $WALL / 1000000" 1)")
    log "run $run: md5_file ${ours[-1]} MB/s ($(cat "$WORK/hash.out")), md5sum ${theirs[-1]} MB/s"
done
rm -f "$FILE"

o=$(median "${ours[@]}") t=$(median "${theirs[@]}") rss=$(median "${rsss[@]}")
echo "hashing: md5_file $o MB/s (peak RSS $(mib "$rss") MiB), md5sum $t MB/s"
row "hashing: MD5 of $MIB MiB, \`md5_file\` vs \`md5sum\`" "$o MB/s vs $t MB/s ($(calc "$o / $t" 2)×); peak RSS $(mib "$rss") MiB" "—" "—"
