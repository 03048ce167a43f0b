"""The `sample` operator: ask teachers for traces, one pool row per sample.

Flow of `apply` (curate/teachers/__init__.py describes the transport under it):

1. `_parents`: the rows to sample from. `input: problem` (default): each distinct problem;
   `trace`: every trace with a completion (rewriting, e.g. concise rewrites with a length
   budget in the template); `failures`: every trace whose verdict is false (a teacher sees the
   wrong trace and writes a corrected one).
2. `_plan_samples`: for each parent, teacher and sample j: the rendered messages, temperature,
   seed and cache key (prompts.py says which template, system prompt and temperature; with
   `template_by`, the row's value of that column picks the template, e.g. one per difficulty
   band, each stating its band's token budget).
3. `_resolve`: the request cache answers what it can; the rest go out as requests
   (teachers.dispatch), each answer cached as it arrives. `_send` sends them from this process,
   or through `sender` when the executor spreads them (the Ray executor's sampler actors,
   curate.executors.ray_sample): planning, the cache lookups and the rows stay here either way.
4. `_rows`: one row per sample: the parent's problem columns, then the trace columns
   (trace_id, sample_index, model, …, completion, reasoning, finish_reason, usage, cost_usd,
   error). A request that failed for good is a row with `error` set, never a silent null.
5. `until: verified`: the new rows are judged with the `verify:` config (curate.verify), and
   every (parent, teacher) with no verified trace yet is sampled again, n more samples per
   try, up to `max_tries` tries.

The output is the input's trace rows, unchanged, followed by the new rows; problem rows that
had no trace yet are replaced by their traces. `plan` runs steps 1–3 without sending anything:
`curate validate` and `curate build --dry-run` print it.

`round` (set by a `rounds:` block, see curate.spec) is the round of the rows this step makes;
with it, `input: trace` and `failures` read only rows of that round, and the round enters the
request cache key, so a round asks afresh rather than reusing an earlier round's answers.

Stopping early (budget reached, Ctrl-C) raises StageIncomplete with the rows answered so far;
the engine writes them as the stage, marked incomplete, and a re-run resumes from the cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from curate import ids
from curate.errors import OperatorError
from curate.operators import Operator, OpResult, Params, Scope, StageContext, StageIncomplete
from curate.prompts import (
    Renderer,
    Text,
    Variant,
    load_texts,
    make_variants,
    row_context,
    temperature_schedule,
)
from curate.schemas.pool import POOL_SCHEMA, PROBLEM_LEVEL
from curate.schemas.spec import OpenAITeacher, VLLMTeacher
from curate.teachers.budget import Budget, token_cost
from curate.teachers.cache import RequestCache, reusable
from curate.teachers.requests import Answer, Request, cache_key, estimate_tokens, key_prefix
from curate.verify import VerifyParams

if TYPE_CHECKING:
    from curate.teachers.dispatch import Outcome, Sender

log = logging.getLogger("curate.sample")

Mode = Literal["problem", "trace", "failures"]
Policy = Literal["keep", "mark", "retry"]
INTERRUPT_EXIT = 130  # what a shell reports for a process stopped by SIGINT
PLANNED_TOKENS = "_planned_tokens"  # simulated rows (dry run): tokens a completion may take

REWRITE_TEMPLATE = (
    "Rewrite the solution below as concisely as the problem allows: keep every step that is "
    "needed and the final answer, drop the rest.\n\nProblem:\n{{ prompt }}\n\n"
    "Solution:\n{{ completion }}"
)
FEEDBACK_TEMPLATE = (
    "Here is a problem and a solution to it that is wrong.\n\nProblem:\n{{ prompt }}\n\n"
    "Incorrect solution:\n{{ completion }}\n\nSay briefly where the solution goes wrong, then "
    "solve the problem correctly. Put the final answer in \\boxed{}."
)
DEFAULT_ROLE: dict[str, str] = {"problem": "teacher", "trace": "rewriter", "failures": "teacher"}

# A new trace row inherits its parent's problem-level columns (problem, grade, contamination)
# and any column the pool schema does not declare; the rest describe the parent's own trace.
INHERITED = frozenset([*PROBLEM_LEVEL, "contaminated_with"])


class TemperatureRange(Params):
    """Temperatures spread evenly from min to max over the n samples."""

    min: float = Field(ge=0.0, le=2.0, description="temperature of the first sample")
    max: float = Field(ge=0.0, le=2.0, description="temperature of the last sample")

    @model_validator(mode="after")
    def _ordered(self) -> TemperatureRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class SampleParams(Params):
    """Which teachers, how many samples, how to prompt them and what to do with odd answers."""

    teachers: list[str] = Field(
        min_length=1, description="names of teachers declared under `teachers:` at the top"
    )
    n: int = Field(1, ge=1, le=4096, description="samples per row per teacher (per try)")
    temperature: float | list[float] | TemperatureRange = Field(
        1.0,
        description="a value; a list cycled over the samples; or {min, max} spread evenly",
    )
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="nucleus sampling (unset: the server's default)"
    )
    max_tokens: int = Field(4096, ge=1, description="completion tokens at most per sample")
    seed: int | None = Field(
        None, description="base seed: sample i is sent seed + i (unset: no seed is sent)"
    )
    templates: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="Jinja2 user-message templates over the row's columns ({{ prompt }}, "
        "{{ completion }}, {{ meta.x }}), inline or as files (.j2/.jinja/.txt/.md); a list "
        "(ids t0, t1, … or the file stem) or a mapping id → template. Default: the prompt as "
        "is (input: problem) or a built-in rewrite / correction prompt",
    )
    system_prompts: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="system prompts (Jinja2 too), like templates; default: the row's "
        "system_prompt column, if any",
    )
    combine: Literal["cycle", "cross"] = Field(
        "cycle",
        description="cycle: sample j takes template j and system prompt j (each list cycled); "
        "cross: every (template, system prompt) pair in turn",
    )
    input: Mode = Field(
        "problem",
        description="problem: sample each problem; trace: rewrite each trace; failures: "
        "correct each trace whose verdict is false",
    )
    until: Literal["verified"] | None = Field(
        None, description="verified: sample again (n more) until a verified trace exists"
    )
    max_tries: int = Field(1, ge=1, le=100, description="until: verified: tries at most")
    verify: VerifyParams | None = Field(
        None, description="until: verified: how to judge (the `verify` step's parameters)"
    )
    on_length: Policy = Field(
        "keep",
        description="finish_reason length (cut at max_tokens): keep the row; mark it (error "
        "set, so verify and grade skip it); retry (finish_retries more tries, then mark)",
    )
    on_content_filter: Policy = Field(
        "mark", description="finish_reason content_filter: keep, mark or retry, as on_length"
    )
    finish_retries: int = Field(
        2, ge=1, le=20, description="tries beyond the first for a `retry` policy"
    )
    role: str | None = Field(
        None, description="the `role` column (default: teacher; rewriter for input: trace)"
    )
    template_by: str | None = Field(
        None,
        description="a column whose value picks each row's template: `templates` is then a "
        "mapping from its values to templates (`default` for any other value), e.g. "
        "template_by: difficulty with one template per band stating the band's token budget",
    )
    round: int | None = Field(
        None,
        ge=0,
        description="the `round` of the rows this step makes; a `rounds:` block sets it. With "
        "it, input: trace / failures read only rows of this round, and each round asks afresh "
        "(the round is part of the request cache key)",
    )

    @model_validator(mode="after")
    def _template_by(self) -> SampleParams:
        if self.template_by is not None and not isinstance(self.templates, dict):
            raise ValueError(
                "template_by needs `templates` as a mapping from the column's values to "
                "templates, e.g. {easy: …, medium: …, hard: …, default: …}"
            )
        return self

    @model_validator(mode="after")
    def _until(self) -> SampleParams:
        if self.until == "verified" and self.verify is None:
            raise ValueError("until: verified needs a `verify:` config (e.g. {method: math})")
        if self.until is None and self.verify is not None:
            raise ValueError("`verify:` is used only with until: verified")
        if self.until is None and self.max_tries > 1:
            raise ValueError("max_tries is used only with until: verified")
        if isinstance(self.temperature, list) and not self.temperature:
            raise ValueError("temperature: the list is empty")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError("teachers: a teacher is listed twice")
        return self


@dataclass(slots=True)
class Planned:
    """One sample to get: its parent row, teacher, index, prompt and cache key."""

    parent: int
    teacher: str
    index: int  # sample_index
    template_id: str | None
    system: str | None
    messages: list[dict[str, str]]
    temperature: float
    seed: int | None
    key: str
    prompt_tokens: int
    group: tuple[int, int, str, int, float]  # try, parent, teacher, variant, temperature:
    # samples with equal messages and params, which a teacher with native n gets in one request


@dataclass
class TeacherPlan:
    """What one teacher is asked in one sample step: the numbers `--dry-run` prints."""

    teacher: str
    model: str
    samples: int = 0
    cached: int = 0
    requests: int = 0  # HTTP requests (or vLLM prompts) to send
    prompt_tokens: int = 0  # worst case of what is sent
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached_cost_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "model": self.model,
            "samples": self.samples,
            "cached": self.cached,
            "requests": self.requests,
            "worst_prompt_tokens": self.prompt_tokens,
            "worst_completion_tokens": self.completion_tokens,
            "worst_cost_usd": round(self.cost_usd, 6),
            "cached_cost_usd": round(self.cached_cost_usd, 6),
        }


@dataclass
class Usage:
    """Tokens and cost of one teacher in one stage (stage.json and the manifest)."""

    provider: str
    model: str
    samples: int = 0
    from_cache: int = 0
    requests_sent: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_usd_sent: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["cost_usd"] = round(self.cost_usd, 8)
        data["cost_usd_sent"] = round(self.cost_usd_sent, 8)
        return data


@dataclass
class _Resolved:
    answers: dict[str, Answer] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)
    interrupted: bool = False
    budget_stopped: bool = False


class Sample(Operator[SampleParams]):
    """Sample traces from teachers: n per row per teacher, cached per request, resumable.

    Teachers are declared once under `teachers:` and named here. Each problem (input: problem)
    becomes n trace rows per teacher: the problem's columns, then trace_id, sample_index, model,
    provider, template_id, temperature, seed, completion, reasoning (`reasoning_content`, or a
    `<think>` part split off), finish_reason, usage, cost_usd, and `error` when the request
    failed for good (verify and grade skip those rows). `input: trace` rewrites each trace
    (role rewriter), `input: failures` asks for a correction of each trace judged wrong; both
    add rows with parent_trace_id and keep the input's. Every answer is cached per request, so
    a killed, interrupted or over-budget build resumes with only what is left, and raising
    max_tokens re-asks only the truncated samples."""

    name: ClassVar[str] = "sample"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = SampleParams
    requires: ClassVar[tuple[str, ...]] = ("problem_id", "prompt")
    calls_teachers: ClassVar[bool] = True

    def __init__(self, params: SampleParams, *, context: StageContext) -> None:
        super().__init__(params, context=context)
        # Set by an executor that spreads the requests (Ray); None: sent from this process.
        self.sender: Sender | None = None
        p = self.params
        base = self.context.base_dir
        templates = load_texts(p.templates, prefix="t", base_dir=base, what="template")
        if not templates and p.input != "problem":
            body = REWRITE_TEMPLATE if p.input == "trace" else FEEDBACK_TEMPLATE
            templates = [Text(id=p.input, text=body)]
        systems = load_texts(p.system_prompts, prefix="s", base_dir=base, what="system prompt")
        self.files = [t.path for t in templates + systems if t.path is not None]
        self.variants: list[Variant] = make_variants(templates, systems, p.combine)
        self.all_variants = list(range(len(self.variants)))
        self.by_template: dict[str, list[int]] = {}
        for index, variant in enumerate(self.variants):
            if variant.template is not None:
                self.by_template.setdefault(variant.template.id, []).append(index)
        self.renderer = Renderer(self.variants)
        self.temperatures = temperature_schedule(p.temperature, p.n)
        self.role = p.role or DEFAULT_ROLE[p.input]
        self.retry_reasons = frozenset(
            reason
            for reason, policy in (("length", p.on_length), ("content_filter", p.on_content_filter))
            if policy == "retry"
        )
        self.tries = 1 + p.finish_retries if self.retry_reasons else 1
        self._extra: dict[str, Any] = {}

    # --- the engine's hooks ----------------------------------------------------------------

    def input_files(self) -> list[Path]:
        return list(self.files)

    def teacher(self, name: str) -> OpenAITeacher | VLLMTeacher:
        teachers = self.context.teachers
        if name not in teachers:
            known = ", ".join(sorted(teachers)) or "none"
            raise OperatorError(
                f"step '{self.context.stage_id}' (sample): teacher '{name}' is not declared "
                f"under `teachers:` (declared: {known})"
            )
        teacher: OpenAITeacher | VLLMTeacher = teachers[name]
        return teacher

    def fingerprint_extra(self) -> dict[str, Any]:
        """Teachers as far as they decide answers (not limits, timeouts or prices)."""
        out: dict[str, Any] = {}
        for name in self.params.teachers:
            t = self.teacher(name)
            if isinstance(t, OpenAITeacher):
                out[name] = {
                    "provider": t.provider,
                    "model": t.model,
                    "base_url": t.base_url,
                    "extra_body": t.extra_body,
                    "max_tokens_field": t.max_tokens_field,
                    "supports_n": t.supports_n,
                }
            else:
                out[name] = t.model_dump(
                    mode="json",
                    include={"provider", "model", "dtype", "max_model_len", "engine_args"},
                )
        return {"teachers": out}

    def reusable(self, record: dict[str, Any]) -> bool:
        """Not with --refresh, and not when requests failed: those are sent again."""
        return not self.context.refresh and not record.get("request_errors", 0)

    def record_extra(self) -> dict[str, Any]:
        return dict(self._extra)

    # --- planning -------------------------------------------------------------------------

    def _parents(self, frame: pl.DataFrame) -> pl.DataFrame:
        mode = self.params.input
        has_error = "error" in frame.columns
        if mode == "problem":
            return frame.unique("problem_id", keep="first", maintain_order=True)
        if "completion" not in frame.columns:
            raise OperatorError(
                f"step '{self.context.stage_id}' (sample, input: {mode}) needs traces: the "
                "pool has no 'completion' column (sample problems first, or read traces)"
            )
        # Rows simulated by a dry run (no completion yet) stand for the traces to come.
        simulated = (
            pl.col(PLANNED_TOKENS).is_not_null()
            if PLANNED_TOKENS in frame.columns
            else pl.lit(False)
        )
        rows = frame.filter(pl.col("completion").is_not_null() | simulated)
        if has_error:
            rows = rows.filter(pl.col("error").is_null())
        if self.params.round is not None:  # a round corrects or rewrites its own traces
            if "round" not in rows.columns:
                return rows.clear()
            rows = rows.filter(pl.col("round").eq(self.params.round))
        if mode == "failures":
            if "verdict" not in frame.columns:
                if PLANNED_TOKENS in frame.columns:  # dry run: any trace may fail
                    return rows
                raise OperatorError(
                    f"step '{self.context.stage_id}' (sample, input: failures) needs a "
                    "'verdict' column: put a `verify` step before it"
                )
            rows = rows.filter(pl.col("verdict").eq(False) | simulated)
        return rows

    def _variant_choices(self, row: Mapping[str, Any]) -> list[int]:
        """Indexes of the variants a row's samples cycle over: all of them, or with
        `template_by` those whose template is the one named by the row's value."""
        column = self.params.template_by
        if column is None:
            return self.all_variants
        if column not in row:
            if PLANNED_TOKENS in row:  # a dry run: the column comes from a later stage
                return self.by_template.get("default") or self.all_variants
            raise OperatorError(
                f"step '{self.context.stage_id}' (sample): template_by: the pool has no "
                f"column '{column}' (columns: {', '.join(sorted(row))})"
            )
        value = row[column]
        key = str(value) if value is not None else None
        found = self.by_template.get(key) if key is not None else None
        found = found or self.by_template.get("default")
        if found is None:
            raise OperatorError(
                f"step '{self.context.stage_id}' (sample): template_by {column}: a row "
                f"(problem_id {row.get('problem_id')!r}) has {column} {value!r}, which names "
                f"no template; templates: {', '.join(self.by_template)} (add `default`)"
            )
        return found

    def _plan_samples(
        self, parents: pl.DataFrame, pairs: Iterable[tuple[int, str]], attempt: int
    ) -> list[Planned]:
        """The samples of try `attempt` for each (parent row, teacher) in `pairs`."""
        p = self.params
        n = p.n
        rows = parents.to_dicts()
        planned_extra = (  # dry run: a trace to rewrite may be as long as its max_tokens
            parents.get_column(PLANNED_TOKENS).to_list()
            if PLANNED_TOKENS in parents.columns and p.input != "problem"
            else None
        )
        rendered: dict[tuple[int, int], tuple[list[dict[str, str]], str | None, int]] = {}
        prefixes: dict[tuple[int, int, str], Any] = {}
        out: list[Planned] = []
        variants = self.variants
        for parent, name in pairs:
            teacher = self.teacher(name)
            extra = _extra_json(teacher)
            if p.round is not None:  # each round asks afresh (see the module docstring)
                extra += f"\x00round={p.round}"
            choices = self._variant_choices(rows[parent])
            for j in range(n):
                v = choices[j % len(choices)]
                if (parent, v) not in rendered:
                    context = row_context(dict(rows[parent]))
                    messages, system = self.renderer.messages(variants[v], context)
                    tokens = estimate_tokens(messages)
                    if planned_extra is not None:
                        tokens += int(planned_extra[parent] or 0)
                    rendered[(parent, v)] = (messages, system, tokens)
                messages, system, tokens = rendered[(parent, v)]
                prefix = prefixes.get((parent, v, name))
                if prefix is None:
                    prefix = key_prefix(teacher.provider, teacher.model, messages, extra)
                    prefixes[(parent, v, name)] = prefix
                index = attempt * n + j
                seed = None if p.seed is None else p.seed + index
                temperature = self.temperatures[j]
                out.append(
                    Planned(
                        parent=parent,
                        teacher=name,
                        index=index,
                        template_id=variants[v].template_id,
                        system=system,
                        messages=messages,
                        temperature=temperature,
                        seed=seed,
                        key=cache_key(prefix, temperature, p.top_p, seed, index),
                        prompt_tokens=tokens,
                        group=(attempt, parent, name, v, temperature),
                    )
                )
        return out

    def _requests(self, samples: list[Planned]) -> list[Request]:
        """Requests for samples: one each, or one per group for teachers that take `n`."""
        p = self.params
        requests: list[Request] = []
        by_group: dict[tuple[int, int, str, int, float], Request] = {}
        for s in samples:
            teacher = self.teacher(s.teacher)
            if isinstance(teacher, OpenAITeacher) and teacher.supports_n:
                request = by_group.get(s.group)
                if request is not None:
                    request.keys.append(s.key)
                    continue
            request = Request(
                teacher=s.teacher,
                messages=s.messages,
                temperature=s.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                seed=s.seed,
                keys=[s.key],
                prompt_tokens=s.prompt_tokens,
            )
            by_group[s.group] = request
            requests.append(request)
        return requests

    def _cached(self, cache: RequestCache | None, samples: list[Planned]) -> dict[str, Answer]:
        """The cached answers that stand for these samples now (none with --refresh)."""
        if cache is None or self.context.refresh:
            return {}
        found = cache.lookup(s.key for s in samples)
        return {
            key: answer
            for key, answer in found.items()
            if reusable(
                answer, self.params.max_tokens, retry_reasons=self.retry_reasons, tries=self.tries
            )
        }

    def _all_samples(self, parents: pl.DataFrame) -> list[Planned]:
        """Every sample this step may ask for: all tries (the worst case of until: verified)."""
        pairs = [(i, name) for i in range(parents.height) for name in self.params.teachers]
        tries = self.params.max_tries if self.params.until else 1
        return [s for t in range(tries) for s in self._plan_samples(parents, pairs, t)]

    def plan(self, frame: pl.DataFrame) -> list[TeacherPlan]:
        """Per teacher: samples, how many the cache answers, and the worst case of the rest
        (prompt estimate + max_tokens per request, at the teacher's prices). Sends nothing."""
        parents = self._parents(frame)
        samples = self._all_samples(parents)
        cache = self._open_cache(readonly=True)
        try:
            cached = self._cached(cache, samples)
        finally:
            if cache is not None:
                cache.close()
        plans = {
            name: TeacherPlan(teacher=name, model=self.teacher(name).model)
            for name in self.params.teachers
        }
        for s in samples:
            plan = plans[s.teacher]
            plan.samples += 1
            if s.key in cached:
                plan.cached += 1
                plan.cached_cost_usd += cached[s.key].cost_usd
        missing = [s for s in samples if s.key not in cached]
        for request in self._requests(missing):
            plan = plans[request.teacher]
            teacher = self.teacher(request.teacher)
            completion = request.max_tokens * request.n
            plan.requests += 1
            plan.prompt_tokens += request.prompt_tokens
            plan.completion_tokens += completion
            plan.cost_usd += token_cost(
                request.prompt_tokens,
                completion,
                input_usd=teacher.input_usd_per_mtok,
                output_usd=teacher.output_usd_per_mtok,
            )
        return list(plans.values())

    def simulate(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows this step would output, with empty completions, for planning later steps
        before this one has run (a dry run): one row per sample of the first try."""
        parents = self._parents(frame)
        pairs = [(i, name) for i in range(parents.height) for name in self.params.teachers]
        samples = self._plan_samples(parents, pairs, 0)
        rows = self._rows(parents, samples, {}).drop("_parent", "_teacher")
        rows = rows.with_columns(pl.lit(self.params.max_tokens).alias(PLANNED_TOKENS))
        return self._merge(frame, rows)

    # --- running --------------------------------------------------------------------------

    def _open_cache(self, *, readonly: bool = False) -> RequestCache | None:
        path = self.context.request_cache
        if path is None:
            return None
        if readonly and not path.exists():
            return None
        return RequestCache(path, readonly=readonly)

    def _clients(self) -> dict[str, Any]:
        from curate.teachers.openai_client import OpenAIClient
        from curate.teachers.vllm_client import VLLMClient

        clients: dict[str, Any] = {}
        for name in self.params.teachers:
            teacher = self.teacher(name)
            if isinstance(teacher, OpenAITeacher):
                clients[name] = OpenAIClient(name, teacher)
            else:
                clients[name] = VLLMClient(name, teacher)
        return clients

    def _send(self, requests: list[Request], cache: RequestCache | None, budget: Budget) -> Outcome:
        """Send requests: through `sender` when the executor gave one, else from here."""
        from curate.teachers.dispatch import Dispatcher, FinishPolicy

        stage = self.context.stage_id
        policy = FinishPolicy(retry=self.retry_reasons, tries=self.tries)

        def log_line(line: str) -> None:
            log.info("%s: %s", stage, line)

        if self.sender is not None:
            return self.sender.send(
                requests, cache=cache, budget=budget, policy=policy, log=log_line
            )
        dispatcher = Dispatcher(
            clients=self._clients(), cache=cache, budget=budget, policy=policy, log=log_line
        )
        return dispatcher.run(requests)

    def _resolve(
        self,
        samples: list[Planned],
        cache: RequestCache | None,
        budget: Budget,
        usage: dict[str, Usage],
    ) -> _Resolved:
        resolved = _Resolved()
        cached = self._cached(cache, samples)
        resolved.answers.update(cached)
        resolved.cached = set(cached)
        for s in samples:
            if s.key in cached:
                budget.reuse(cached[s.key].cost_usd)
        missing = [s for s in samples if s.key not in cached]
        requests = self._requests(missing)
        self._log_start(samples, cached, requests)
        if not requests:
            return resolved
        outcome = self._send(requests, cache, budget)
        resolved.answers.update(outcome.answers)
        resolved.interrupted = outcome.interrupted
        resolved.budget_stopped = outcome.budget_stopped
        for request in requests:
            if request.keys[0] in outcome.answers:
                usage[request.teacher].requests_sent += 1
        for s in missing:
            answer = outcome.answers.get(s.key)
            if answer is not None:
                usage[s.teacher].cost_usd_sent += answer.cost_usd
        return resolved

    def _log_start(
        self, samples: list[Planned], cached: Mapping[str, Answer], requests: list[Request]
    ) -> None:
        counts: dict[str, list[int]] = {}
        for s in samples:
            entry = counts.setdefault(s.teacher, [0, 0])
            entry[0] += 1
            entry[1] += s.key in cached
        for name, (total, hits) in counts.items():
            sends = sum(1 for r in requests if r.teacher == name)
            log.info(
                "%s: %s samples from '%s': %s answered by the cache, %s request(s) to send",
                self.context.stage_id,
                f"{total:,}",
                name,
                f"{hits:,}",
                f"{sends:,}",
            )

    def apply(self, frame: pl.DataFrame) -> OpResult:
        p = self.params
        parents = self._parents(frame)
        budget = self.context.budget or Budget()
        usage = {
            name: Usage(provider=self.teacher(name).provider, model=self.teacher(name).model)
            for name in p.teachers
        }
        pairs = [(i, name) for i in range(parents.height) for name in p.teachers]
        tries = p.max_tries if p.until else 1
        verifier = self._verifier()
        batches: list[pl.DataFrame] = []
        used: list[tuple[Planned, Answer]] = []
        planned_total = 0
        stopped: _Resolved | None = None
        cache = self._open_cache()
        try:
            for attempt in range(tries):
                if not pairs:
                    break
                samples = self._plan_samples(parents, pairs, attempt)
                planned_total += len(samples)
                resolved = self._resolve(samples, cache, budget, usage)
                answered = [s for s in samples if s.key in resolved.answers]
                used.extend((s, resolved.answers[s.key]) for s in answered)
                for s in answered:
                    u = usage[s.teacher]
                    u.samples += 1
                    u.from_cache += s.key in resolved.cached
                rows = self._rows(parents, answered, resolved.answers)
                if verifier is not None and rows.height:
                    rows = verifier.run(rows).kept
                batches.append(rows)
                if resolved.interrupted or resolved.budget_stopped or len(answered) < len(samples):
                    stopped = resolved
                    break
                if verifier is not None:
                    solved = (
                        set(
                            rows.filter(pl.col("verdict").eq(True))
                            .select("_parent", "_teacher")
                            .iter_rows()
                        )
                        if rows.height
                        else set()
                    )
                    pairs = [pair for pair in pairs if pair not in solved]
        finally:
            if cache is not None:
                cache.close()
        for s, answer in used:
            u = usage[s.teacher]
            u.errors += answer.error is not None
            u.prompt_tokens += answer.billed_prompt_tokens
            u.completion_tokens += answer.billed_completion_tokens
            u.cost_usd += answer.cost_usd
        new_rows = (
            pl.concat(batches, how="diagonal_relaxed") if batches else self._rows(parents, [], {})
        )
        new_rows = new_rows.drop("_parent", "_teacher", strict=False)
        result = OpResult.keep_all(self._merge(frame, new_rows))
        self._extra = {
            "teachers": {name: u.to_json() for name, u in usage.items()},
            "request_errors": sum(u.errors for u in usage.values()),
            "output_token": _output_token(used),
        }
        for name, u in usage.items():
            log.info(
                "%s: '%s' %s samples (%s from the cache, %s requests sent, %s failed), "
                "%s prompt + %s completion tokens, $%.4f (%s sent now)",
                self.context.stage_id,
                name,
                f"{u.samples:,}",
                f"{u.from_cache:,}",
                f"{u.requests_sent:,}",
                f"{u.errors:,}",
                f"{u.prompt_tokens:,}",
                f"{u.completion_tokens:,}",
                u.cost_usd,
                f"${u.cost_usd_sent:.4f}",
            )
        if stopped is not None:
            raise self._incomplete(stopped, budget, len(used), planned_total, result)
        return result

    def _incomplete(
        self, stopped: _Resolved, budget: Budget, done: int, planned: int, result: OpResult
    ) -> StageIncomplete:
        stage = self.context.stage_id
        left = planned - done
        cache = self.context.request_cache
        where = f" in {cache}" if cache is not None else ""
        if stopped.budget_stopped:
            message = (
                f"budget reached: the traces of this build cost ${budget.total_usd:.4f} "
                f"(${budget.reused_usd:.4f} of it in cached answers), budget_usd is "
                f"${budget.limit_usd:g}. Step {stage} stopped sending with {done:,} of "
                f"{planned:,} samples answered and cached{where}; the stage is written marked "
                f"incomplete. Raise budget_usd and build again to resume: only the {left:,} "
                "samples left are sent."
            )
            code = BUDGET_EXIT
        else:
            message = (
                f"interrupted: step {stage} has {done:,} of {planned:,} samples answered and "
                f"cached{where}; the stage is written marked incomplete (`curate sql` reads "
                f"it). Build again to resume: only the {left:,} samples left are sent."
            )
            code = INTERRUPT_EXIT
        extra = dict(self._extra)
        extra["samples_left"] = left
        return StageIncomplete(message, result=result, record=extra, exit_code=code)

    def _verifier(self) -> Any:
        if self.params.until is None or self.params.verify is None:
            return None
        from curate.verify import Verify

        return Verify(self.params.verify, context=self.context)

    # --- rows -----------------------------------------------------------------------------

    def _rows(
        self, parents: pl.DataFrame, samples: list[Planned], answers: Mapping[str, Answer]
    ) -> pl.DataFrame:
        """One row per sample: the parent's problem columns, then the trace columns."""
        p = self.params
        mode = p.input
        inherit = [
            c
            for c in parents.columns
            if c in INHERITED or (POOL_SCHEMA.get_field_index(c) < 0 and c != PLANNED_TOKENS)
        ]
        indices = [s.parent for s in samples]
        base = parents.select(inherit)[indices] if samples else parents.select(inherit).clear()
        if mode == "problem":
            parent_keys = base.get_column("problem_id").to_list()
            parent_traces: list[str | None] = [None] * len(samples)
            rounds = [p.round or 0] * len(samples)
        else:
            trace_ids = parents.get_column("trace_id").to_list()
            parent_traces = [trace_ids[i] for i in indices]
            parent_keys = [t or "" for t in parent_traces]
            if "round" in parents.columns:
                parent_rounds = parents.get_column("round").to_list()
                rounds = [int(parent_rounds[i] or 0) for i in indices]
            else:
                rounds = [0] * len(samples)
        cols: dict[str, list[Any]] = {name: [] for name in _TRACE_OUT}
        for k, s in enumerate(samples):
            teacher = self.teacher(s.teacher)
            answer = answers.get(s.key)
            cols["trace_id"].append(
                "t-" + ids.short_hash(parent_keys[k], s.teacher, self.role, rounds[k], s.index)
            )
            cols["sample_index"].append(s.index)
            cols["round"].append(rounds[k])
            cols["role"].append(self.role)
            cols["model"].append(teacher.model)
            cols["provider"].append(teacher.provider)
            cols["template_id"].append(s.template_id)
            cols["temperature"].append(s.temperature)
            cols["top_p"].append(p.top_p)
            cols["max_tokens"].append(p.max_tokens)
            cols["parent_trace_id"].append(parent_traces[k])
            cols["system_prompt"].append(s.system)
            cols["_parent"].append(s.parent)
            cols["_teacher"].append(s.teacher)
            if answer is None:
                cols["seed"].append(s.seed)
                for name in _ANSWER_COLUMNS:
                    cols[name].append(None)
                continue
            cols["seed"].append(answer.seed if answer.seed is not None else s.seed)
            cols["completion"].append(answer.completion)
            cols["reasoning"].append(answer.reasoning)
            cols["finish_reason"].append(answer.finish_reason)
            cols["usage_prompt_tokens"].append(answer.prompt_tokens)
            cols["usage_completion_tokens"].append(answer.completion_tokens)
            cols["cost_usd"].append(answer.cost_usd)
            cols["error"].append(self._error(answer))
        trace = pl.DataFrame(cols, schema=_TRACE_SCHEMA)
        if "system_prompt" in base.columns:
            trace = trace.with_columns(
                pl.coalesce(pl.col("system_prompt"), base.get_column("system_prompt"))
            )
            base = base.drop("system_prompt")
        return pl.concat([base, trace], how="horizontal")

    def _error(self, answer: Answer) -> str | None:
        """The row's `error`: the request's, or a finish reason the policy marks."""
        if answer.error is not None:
            return answer.error
        reason = answer.finish_reason
        policy = {"length": self.params.on_length, "content_filter": self.params.on_content_filter}
        if reason in policy and policy[reason] != "keep":
            tries = f" after {answer.tries} tries" if answer.tries > 1 else ""
            detail = f" (cut at max_tokens {answer.max_tokens})" if reason == "length" else ""
            return f"finish_reason {reason}{detail}{tries}"
        return None

    def _merge(self, frame: pl.DataFrame, new_rows: pl.DataFrame) -> pl.DataFrame:
        """The input's trace rows, then the new rows. Problem rows without a trace (input:
        problem) are replaced by their samples."""
        if self.params.input == "problem":
            if "trace_id" in frame.columns:
                kept = frame.filter(pl.col("trace_id").is_not_null())
            else:
                kept = frame.clear()
        else:
            kept = frame
        if kept.height == 0:
            return new_rows
        return pl.concat([kept, new_rows], how="diagonal_relaxed")


BUDGET_EXIT = 9  # errors.BuildStopped's code

_ANSWER_COLUMNS = (
    "completion",
    "reasoning",
    "finish_reason",
    "usage_prompt_tokens",
    "usage_completion_tokens",
    "cost_usd",
    "error",
)
_TRACE_SCHEMA: dict[str, Any] = {
    "system_prompt": pl.String,
    "trace_id": pl.String,
    "sample_index": pl.Int64,
    "round": pl.Int64,
    "role": pl.String,
    "model": pl.String,
    "provider": pl.String,
    "template_id": pl.String,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "max_tokens": pl.Int64,
    "seed": pl.Int64,
    "parent_trace_id": pl.String,
    "completion": pl.String,
    "reasoning": pl.String,
    "finish_reason": pl.String,
    "usage_prompt_tokens": pl.Int64,
    "usage_completion_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "error": pl.String,
    "_parent": pl.Int64,  # dropped before output; used by until: verified
    "_teacher": pl.String,  # the teacher's name (idem)
}
_TRACE_OUT = tuple(_TRACE_SCHEMA)


def _extra_json(teacher: OpenAITeacher | VLLMTeacher) -> str:
    import json

    if isinstance(teacher, OpenAITeacher):
        return json.dumps(teacher.extra_body, sort_keys=True, separators=(",", ":"))
    return ""


def _output_token(used: list[tuple[Planned, Answer]]) -> str:
    """Changes when the answers used change: a fresh answer has a new `created` stamp; a
    request that failed again the same way keeps its token."""
    digest = hashlib.sha256()
    for s, answer in used:
        stamp = f"error:{answer.error}" if answer.error is not None else repr(answer.created)
        digest.update(f"{s.key}\x00{stamp}\n".encode())
    return digest.hexdigest()[:24]
