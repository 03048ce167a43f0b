"""The `sample` operator against a real local teacher (HTTP on 127.0.0.1): faults survived
without lost or doubled rows, max_tokens changes, the budget, failed requests as rows that
verify skips, the modes (until verified, failures, trace), native n, reasoning capture, the
dry-run plan, --refresh and a refused key."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curate.engine import Build
from curate.errors import TeacherError
from curate.operators import StageIncomplete
from curate.parquet_io import read_parts
from curate.spec import load_spec
from curate.teachers.cache import RequestCache
from tests.sample_support import teacher, write_spec


def build(spec: Path, **kwargs: object) -> dict[str, object]:
    return Build(load_spec(spec), **kwargs).run()  # type: ignore[arg-type]


def stage(spec: Path, stage_id: str = "01-sample") -> pl.DataFrame:
    return read_parts(spec.parent / "runs" / "gsm" / "stages" / stage_id)


def stage_record(spec: Path, stage_id: str = "01-sample") -> dict[str, object]:
    path = spec.parent / "runs" / "gsm" / "stages" / stage_id / "stage.json"
    record: dict[str, object] = json.loads(path.read_text())
    return record


def test_2000_requests_through_429s_500s_and_dropped_connections(tmp_path: Path) -> None:
    with teacher(rate_429=0.02, retry_after=0.05, rate_500=0.02, rate_drop=0.01) as server:
        spec = write_spec(tmp_path, server.base_url, teacher="max_concurrency: 64")
        build(spec)
        stats = server.stats()
    rows = stage(spec)
    assert rows.height == 2000
    assert rows["trace_id"].n_unique() == 2000  # no row twice
    assert rows.group_by("problem_id").len()["len"].to_list() == [4] * 500
    assert sorted(rows["sample_index"].unique().to_list()) == [0, 1, 2, 3]
    answered = rows.filter(pl.col("completion").is_not_null() & pl.col("error").is_null())
    failed = rows.filter(pl.col("error").is_not_null())
    assert answered.height + failed.height == 2000  # a completion or a recorded error, each
    assert stats["succeeded"] == answered.height  # the server's own count
    faults = stats["faults"]
    assert faults["429"] > 10 and faults["500"] > 10 and faults["drop"] > 5, faults
    assert stats["requests"] == stats["succeeded"] + sum(faults.values())
    with RequestCache(spec.parent / "runs" / "gsm" / "requests.sqlite") as cache:
        assert cache.count() == 2000


def test_raising_max_tokens_re_asks_only_the_truncated_traces(tmp_path: Path) -> None:
    with teacher() as server:
        spec = write_spec(
            tmp_path, server.base_url, limit=100, sample="n: 2, seed: 0, max_tokens: 60"
        )
        build(spec)
        first = stage(spec)
        truncated = first.filter(pl.col("finish_reason") == "length")
        assert 20 < truncated.height < first.height  # the policy writes 30-120 words
        server.reset()
        spec.write_text(spec.read_text().replace("max_tokens: 60", "max_tokens: 400"))
        build(spec)
        assert server.stats()["requests"] == truncated.height
    second = stage(spec)
    assert second.filter(pl.col("finish_reason") == "length").height == 0
    kept = first.filter(pl.col("finish_reason") == "stop").drop("max_tokens")
    same = second.filter(pl.col("trace_id").is_in(kept["trace_id"].implode())).drop("max_tokens")
    assert same.equals(kept)  # the answers that fit are the cached ones, untouched


def test_budget_stops_within_one_batch_and_a_higher_budget_resumes(tmp_path: Path) -> None:
    prices = "max_concurrency: 8, input_usd_per_mtok: 1000, output_usd_per_mtok: 2000"
    with teacher(latency_s=0.01) as server:
        spec = write_spec(
            tmp_path, server.base_url, limit=100, teacher=prices, top="budget_usd: 20\n"
        )
        with pytest.raises(StageIncomplete, match="budget reached") as stopped:
            build(spec)
        assert stopped.value.exit_code == 9
        first = server.stats()
        record = stage_record(spec)
        assert record["complete"] is False
        rows = stage(spec)
        costs = rows["cost_usd"].to_list()
        spent = sum(costs)
        assert spent >= 20
        assert spent - 20 <= 8 * max(costs)  # at most one batch (max_concurrency) over
        assert first["succeeded"] == rows.height < 400
        # A higher budget resumes: only the samples left are sent.
        spec.write_text(spec.read_text().replace("budget_usd: 20", "budget_usd: 1000"))
        server.reset()
        manifest = build(spec)
        assert server.stats()["requests"] == 400 - rows.height
    pool = stage(spec)
    assert pool.height == 400
    usage = pool.select(
        (pl.col("usage_prompt_tokens") * 1000 + pl.col("usage_completion_tokens") * 2000).sum()
        / 1e6
    ).item()
    cost = manifest["teachers"]["local"]["cost_usd"]  # type: ignore[index]
    assert cost == pytest.approx(usage)
    assert cost == pytest.approx(pool["cost_usd"].sum())


def test_failed_requests_are_rows_that_verify_and_grade_skip(tmp_path: Path) -> None:
    steps = "  - verify: {method: numeric}\n  - grade: {}\n"
    with teacher(fail_next=7) as server:
        spec = write_spec(
            tmp_path,
            server.base_url,
            limit=20,
            sample="n: 2, seed: 0",
            teacher="max_retries: 0, max_concurrency: 1",
            steps=steps,
        )
        build(spec)
        failed = stage(spec).filter(pl.col("error").is_not_null())
        assert failed.height == 7
        assert failed["error"].str.starts_with("http 500").all()
        assert failed["completion"].is_null().all()
        graded = stage(spec, "03-grade")
        judged = graded.filter(pl.col("error").is_not_null())
        assert judged["verdict"].is_null().all()
        assert judged["verify_detail"].str.starts_with("request failed: http 500").all()
        assert (
            graded.group_by("problem_id").agg(pl.col("n_judged").first())["n_judged"].sum()
            == 40 - 7
        )
        # The next build sends the failed requests again, and only them.
        server.set_faults(fail_next=0)
        server.reset()
        build(spec)
        assert server.stats()["requests"] == 7
    assert stage(spec)["error"].is_null().all()
    assert stage(spec, "03-grade")["n_judged"].min() == 2


def test_until_verified_samples_again_only_where_nothing_was_verified(tmp_path: Path) -> None:
    sample = "n: 1, seed: 0, until: verified, max_tries: 4, verify: {method: numeric}"
    with teacher(style={"error_rate": 0.6}) as server:
        spec = write_spec(tmp_path, server.base_url, limit=60, sample=sample)
        build(spec)
        requests = server.stats()["requests"]
    rows = stage(spec)
    assert rows.height == requests
    per_problem = rows.group_by("problem_id").agg(
        pl.len().alias("tries"),
        pl.col("verdict").any().alias("solved"),
        pl.col("verdict").last().alias("last"),
        pl.col("sample_index").sort().alias("indexes"),
    )
    for row in per_problem.iter_rows(named=True):
        assert row["indexes"] == list(range(row["tries"]))
        # sampled until the first verified trace, or 4 times
        assert row["last"] is True or (row["tries"] == 4 and not row["solved"])
    assert per_problem["tries"].max() == 4 and per_problem["tries"].min() == 1


def test_failures_get_corrections_and_traces_get_rewrites(tmp_path: Path) -> None:
    steps = (
        "  - verify: {method: numeric}\n"
        "  - sample: {teachers: [local], input: failures, seed: 0}\n"
        "  - sample: {teachers: [local], input: trace, seed: 0, max_tokens: 300,\n"
        "             templates: ['Shorten to {{ 50 if difficulty is undefined else 9 }} words: "
        "{{ prompt }} {{ completion }}']}\n"
    )
    with teacher(style={"error_rate": 0.5}) as server:
        spec = write_spec(tmp_path, server.base_url, limit=30, sample="n: 2, seed: 0", steps=steps)
        build(spec)
    verified = stage(spec, "02-verify")
    wrong = verified.filter(pl.col("verdict").eq(False))
    corrected = stage(spec, "03-sample")
    fixes = corrected.filter(pl.col("parent_trace_id").is_not_null())
    assert corrected.height == verified.height + wrong.height
    assert sorted(fixes["parent_trace_id"].to_list()) == sorted(wrong["trace_id"].to_list())
    assert fixes["template_id"].unique().to_list() == ["failures"]
    assert fixes["role"].unique().to_list() == ["teacher"]
    rewritten = stage(spec, "04-sample")
    rewrites = rewritten.filter(pl.col("role") == "rewriter")
    assert rewrites.height == corrected.height  # every trace with a completion, once
    assert rewrites["template_id"].unique().to_list() == ["t0"]
    with RequestCache(spec.parent / "runs" / "gsm" / "requests.sqlite") as cache:
        sent = [json.loads(r["request"])["messages"][-1]["content"] for r in cache.rows()]
    fix_prompts = [m for m in sent if m.startswith("Here is a problem")]
    assert len(fix_prompts) == wrong.height
    assert all("Incorrect solution:" in m for m in fix_prompts)
    assert sum(m.startswith("Shorten to 50 words: ") for m in sent) == corrected.height


def test_native_n_and_reasoning_content(tmp_path: Path) -> None:
    with teacher(style={"reasoning": "field"}) as server:
        spec = write_spec(
            tmp_path,
            server.base_url,
            limit=25,
            teacher="supports_n: true",
            sample="n: 4, seed: 0, temperature: 0.8",
        )
        build(spec)
        assert server.stats()["requests"] == 25  # one request per problem, n = 4
    rows = stage(spec)
    assert rows.height == 100 and rows["trace_id"].n_unique() == 100
    assert rows["reasoning"].is_not_null().all()
    assert rows["completion"].str.starts_with("The answer is").all()
    assert rows.group_by("problem_id").agg(pl.col("reasoning").n_unique())["reasoning"].min() > 1
    assert rows["cost_usd"].sum() == 0.0


def test_think_tags_are_split(tmp_path: Path) -> None:
    with teacher(style={"reasoning": "think"}) as server:
        spec = write_spec(tmp_path, server.base_url, limit=5, sample="n: 1")
        build(spec)
    rows = stage(spec)
    assert rows["reasoning"].is_not_null().all()
    assert not rows["completion"].str.contains("think").any()


def test_dry_run_plan_is_what_the_build_sends(tmp_path: Path) -> None:
    from curate.costs import cost_plan

    prices = "input_usd_per_mtok: 3, output_usd_per_mtok: 15"
    with teacher() as server:
        spec = write_spec(
            tmp_path,
            server.base_url,
            limit=40,
            teacher=prices,
            sample="n: 3, seed: 0, max_tokens: 500",
        )
        plan = cost_plan(Build(load_spec(spec)))
        (step,) = plan.steps
        (local,) = step.teachers
        assert (local.samples, local.cached, local.requests) == (120, 0, 120)
        assert local.completion_tokens == 120 * 500
        assert local.cost_usd == pytest.approx(
            (local.prompt_tokens * 3 + local.completion_tokens * 15) / 1e6
        )
        assert not (spec.parent / "runs" / "gsm" / "requests.sqlite").exists()  # sent nothing
        build(spec)
        spec.write_text(spec.read_text().replace("n: 3", "n: 5"))
        (local,) = cost_plan(Build(load_spec(spec))).steps[0].teachers
        assert (local.samples, local.cached, local.requests) == (200, 120, 80)
        server.reset()
        build(spec)
        assert server.stats()["requests"] == local.requests


def test_dry_run_plans_a_rewrite_step_before_its_traces_exist(tmp_path: Path) -> None:
    from curate.costs import cost_plan

    steps = "  - sample: {teachers: [local], input: trace, max_tokens: 100}\n"
    spec = write_spec(
        tmp_path,
        "http://127.0.0.1:9/v1",
        limit=40,
        steps=steps,
        sample="n: 3, seed: 0, max_tokens: 500",
    )
    first, rewrite = cost_plan(Build(load_spec(spec))).steps
    assert first.exact and not rewrite.exact  # the traces to rewrite are not made yet
    (sampled,), (rewrites,) = first.teachers, rewrite.teachers
    assert rewrites.samples == rewrites.requests == sampled.samples == 120
    # each rewrite prompt holds a trace of up to 500 tokens
    assert rewrites.prompt_tokens > sampled.prompt_tokens + 120 * 500
    assert rewrites.completion_tokens == 120 * 100


def test_refresh_asks_again_and_later_stages_follow(tmp_path: Path) -> None:
    with teacher() as server:
        spec = write_spec(
            tmp_path,
            server.base_url,
            limit=10,
            sample="n: 2, seed: 0",
            steps="  - verify: {method: numeric}\n",
        )
        build(spec)
        server.reset()
        manifest = build(spec)
        assert server.stats()["requests"] == 0
        assert [s["status"] for s in manifest["stages"]] == ["reused"] * 3  # type: ignore[index]
        manifest = build(spec, refresh=True)
        assert server.stats()["requests"] == 20
        assert [s["status"] for s in manifest["stages"]] == [  # type: ignore[index]
            "reused",
            "ran",
            "ran",
        ]


def test_a_refused_key_stops_the_build_and_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_TEACHER_KEY", "sk-wrong-0123456789abcdef")
    with teacher(api_key="sk-right-0123456789abcdef") as server:
        spec = write_spec(
            tmp_path, server.base_url, limit=10, teacher="api_key_env: LOCAL_TEACHER_KEY"
        )
        with pytest.raises(TeacherError, match=r"HTTP 401.*LOCAL_TEACHER_KEY") as refused:
            build(spec)
    assert "0123456789abcdef" not in str(refused.value)
    assert not (spec.parent / "runs" / "gsm" / "stages" / "01-sample").exists()


def test_content_filter_retried_then_marked_and_every_attempt_billed(tmp_path: Path) -> None:
    sample = "n: 2, seed: 0, on_content_filter: retry, finish_retries: 2, on_length: mark"
    prices = "input_usd_per_mtok: 1000000, output_usd_per_mtok: 0"  # $1 per prompt token
    with teacher(rate_content_filter=0.3, rate_truncate=0.1) as server:
        spec = write_spec(tmp_path, server.base_url, limit=50, sample=sample, teacher=prices)
        manifest = build(spec)
        stats = server.stats()
    rows = stage(spec)
    assert rows.height == 100
    retries = stats["requests"] - 100
    assert stats["faults"]["content_filter"] >= retries > 10  # each retry follows a filter
    filtered = rows.filter(pl.col("finish_reason") == "content_filter")
    assert (filtered["error"] == "finish_reason content_filter after 3 tries").all()
    cut = rows.filter(pl.col("finish_reason") == "length")
    assert cut["error"].str.starts_with("finish_reason length (cut at max_tokens 4096)").all()
    assert rows.filter(pl.col("finish_reason") == "stop")["error"].is_null().all()
    retried = rows.filter(pl.col("seed") > 1000)  # asked again with seed + 1,000,003 per try
    assert retried.height > 0
    # Every attempt answered is paid for: the rows' costs add up to the server's prompt tokens.
    assert rows["cost_usd"].sum() == pytest.approx(stats["prompt_tokens"])
    assert manifest["teachers"]["local"]["cost_usd"] == pytest.approx(stats["prompt_tokens"])  # type: ignore[index]
