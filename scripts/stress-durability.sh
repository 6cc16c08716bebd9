#!/usr/bin/env bash
# Runs the kill -9 durability test N times (default 50) with CPU hogs beside it and prints, per
# run, what was lost, in doubt and duplicated. Not part of CI: it takes a while.
#   scripts/stress-durability.sh [RUNS] [HOGS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
hogs=${2:-2}
cargo test -p coalmine --test queue_durability --no-run >/dev/null 2>&1 || cargo test -p coalmine --test queue_durability --no-run
pids=()
for _ in $(seq "$hogs"); do (while :; do :; done) & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
failed=0
printf '%-4s %-6s %-8s %-9s %-8s %-6s %s\n' run result sent in_doubt gone lost duplicates
for i in $(seq "$runs"); do
  out=$(cargo test -q -p coalmine --test queue_durability -- --nocapture 2>&1) && result=ok || { result=FAIL; failed=$((failed+1)); }
  line=$(grep '^durability:' <<<"$out" || true)
  sent=$(sed -n 's/.*sent \([0-9]*\).*/\1/p' <<<"$line")
  doubt=$(sed -n 's/.*in_doubt \([0-9]*\).*/\1/p' <<<"$line")
  gone=$(sed -n 's/.*gone \([0-9]*\)).*/\1/p' <<<"$line")
  dup=$(sed -n 's/.*duplicates \([0-9]*\).*/\1/p' <<<"$line")
  lost=0; [ "$result" = ok ] || lost=$(grep -o '[0-9]* acknowledged messages are missing' <<<"$out" | cut -d' ' -f1 || echo "?")
  printf '%-4s %-6s %-8s %-9s %-8s %-6s %s\n' "$i" "$result" "${sent:--}" "${doubt:--}" "${gone:--}" "${lost:-0}" "${dup:--}"
  [ "$result" = ok ] || grep -E 'panicked|missing|came back' <<<"$out" | head -3
done
echo "runs $runs, failed $failed"
[ "$failed" -eq 0 ]
