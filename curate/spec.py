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
from curate.schemas.spec import ROUNDS, RoundsSpec, Spec
from curate.storage import AnyPath, is_uri, local_state_dir, run_path

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Step:
    """One resolved step: its stage id (e.g. '03-prune', or '04-r2-verify' in a rounds block),
    operator class and validated params. `index` counts stages from 0 after the input; `loc` is
    where the step is in the YAML (a rounds body step has one `loc` for all its rounds)."""

    index: int
    stage_id: str
    operator: type[Operator]
    params: Params
    loc: Loc = ()
    round: int | None = None  # the round of a step expanded from a `rounds:` block

    @property
    def name(self) -> str:
        return self.operator.name

    @property
    def yaml_loc(self) -> Loc:
        """The YAML location of the step's operator key, e.g. ('steps', 2, 'sample')."""
        return (*(self.loc or ("steps", self.index)), self.name)


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
    def run_dir(self) -> AnyPath:
        """A local folder, resolved beside the spec, or a filesystem URI (curate.storage)."""
        named = self.spec.run_dir or f"runs/{self.spec.name}"
        return run_path(named) if is_uri(named) else self.resolve(named)

    @property
    def local_dir(self) -> Path:
        """The run's local folder (request cache, vector caches, lock): the run directory
        itself, or `.curate/<name>/` beside the spec when the run directory is remote."""
        root = self.run_dir
        if isinstance(root, Path):
            return root
        return local_state_dir(self.base_dir, self.spec.name)

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
    if "password" in message:  # a value holding a secret is not shown back
        return f"{file}:{line}:{col}: {field}: {message}"
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
    declared = data.get("teachers")
    teacher_names = set(map(str, declared)) if isinstance(declared, dict) else None
    steps = _validate_steps(data.get("steps"), where, file, problems, teacher_names)
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


@dataclass(frozen=True)
class _Slot:
    """A step before numbering: None params when it did not validate."""

    loc: Loc
    operator: type[Operator] | None
    params: Params | None
    round: int | None = None


def _validate_steps(
    raw_steps: Any,
    where: _Positions,
    file: str,
    problems: list[str],
    teacher_names: set[str] | None = None,
) -> list[Step]:
    """The steps, each validated by its operator's params model; a `rounds:` block is expanded
    into its body steps once per round. Stage ids number every stage in order (a step that did
    not validate keeps its number, so later ids do not shift while the spec is being fixed)."""
    if not isinstance(raw_steps, list):
        return []
    slots: list[_Slot] = []
    for index, item in enumerate(raw_steps):
        if not isinstance(item, dict) or len(item) != 1:
            continue  # the Spec model already reported the shape
        ((name, raw_params),) = item.items()
        loc: Loc = ("steps", index)
        if name == ROUNDS:
            slots.extend(_expand_rounds(raw_params, loc, where, file, problems, teacher_names))
            continue
        op, params = _resolve_step(str(name), raw_params, loc, where, file, problems)
        slots.append(_Slot(loc=loc, operator=op, params=params))
    steps: list[Step] = []
    for number, slot in enumerate(slots):
        if slot.operator is None or slot.params is None:
            continue
        tag = f"r{slot.round}-" if slot.round is not None else ""
        steps.append(
            Step(
                index=number,
                stage_id=f"{number + 1:02d}-{tag}{slot.operator.name}",
                operator=slot.operator,
                params=slot.params,
                loc=slot.loc,
                round=slot.round,
            )
        )
    return steps


def _resolve_step(
    name: str,
    raw_params: Any,
    loc: Loc,
    where: _Positions,
    file: str,
    problems: list[str],
) -> tuple[type[Operator] | None, Params | None]:
    """The operator named `name` and its validated params (None, None and a problem noted when
    either is wrong). `loc` is the step's place in the YAML, e.g. ('steps', 3)."""
    key_loc: Loc = (*loc, name)
    try:
        op = get_operator(name)
    except KeyError:
        line, col = where.key_mark(key_loc)
        hint = closest_name(name, operator_names())
        suffix = f" (did you mean '{hint}'?)" if hint else ""
        nested = "; rounds blocks do not nest" if name == ROUNDS else ""
        problems.append(
            f"{file}:{line}:{col}: {_field_path(loc)}: unknown operator '{name}'{suffix}"
            f"{nested}; operators: {', '.join(operator_names())}"
        )
        return None, None
    params_data = {} if raw_params is None else raw_params
    if not isinstance(params_data, dict):
        line, col = where.find(key_loc)
        problems.append(
            f"{file}:{line}:{col}: {_field_path(key_loc)}: expected a mapping "
            f"of parameters, got {type(params_data).__name__}"
        )
        return op, None
    try:
        params = op.params_model.model_validate(params_data)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, key_loc, op.params_model, where, file))
        return op, None
    return op, params


