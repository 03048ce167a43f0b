"""The spec model: what one `spec.yaml` may say. Steps are validated against each operator's own
params model (see curate.spec); here they are kept as `{operator: params}` mappings."""

from __future__ import annotations

import importlib.util
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

BadRows = Literal["fail", "skip"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnMap(Strict):
    """Which source column holds each pool field. Only `prompt` is required.

    For trace pools made elsewhere, map `completion`: a string column gives one row per trace;
    a list column gives one row per problem with its generations, and `label`, `reasoning`,
    `finish_reason` and `model` may then be list columns of the same length."""

    prompt: str = Field(description="column with the problem text")
    id: str | None = Field(None, description="column with a stable problem id (default: hash)")
    answer: str | None = Field(None, description="column with the reference answer")
    domain: str | None = Field(None, description="column with a domain label (math, code, …)")
    system_prompt: str | None = Field(None, description="column with a system prompt")
    meta: list[str] = Field(default_factory=list, description="columns kept in problem_meta JSON")
    completion: str | None = Field(None, description="trace text (string, or list per problem)")
    reasoning: str | None = Field(None, description="separate think part, when there is one")
    label: str | None = Field(None, description="correctness flag shipped with the traces")
    model: str | None = Field(None, description="column naming the model of each trace")
    finish_reason: str | None = Field(None, description="column with each trace's finish reason")
    trace_id: str | None = Field(None, description="column with a trace id (default: hash)")


class InputSpec(Strict):
    """A problem file (JSONL, Parquet or CSV) or a pool of traces made elsewhere."""

    path: str = Field(description="file path, relative to the spec file")
    format: Literal["jsonl", "parquet", "csv"] | None = Field(
        None, description="default: from the file extension"
    )
    columns: ColumnMap = Field(description="which source column holds each pool field")
    source: str | None = Field(None, description="name recorded in `source` (default: file stem)")
    model: str | None = Field(None, description="model that wrote imported traces, if no column")
    on_bad_rows: BadRows = Field(
        "fail", description="fail: stop at the first bad row; skip: write it to rejects and go on"
    )
    limit: int | None = Field(None, ge=1, description="read only the first N rows")


class SFTOutput(Strict):
    """Chat-format SFT set: `messages` plus ids, difficulty, pass rate and token counts."""

    path: str = Field(description="folder the Parquet shards, manifest and spec go to")
    from_stage: str | None = Field(
        None, alias="from", description="stage whose pool to export (default: the last)"
    )
    only_correct: bool = Field(True, description="export only traces whose verdict is true")
    reasoning: Literal["think_tags", "omit"] = Field(
        "think_tags", description="how a separate reasoning part enters the assistant message"
    )
    shard_rows: int = Field(100_000, ge=1, description="rows per Parquet shard")


class PreferenceOutput(Strict):
    """Preference pairs: by REDI's rule (first correct trace vs first incorrect, per problem), or
    the pairs a `pair` step made."""

    path: str = Field(description="folder the Parquet shards, manifest and spec go to")
    from_stage: str | None = Field(
        None, alias="from", description="stage whose pool to pair (default: the last)"
    )
    pairs: Literal["first_correct", "pair_step"] = Field(
        "first_correct",
        description=(
            "first_correct: REDI's rule, made here; pair_step: the pairs a `pair` step marked "
            "(its `beats` column) in the `from` stage, which must still hold both sides"
        ),
    )
    chosen: Literal["correct"] = Field("correct", description="the chosen side of a pair")
    rejected: Literal["incorrect"] = Field("incorrect", description="the rejected side")
    max_prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="REDI uses 800; first_correct: drops the problem; pair_step: drops the pairs",
    )
    max_response_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "REDI uses 19000; first_correct: a longer trace is no candidate; pair_step: drops "
            "the pairs with a longer side"
        ),
    )
    tokenizer: str = Field("approximate", description="'approximate' or a path to a tokenizer.json")
    reasoning: Literal["think_tags", "omit"] = Field(
        "think_tags", description="how a separate reasoning part enters the responses"
    )
    shard_rows: int = Field(100_000, ge=1, description="rows per Parquet shard")


class OutputsSpec(Strict):
    sft: SFTOutput | None = Field(None, description="write an SFT set")
    preference: PreferenceOutput | None = Field(None, description="write preference pairs")


