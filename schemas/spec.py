"""The spec model: what one `spec.yaml` may say. Steps are validated against each operator's own
params model (see curate.spec); here they are kept as `{operator: params}` mappings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    run_dir: str | None = Field(None, description="default: runs/<name> beside the spec")
    workers: int | None = Field(None, ge=1, description="processes for CPU-bound steps")
    input: InputSpec = Field(description="the problems, or traces made elsewhere")
    steps: list[dict[str, Any]] = Field(
        default_factory=list, description="operators in order, each `- name: {params}`"
    )
    outputs: OutputsSpec = Field(
        default=OutputsSpec(), description="training sets to write: sft, preference"
    )

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
    schema["properties"]["steps"]["items"] = {"oneOf": variants}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/curate/curate/schemas/spec.schema.json"
    return schema
