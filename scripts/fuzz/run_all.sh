#!/bin/sh
# Run every fuzz target for SECONDS (default 600) each, JOBS (default 2) at a time, under atheris
# (the fallback fuzzer when atheris is missing). Logs: $OUT/<target>.log (default /tmp/hakmem-fuzz);
# corpora: $OUT/corpus/<target>. Summarize with: grep -H -E "^Done|==CRASH|ERROR: libFuzzer" $OUT/*.log
#
#   sh scripts/fuzz/run_all.sh [SECONDS] [JOBS]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
SECONDS_EACH=${1:-600}
JOBS=${2:-2}
OUT=${OUT:-/tmp/hakmem-fuzz}
mkdir -p "$OUT/corpus"
ls "$HERE"/fuzz_*.py | xargs -P "$JOBS" -I{} sh -c '
  t=$(basename {} .py); t=${t#fuzz_}
  start=$(date +%s)
  python3 {} "'"$OUT"'/corpus/$t" -max_total_time='"$SECONDS_EACH"' -rss_limit_mb=2048 -timeout=30 \
      -artifact_prefix="'"$OUT"'/$t-" > "'"$OUT"'/$t.log" 2>&1
  echo "$t exit=$? seconds=$(( $(date +%s) - start ))" >> "'"$OUT"'/summary.txt"
'