# What a secret looks like, so that a key pasted into the spec is refused rather than copied into
# the run directory, the manifest and a dataset card. The message never repeats the value.
_KEY_PREFIXES = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|(?:hf|gsk|ghp|gho|github_pat|r8|xai|tgp)_"
    r"[A-Za-z0-9_]{16,}|xai-[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_-]{30,}|Bearer\s+\S{8,}"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEYS = re.compile(r"api[_-]?key|authorization|secret|password|token$", re.IGNORECASE)


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    """(path, text) of every string in a nested value, keys included."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        found: list[tuple[str, str]] = []
        for key, item in value.items():
            found.append((f"{path}.{key}", str(key)))
            found.extend(_strings(item, f"{path}.{key}"))
        return found
    if isinstance(value, list | tuple):
        return [pair for i, item in enumerate(value) for pair in _strings(item, f"{path}[{i}]")]
    return []


def _refuse_secrets(data: Any) -> Any:
    """A teacher's fields must not hold a credential: keys live in the environment, named by
    `api_key_env`. Runs on the raw mapping so that the error shows no value."""
    if not isinstance(data, dict):
        return data
    for path, text in _strings(data, "teacher"):
        if _KEY_PREFIXES.search(text):
            raise ValueError(
                f"{path.removeprefix('teacher.')} looks like an API key; never put a key in "
                "the spec: set it in an environment variable and name that variable in "
                "`api_key_env`"
            )
    env = data.get("api_key_env")
    if isinstance(env, str) and not _ENV_NAME.match(env):
        raise ValueError(
            "api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY), "
            "not the key itself"
        )
    for key in data.get("extra_body") or {}:
        if _SECRET_KEYS.search(str(key)):
            raise ValueError(
                f"extra_body.{key}: credentials do not go in the request body of the spec; "
                "set the key in an environment variable named by `api_key_env`"
            )
    base_url = data.get("base_url")
    if isinstance(base_url, str) and re.match(r"^[a-z]+://[^/@]+@", base_url):
        raise ValueError("base_url holds credentials (user:password@); use `api_key_env`")
    return data


def _price(tokens: str) -> Any:
    return Field(
        0.0, ge=0.0, description=f"price of a million {tokens} tokens, US dollars (for cost)"
    )


class OpenAITeacher(Strict):
    """Any OpenAI-compatible chat-completions endpoint: OpenAI, vLLM or SGLang servers,
    DeepSeek, Together, Ollama, llama.cpp server."""

    provider: Literal["openai"] = Field(description="openai: an HTTP chat-completions endpoint")
    model: str = Field(min_length=1, description="model name sent in each request")
    base_url: str | None = Field(
        None, description="endpoint, e.g. http://localhost:8000/v1 (default: api.openai.com)"
    )
    api_key_env: str | None = Field(
        None,
        description="NAME of the environment variable holding the API key (never the key); "
        "none: the endpoint needs no key",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="extra request fields, e.g. {chat_template_kwargs: {enable_thinking: true}}",
    )
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens",
        description="request field for the token limit (OpenAI o-series: max_completion_tokens)",
    )
    max_concurrency: int = Field(64, ge=1, le=1000, description="requests in flight at most")
    rpm: int | None = Field(None, ge=1, description="requests per minute at most")
    tpm: int | None = Field(
        None, ge=1, description="tokens per minute at most (prompt estimate + max_tokens)"
    )
    timeout_s: float = Field(600.0, gt=0, description="seconds one request may take")
    max_retries: int = Field(
        6, ge=0, le=50, description="retries on 429, 5xx, timeouts and dropped connections"
    )
    backoff_s: float = Field(
        1.0, ge=0.0, description="first retry delay bound; doubles per retry (full jitter)"
    )
    supports_n: bool = Field(
        False, description="the server takes `n`: one request returns several samples"
    )
    input_usd_per_mtok: float = _price("prompt")
    output_usd_per_mtok: float = _price("completion")

    _no_secrets = model_validator(mode="before")(_refuse_secrets)


class VLLMTeacher(Strict):
    """A model run in this process by vLLM (`pip install 'curate[vllm]'`), for GPU batch
    generation; results are cached chunk by chunk, so a crash loses at most one chunk."""

    provider: Literal["vllm"] = Field(description="vllm: vllm.LLM in this process")
    model: str = Field(min_length=1, description="model path or Hub id, as vllm.LLM takes it")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs to shard the model over")
    max_model_len: int | None = Field(None, ge=1, description="context length (default: model)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU memory")
    dtype: str = Field("auto", description="weights dtype: auto, bfloat16, float16, …")
    chunk_size: int = Field(
        512, ge=1, description="requests per generate call; each chunk is cached when done"
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="more keyword arguments for vllm.LLM"
    )
    input_usd_per_mtok: float = _price("prompt")
    output_usd_per_mtok: float = _price("completion")

    _no_secrets = model_validator(mode="before")(_refuse_secrets)

    @model_validator(mode="after")
    def _vllm_installed(self) -> VLLMTeacher:
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "provider vllm needs the package 'vllm', which is not installed. "
                "Install it with: pip install 'curate[vllm]'"
            )
        return self


Teacher = Annotated[OpenAITeacher | VLLMTeacher, Field(discriminator="provider")]

ROUNDS = "rounds"  # the steps entry that repeats a block of steps (see RoundsSpec)


class RoundsSpec(Strict):
    """`- rounds: {count, steps}`: the body steps repeated `count` times, as ordinary stages
    whose ids say the round (`03-r1-sample`, `04-r1-verify`, …, `08-r2-sample`). Each `sample`
    in the body gets `round: r`: its rows carry round r, and its `input: trace` / `failures`
    read only rows of round r. The body is the same in every round but for `teachers`, which
    can swap a teacher per round (Tailored Learning: the student retrained between rounds)."""

    count: int = Field(ge=1, le=100, description="how many rounds")
    steps: list[dict[str, Any]] = Field(
        min_length=1, description="the body: operators in order, each `- name: {params}`"
    )
    teachers: dict[str, list[str]] = Field(
        default_factory=dict,
        description="a teacher per round: {name used in the body: [teacher of round 1, of "
        "round 2, …]}, one entry per round, each declared under `teachers:` at the top",
    )

    @field_validator("steps")
    @classmethod
    def _shape(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, step in enumerate(steps):
            if len(step) != 1:
                raise ValueError(
                    f"steps[{index}] must be a mapping with exactly one operator name, "
                    f"got keys {sorted(step)}"
                )
        return steps

    @field_validator("teachers")
    @classmethod
    def _one_per_round(
        cls, teachers: dict[str, list[str]], info: ValidationInfo
    ) -> dict[str, list[str]]:
        count = info.data.get("count")
        for name, names in teachers.items():
            if count is not None and len(names) != count:
                raise ValueError(f"{name}: give one teacher per round ({count}), got {len(names)}")
        return teachers


class ExecutorSpec(Strict):
    """Where the steps run: `local` (this process) or `ray` (a Ray cluster, `pip install
    'curate[ray]'`). `curate build --executor`, `--address`, `--num-cpus`, `--memory-per-task`,
    `--batch-rows` and `--sample-actors` override these."""

    kind: Literal["local", "ray"] = Field("local", description="local or ray")
    address: str | None = Field(
        None,
        description="ray: the cluster to join ('auto' on a cluster node, 'ray://host:10001'); "
        "none: start a local Ray",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="ray: CPUs of a local Ray started by the build (default: all)"
    )
    memory_per_task: int | None = Field(
        None, ge=1, description="ray: bytes of memory each task reserves (default: none)"
    )
    batch_rows: int = Field(20_000, ge=1, description="rows per task of a batch-scope step")
    sample_actors: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="ray: actors a `sample` step spreads its HTTP requests over, sharing each "
        "teacher's rpm, tpm and max_concurrency (default: the cluster's CPUs, at most 8); "
        "vllm teachers get one actor per tensor_parallel_size GPUs",
    )

    @model_validator(mode="after")
    def _ray_only(self) -> ExecutorSpec:
        if self.kind == "local":
            ray_only = ("address", "num_cpus", "memory_per_task", "sample_actors")
            given = [k for k in ray_only if k in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to kind: ray")
        return self


class Spec(Strict):
    """One build: where problems come from, the steps, and what to write."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="names the run")
    seed: int = Field(0, description="seed for every random choice a step makes")
    license: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9.+-]*$",
        description="licence of the data, as a Hub licence id (mit, apache-2.0, cc-by-4.0, "
        "other, …); `curate publish` requires it",
    )
    run_dir: str | None = Field(
        None,
        description="where stages, dropped rows and the manifest go: a path (default: "
        "runs/<name> beside the spec) or a filesystem URI every worker can reach (s3://, "
        "gs://, az://, ... with its fsspec package installed, e.g. the `remote` extra for s3)",
    )
    workers: int | None = Field(None, ge=1, description="processes for CPU-bound steps")
    input: InputSpec = Field(description="the problems, or traces made elsewhere")
    steps: list[dict[str, Any]] = Field(
        default_factory=list,
        description="operators in order, each `- name: {params}`; `- rounds: {count, steps}` "
        "repeats a block of them",
    )
    outputs: OutputsSpec = Field(
        default=OutputsSpec(), description="training sets to write: sft, preference"
    )
    teachers: dict[str, Teacher] = Field(
        default_factory=dict, description="models that `sample` steps call, by name"
    )
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="stop sending requests once the traces of this build cost this much "
        "(cached answers count at what they cost); a re-run with more resumes",
    )
    executor: ExecutorSpec = Field(
        default=ExecutorSpec(), description="where the steps run: local or a Ray cluster"
    )
    request_cache: str | None = Field(
        None,
        description="SQLite file of teacher answers (default: <run_dir>/requests.sqlite; "
        ".curate/<name>/requests.sqlite beside the spec when run_dir is a URI)",
    )

    @field_validator("run_dir")
    @classmethod
    def _file_uri(cls, value: str | None) -> str | None:
        """`file://` URIs are paths; other URIs name an fsspec filesystem (curate.storage).
        A password in the URI would reach the manifest and the logs, so it is refused."""
        if value is not None and re.match(r"^file://", value, re.IGNORECASE):
            return value[len("file://") :]
        if value is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/@]*@", value):
            raise ValueError(
                "the URI holds a password; give credentials through the filesystem's own "
                "configuration (environment variables, fsspec config files), not the spec"
            )
        return value

    @field_validator("request_cache")
    @classmethod
    def _local_path(cls, value: str | None) -> str | None:
        """The request cache is SQLite, which needs a local disk; a URI would silently become
        a local folder named after it ('s3:/bucket/...'), so it is refused. `file://` URIs
        are paths."""
        if value is None:
            return None
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
        if scheme is None:
            return value
        if scheme.group(1).lower() == "file":
            return value[len("file://") :]
        raise ValueError(
            f"object-store and other URIs ({scheme.group(1)}://) are not supported: the "
            "request cache is a SQLite file and needs a local (or NFS) path"
        )

    @model_validator(mode="after")
    def _teacher_names(self) -> Spec:
        for name in self.teachers:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
                raise ValueError(
                    f"teacher name {name!r}: use letters, digits, '.', '_' and '-' only"
                )
        return self

    @model_validator(mode="after")
    def _step_shape(self) -> Spec:
        for index, step in enumerate(self.steps):
            if len(step) != 1:
                raise ValueError(
                    f"steps[{index}] must be a mapping with exactly one operator name, "
                    f"got keys {sorted(step)}"
                )
        return self


def spec_json_schema() -> dict[str, Any]:
    """JSON Schema of a spec file, each step validated by its operator's params model."""
    from curate.registry import get_operator, operator_names

    schema = Spec.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    variants = []
    for name in operator_names():
        params_model = get_operator(name).params_model
        params_schema = params_model.model_json_schema(
            by_alias=True, ref_template="#/$defs/{model}"
        )
        defs.update(params_schema.pop("$defs", {}))
        title = f"{name}_params"
        defs[title] = params_schema
        variants.append(
            {
                "type": "object",
                "properties": {name: {"anyOf": [{"$ref": f"#/$defs/{title}"}, {"type": "null"}]}},
                "required": [name],
                "additionalProperties": False,
            }
        )
    rounds = RoundsSpec.model_json_schema(by_alias=True)
    rounds["properties"]["steps"]["items"] = {"oneOf": list(variants)}
    defs["rounds_block"] = rounds
    variants.append(
        {
            "type": "object",
            "properties": {ROUNDS: {"$ref": "#/$defs/rounds_block"}},
            "required": [ROUNDS],
            "additionalProperties": False,
        }
    )
    schema["properties"]["steps"]["items"] = {"oneOf": variants}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/curate/curate/schemas/spec.schema.json"
    return schema
