#!/usr/bin/env bash
# Code verification: start the local teacher replaying recorded completions (correct, wrong and
# hostile code), build the spec, then print every verdict with its reason.
# CURATE=path/to/curate overrides the command; TEACHER_RUNNING=1 skips starting the server.
set -euo pipefail
cd "$(dirname "$0")"
CURATE="${CURATE:-curate}"
RUN=runs/code-verification

if [ -z "${TEACHER_RUNNING:-}" ]; then
  log="$(mktemp)"
  "$CURATE" teacher-server --policy replay --traces data/completions.jsonl \
      --completion-column completions --port 8000 >"$log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
  for _ in $(seq 100); do grep -q '^http' "$log" && break; sleep 0.1; done
  grep -q '^http' "$log" || { cat "$log"; exit 1; }
fi

"$CURATE" build spec.yaml
echo
echo "== Every trace's verdict and why"
"$CURATE" sql "$RUN" "
  SELECT problem_id, sample_index AS sample, verdict, score, verify_detail
  FROM stage_verify ORDER BY problem_id, sample_index"
