#!/usr/bin/env bash
# Runs every benchmark (each BENCH_RUNS=3 times, medians) and prints one markdown table ready
# for the README. About 5–10 minutes on 2 cores. Needs Postgres at BENCH_PG (default
# postgres://postgres@127.0.0.1:5432, a role that can create databases), python3, jq, curl,
# psql and GNU time. Usage: bash bench/run-all.sh [pipeline rate ingest large hash queue
# ingest-large register] (ingest-large, manifests of up to 1,000,000 rows, and register are not in the default set:
# about 10 minutes and 400 MB of disk; BENCH_BASE_BIN compares it with a previous build)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export BENCH_RESULTS
BENCH_RESULTS=$(mktemp /tmp/vi-bench-results.XXXXXX)
trap 'rm -f "$BENCH_RESULTS"' EXIT
benches=("$@")
((${#benches[@]})) || benches=(pipeline rate ingest large hash queue)

started=$SECONDS
for b in "${benches[@]}"; do
    echo "== $b" >&2
    bash "$HERE/$b.sh" >&2
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo
echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($cpu), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM,"
echo "PostgreSQL $(psql -tA "${BENCH_PG:-postgres://postgres@127.0.0.1:5432}/postgres" -c 'SHOW server_version' | cut -d' ' -f1) (default settings); medians of ${BENCH_RUNS:-3} runs; \`bash bench/run-all.sh\` ($((SECONDS - started)) s)."
echo
echo "| Benchmark | Result | Goal | Met |"
echo "|---|---|---|---|"
cat "$BENCH_RESULTS"
