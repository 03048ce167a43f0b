"""Load and validate a spec file. Every error names the YAML line and column, the field, what was
expected, and for an unknown key or operator the closest valid name. Validation is the same code
path a build uses, so `curate validate` can never disagree with `curate build`."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from curate.errors import SpecError
from curate.operators import Operator, Params, params_json
from curate.registry import closest_name, get_operator, operator_names
from curate.schemas.spec import Spec

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Step:
    """One resolved step: its stage id (e.g. '03-prune'), operator class and validated params."""

    index: int
    stage_id: str
    operator: type[Operator]
    params: Params

    @property
    def name(self) -> str:
        return self.operator.name


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with its steps resolved to operators and its paths resolved."""

    spec: Spec
    steps: tuple[Step, ...]
    path: Path
    text: str
    spec_hash: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate).resolve()

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.spec.run_dir or f"runs/{self.spec.name}")

    def step_named(self, name: str) -> Step:
        """A step by stage id ('03-select') or by operator name when that name is unique."""
        for step in self.steps:
            if name == step.stage_id:
                return step
        matches = [s for s in self.steps if s.name == name]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(name)


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true/false (any case) are booleans.
    YAML 1.1 also reads on/off/yes/no as booleans, which would turn the `on:` key of dedup,
    decontaminate and quality into `True`, and `answer: no` into false."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _Positions:
    """Maps a validation location (keys and list indexes) to a line and column in the YAML."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def find(self, loc: Loc) -> tuple[int, int]:
        node = self.root
        mark = node.start_mark if node is not None else None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(
                    (
                        (k, v)
                        for k, v in node.value
                        if isinstance(k, yaml.ScalarNode) and k.value == str(part)
                    ),
                    None,
                )
                if match is None:
                    break
                key, node = match
                mark = (
                    key.start_mark
                    if isinstance(node, yaml.MappingNode | yaml.SequenceNode)
                    else node.start_mark
                )
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                mark = node.start_mark
            else:
                break
        if mark is None:
            return (1, 1)
        return (mark.line + 1, mark.column + 1)

    def key_mark(self, loc: Loc) -> tuple[int, int]:
        """Position of the key itself (for unknown keys), not of its value."""
        parent = self.root
        for part in loc[:-1]:
            if isinstance(parent, yaml.MappingNode):
                parent = next(
                    (
                        v
                        for k, v in parent.value
                        if isinstance(k, yaml.ScalarNode) and k.value == str(part)
                    ),
                    None,
                )
            elif isinstance(parent, yaml.SequenceNode) and isinstance(part, int):
                parent = parent.value[part] if part < len(parent.value) else None
            else:
                parent = None
        if isinstance(parent, yaml.MappingNode):
            for key, _ in parent.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(loc[-1]):
                    return (key.start_mark.line + 1, key.start_mark.column + 1)
        return self.find(loc)


def _field_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc`, for 'did you mean' suggestions."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            field = next((f for f in current.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if args:
        for arg in args:
            found = _unwrap_model(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
    return annotation


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _describe(
    error: dict[str, Any],
    loc: Loc,
    where: _Positions,
    file: str,
    *,
    model: type[BaseModel],
    model_loc: Loc,
) -> str:
    """One line for one validation error. `model_loc` is `loc` relative to `model`, the model
    that was validated, so unknown keys can be matched against the keys that model allows."""
    kind = error["type"]
    field = _field_path(loc)
    if kind == "extra_forbidden":
        line, col = where.key_mark(loc)
        owner = _model_at(model, model_loc)
        names = _field_names(owner) if owner else []
        hint = closest_name(str(loc[-1]), names)
        suffix = f" (did you mean '{hint}'?)" if hint else f"; valid keys: {', '.join(names)}"
        return f"{file}:{line}:{col}: {field}: unknown key{suffix}"
    line, col = where.find(loc)
    if kind == "missing":
        owner_path = _field_path(loc[:-1])
        return f"{file}:{line}:{col}: {owner_path}: missing required field '{loc[-1]}'"
    got = error.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    message = str(error["msg"]).replace("Value error, ", "")
    return f"{file}:{line}:{col}: {field}: {message} (got {shown})"


def _validation_problems(
    exc: ValidationError, prefix: Loc, model: type[BaseModel], where: _Positions, file: str
) -> list[str]:
    return [
        _describe(
            dict(e), prefix + tuple(e["loc"]), where, file, model=model, model_loc=tuple(e["loc"])
        )
        for e in exc.errors()
    ]


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, parse and validate a spec file; raise SpecError listing every problem found."""
    spec_path = Path(path).expanduser().resolve()
    file = str(path)
    try:
        raw_bytes = spec_path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{file}: spec file not found (looked at {spec_path})") from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw_bytes[: exc.start].count(b"\n") + 1
        raise SpecError(f"{file}:{line}: not UTF-8 text (byte {exc.start})") from None
    try:
        root = yaml.compose(text, Loader=SpecLoader)
        data = yaml.load(text, Loader=SpecLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise SpecError(f"{at}: YAML syntax error: {exc.problem or exc}") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{file}:1:1: expected a mapping at the top of the spec, got {type(data).__name__}"
        )
    where = _Positions(root)
    problems: list[str] = []
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, (), Spec, where, file))
        spec = None
    steps = _validate_steps(data.get("steps"), where, file, problems)
    if spec is not None and not problems:
        problems.extend(_check_output_refs(spec, steps, where, file))
        problems.extend(_check_teacher_refs(spec, steps, where, file))
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
        raise SpecError(
            f"{file}: invalid spec ({count})\n" + "\n".join(problems), problems=problems
        )
    assert spec is not None
    canonical = json.dumps(
        {
            "spec": spec.model_dump(mode="json", by_alias=True, exclude={"steps"}),
            "steps": [{s.name: params_json(s.params)} for s in steps],
        },
        sort_keys=True,
    )
    spec_hash = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return LoadedSpec(spec=spec, steps=tuple(steps), path=spec_path, text=text, spec_hash=spec_hash)