def _expand_rounds(
    raw: Any,
    loc: Loc,
    where: _Positions,
    file: str,
    problems: list[str],
    teacher_names: set[str] | None,
) -> list[_Slot]:
    """A `rounds: {count, steps, teachers}` block as `count` copies of its body, round by round.

    Each body step is validated once (so an error is reported once, at its line). In round r a
    step whose params model has a `round` field (sample) gets `round: r`, and the teacher names
    of a `teachers` list are swapped by the block's `teachers` mapping."""
    block_loc: Loc = (*loc, ROUNDS)
    if not isinstance(raw, dict):
        line, col = where.find(block_loc)
        problems.append(
            f"{file}:{line}:{col}: {_field_path(block_loc)}: expected a mapping "
            f"{{count, steps}}, got {type(raw).__name__}"
        )
        return []
    try:
        block = RoundsSpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, block_loc, RoundsSpec, where, file))
        return []
    for alias, names in block.teachers.items():
        for position, target in enumerate(names):
            if teacher_names is not None and target not in teacher_names:
                line, col = where.find((*block_loc, "teachers", alias, position))
                hint = closest_name(target, sorted(teacher_names))
                suffix = f" (did you mean '{hint}'?)" if hint else ""
                known = ", ".join(sorted(teacher_names)) or "none"
                problems.append(
                    f"{file}:{line}:{col}: {_field_path(block_loc)}.teachers.{alias}"
                    f"[{position}]: teacher '{target}' (round {position + 1}) is not "
                    f"declared{suffix}; declared teachers: {known}"
                )
    body: list[tuple[Loc, str, type[Operator] | None, dict[str, Any]]] = []
    used: set[str] = set()
    before = len(problems)
    for j, item in enumerate(block.steps):
        ((name, raw_params),) = item.items()
        step_loc: Loc = (*block_loc, "steps", j)
        op, params = _resolve_step(str(name), raw_params, step_loc, where, file, problems)
        names = raw_params.get("teachers") if isinstance(raw_params, dict) else None
        if isinstance(names, list):
            used.update(map(str, names))
        if op is None or params is None:
            body.append((step_loc, str(name), None, {}))
            continue
        data = dict(raw_params or {})
        if "round" in op.params_model.model_fields and "round" in data:
            line, col = where.key_mark((*step_loc, str(name), "round"))
            problems.append(
                f"{file}:{line}:{col}: {_field_path((*step_loc, str(name)))}.round: set by the "
                "rounds block (round 1, 2, …); leave it out"
            )
        body.append((step_loc, str(name), op, data))
    for alias in block.teachers:
        if alias not in used:
            line, col = where.key_mark((*block_loc, "teachers", alias))
            problems.append(
                f"{file}:{line}:{col}: {_field_path(block_loc)}.teachers.{alias}: no step of "
                f"the body names teacher '{alias}' (a `sample` step's `teachers:` should)"
            )
    if len(problems) > before:
        return [_Slot(loc=step_loc, operator=None, params=None) for step_loc, *_ in body]
    slots: list[_Slot] = []
    seen: set[str] = set()
    for r in range(1, block.count + 1):
        for step_loc, name, op, data in body:
            assert op is not None  # a body with a step that did not validate returned above
            round_data = dict(data)
            if "round" in op.params_model.model_fields:
                round_data["round"] = r
            names = round_data.get("teachers")
            if isinstance(names, list) and "teachers" in op.params_model.model_fields:
                swapped = block.teachers
                round_data["teachers"] = [
                    swapped[str(n)][r - 1] if str(n) in swapped else n for n in names
                ]
            found: list[str] = []
            _, params = _resolve_step(name, round_data, step_loc, where, file, found)
            for problem in found:  # e.g. a swapped teacher listed twice
                if problem not in seen:
                    seen.add(problem)
                    problems.append(f"{problem} (in round {r})")
            slots.append(_Slot(loc=step_loc, operator=op, params=params, round=r))
    return slots


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
            line, col = where.find((*step.yaml_loc, "teachers", position))
            hint = closest_name(name, declared)
            suffix = f" (did you mean '{hint}'?)" if hint else ""
            known = ", ".join(declared) or "none; add a `teachers:` mapping at the top"
            problem = (
                f"{file}:{line}:{col}: {_field_path(step.yaml_loc)}.teachers: teacher "
                f"'{name}' is not declared{suffix}; declared teachers: {known}"
            )
            if problem not in problems:  # a rounds body step is checked once per round
                problems.append(problem)
    return problems
