#!/usr/bin/env bash
# The quickstart: build the spec, then ask the run four questions in SQL.
set -euo pipefail
cd "$(dirname "$0")"
CURATE="${CURATE:-curate}"
RUN=runs/quickstart

"$CURATE" build spec.yaml

echo
echo "== Our math-verify verdicts against the correctness flags shipped with the traces"
"$CURATE" sql "$RUN" "
  SELECT source_label AS shipped, verdict AS ours, count(*) AS traces
  FROM stage_verify GROUP BY ALL ORDER BY ALL"
"$CURATE" sql "$RUN" "
  SELECT count(*) FILTER (WHERE verdict IS NOT NULL) AS judged,
         count(*) FILTER (WHERE verdict = source_label) AS agree,
         round(100.0 * agree / judged, 2) AS agreement_pct,
         count(*) FILTER (WHERE verdict IS NULL) AS not_judged
  FROM stage_verify"

echo "== Benchmark problems removed, and the item each matched"
"$CURATE" sql "$RUN" "
  SELECT problem_id, any_value(contaminated_with) AS matched, count(*) AS traces
  FROM dropped WHERE drop_stage = '02-decontaminate' GROUP BY ALL ORDER BY ALL"

echo "== Problems by difficulty band"
"$CURATE" sql "$RUN" "
  SELECT difficulty, count(*) AS problems, round(avg(pass_rate), 3) AS mean_pass_rate,
         sum(n_kept) AS traces_kept
  FROM problems GROUP BY ALL ORDER BY mean_pass_rate DESC"

echo "== Why rows were dropped"
"$CURATE" sql "$RUN" "
  SELECT drop_stage, drop_reason, count(*) AS traces FROM dropped GROUP BY ALL ORDER BY ALL"