def _validate_steps(
    raw_steps: Any, where: _Positions, file: str, problems: list[str]
) -> list[Step]:
    if not isinstance(raw_steps, list):
        return []
    steps: list[Step] = []
    for index, item in enumerate(raw_steps):
        if not isinstance(item, dict) or len(item) != 1:
            continue  # the Spec model already reported the shape
        ((name, raw_params),) = item.items()
        loc: Loc = ("steps", index, str(name))
        try:
            op = get_operator(str(name))
        except KeyError:
            line, col = where.key_mark(loc)
            hint = closest_name(str(name), operator_names())
            suffix = f" (did you mean '{hint}'?)" if hint else ""
            problems.append(
                f"{file}:{line}:{col}: steps[{index}]: unknown operator '{name}'{suffix}; "
                f"operators: {', '.join(operator_names())}"
            )
            continue
        params_data = {} if raw_params is None else raw_params
        if not isinstance(params_data, dict):
            line, col = where.find(loc)
            problems.append(
                f"{file}:{line}:{col}: steps[{index}].{name}: expected a mapping "
                f"of parameters, got {type(params_data).__name__}"
            )
            continue
        try:
            params = op.params_model.model_validate(params_data)
        except ValidationError as exc:
            problems.extend(_validation_problems(exc, loc, op.params_model, where, file))
            continue
        stage_id = f"{index + 1:02d}-{op.name}"
        steps.append(Step(index=index, stage_id=stage_id, operator=op, params=params))
    return steps


def _check_output_refs(spec: Spec, steps: list[Step], where: _Positions, file: str) -> list[str]:
    problems = []
    stage_names = [s.stage_id for s in steps] + [s.name for s in steps]
    for kind in ("sft", "preference"):
        output = getattr(spec.outputs, kind)
        if output is None or output.from_stage is None:
            continue
        ref = output.from_stage
        matches = [s for s in steps if ref in (s.stage_id, s.name)]
        if len(matches) != 1:
            line, col = where.find(("outputs", kind, "from"))
            why = "names no step" if not matches else "names several steps; use the stage id"
            hint = closest_name(ref, stage_names)
            suffix = f" (did you mean '{hint}'?)" if hint and not matches else ""
            ids = ", ".join(s.stage_id for s in steps)
            problems.append(
                f"{file}:{line}:{col}: outputs.{kind}.from: '{ref}' {why}{suffix}; stages: {ids}"
            )
    return problems


def _check_teacher_refs(spec: Spec, steps: list[Step], where: _Positions, file: str) -> list[str]:
    """Every teacher a step names (sample's `teachers:`) is declared under `teachers:`."""
    problems = []
    declared = sorted(spec.teachers)
    for step in steps:
        names = getattr(step.params, "teachers", None)
        if not isinstance(names, list):
            continue
        for position, name in enumerate(names):
            if name in spec.teachers:
                continue
            line, col = where.find(("steps", step.index, step.name, "teachers", position))
            hint = closest_name(name, declared)
            suffix = f" (did you mean '{hint}'?)" if hint else ""
            known = ", ".join(declared) or "none; add a `teachers:` mapping at the top"
            problems.append(
                f"{file}:{line}:{col}: steps[{step.index}].{step.name}.teachers: teacher "
                f"'{name}' is not declared{suffix}; declared teachers: {known}"
            )
    return problems
