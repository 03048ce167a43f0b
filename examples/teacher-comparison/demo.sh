#!/usr/bin/env bash
# Teacher comparison: build the spec, print the teachers side by side, then ask the run a few
# questions in SQL.
set -euo pipefail
cd "$(dirname "$0")"
CURATE="${CURATE:-curate}"
RUN=runs/teacher-comparison

"$CURATE" build spec.yaml
echo
"$CURATE" stats "$RUN"

echo
echo "== Our verdicts against CHAMP's human labels (no_mistake: the whole solution is right)"
"$CURATE" sql "$RUN" "
  SELECT source_label AS human_no_mistake, verdict AS ours, count(*) AS traces
  FROM stage_verify WHERE source_label IS NOT NULL GROUP BY ALL ORDER BY ALL"

echo "== Accuracy per teacher and prompt setting (the setting is the trace id's last part)"
"$CURATE" sql "$RUN" "
  SELECT model, split_part(trace_id, ':', 3) AS setting, count(*) AS traces,
         count(verdict) AS judged, round(avg(verdict::INT), 3) AS accuracy,
         round(median(completion_tokens + reasoning_tokens)) AS median_tokens
  FROM traces GROUP BY ALL ORDER BY ALL"

echo "== Traces the verifier could not judge, per teacher"
"$CURATE" sql "$RUN" "
  SELECT model, count(*) FILTER (WHERE verdict IS NULL) AS not_judged, count(*) AS traces
  FROM stage_verify GROUP BY ALL ORDER BY ALL"
