#!/usr/bin/env bash
# ReDis on 20 real problems: start the scripted local teacher (`--policy rules`), build the
# spec, then print the pairs per task and the chosen / rejected score histograms.
# CURATE=path/to/curate overrides the command; TEACHER_RUNNING=1 skips starting the server
# (point spec.yaml's base_url at yours).
set -euo pipefail
cd "$(dirname "$0")"
CURATE="${CURATE:-curate}"
RUN=runs/redis-rules

if [ -z "${TEACHER_RUNNING:-}" ]; then
  log="$(mktemp)"
  "$CURATE" teacher-server --policy rules --tasks data/tasks.jsonl --port 8000 >"$log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
  for _ in $(seq 100); do grep -q '^http' "$log" && break; sleep 0.1; done
  grep -q '^http' "$log" || { cat "$log"; exit 1; }
fi

"$CURATE" build spec.yaml
echo
echo "== Per task: rules kept after dedup, pairs, rules that won a pair, SFT applications"
"$CURATE" sql "$RUN" "
  SELECT domain AS task, any_value(margin) AS margin,
         count(DISTINCT problem_id) AS problems,
         count(*) FILTER (WHERE parent_trace_id IS NULL) AS rules,
         sum(won_pairs) FILTER (WHERE parent_trace_id IS NULL) AS pairs,
         count(*) FILTER (WHERE parent_trace_id IS NULL AND won_pairs > 0) AS winning_rules,
         (SELECT count(*) FROM sft s WHERE s.problem_id LIKE p.domain || '-%') AS sft_rows
  FROM (SELECT *, CASE domain WHEN '1d_arc' THEN 1 WHEN 'acre' THEN 2
                              WHEN 'list_func' THEN 3 ELSE 4 END AS margin FROM stage_pair) p
  GROUP BY domain ORDER BY domain"

echo "== Score histograms of the exported pairs: how many pairs have that score on each side"
"$CURATE" sql "$RUN" "
  WITH sides AS (
    SELECT split_part(problem_id, '-', 1) AS task, 'chosen' AS side, chosen_score AS score
    FROM preference
    UNION ALL
    SELECT split_part(problem_id, '-', 1), 'rejected', rejected_score FROM preference)
  SELECT task, score::INT AS score,
         count(*) FILTER (WHERE side = 'chosen') AS chosen,
         count(*) FILTER (WHERE side = 'rejected') AS rejected
  FROM sides GROUP BY ALL ORDER BY task, score"
