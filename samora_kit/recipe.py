"""TOML recipe -> validated pydantic objects. A recipe is data: no eval, no imports.

`task` says what a recipe does, and each task has its own schema, so a key that would do nothing
is an error: "segment" (train a decoder on labelled scans, evaluate it), "pretrain_experts"
(SAMora stage 1: one LoRA expert per [[experts]] entry) or "pretrain_base" (an image encoder from
scratch). Component tables (`backbone`, `data`, `decoder`, `fuser`, and each expert's `pretext`
and `teacher`) pick a registered component with `name = "..."`; the rest of the table is checked
against that component's config. `base = "other.toml"` merges the recipe over another (tables key
by key; a table naming another component replaces the base's; lists replace). Every path written
in a recipe resolves relative to the recipe file that holds it (recipe_paths.py). Every problem is
collected into one RecipeError with key paths and did-you-mean hints.
"""

from __future__ import annotations

import re
import tomllib
import weakref
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import tomli_w
from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, field_validator,
                      model_validator)

from .data.selection import CaseSelection
from .data.slices import AugmentConfig
from .errors import RecipeError
from .interfaces import ValidationCases
from .recipe_paths import pick_member, resolve_paths
from .registry import Registry, did_you_mean
from .train.schedule import DEFAULT_WARMUP

TASKS = ("segment", "pretrain_experts", "pretrain_base")

# recipe key -> registry kind of the component it names
COMPONENT_KEYS = {"backbone": "backbone", "decoder": "decoder", "data": "dataset", "fuser": "fuser",
                  "pretext": "pretext", "teacher": "teacher"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RunSection(Strict):
    name: str = "run"
    output_dir: Path | None = None  # default runs/<name>
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the trained module (worth it on GPUs; the first steps compile)


class PluginsSection(Strict):
    require: list[str] = []  # plugin (entry-point) names this recipe needs


class TrainSection(Strict):
    """What every task's training loop reads."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(12, ge=1)  # global batch, split across ranks
    lr: float = Field(0.005, gt=0)  # the decoder's (stage 1: the pretext head's) and any part without its own below
    fuser_lr: float | None = Field(None, gt=0)  # stage-2 fusers; None: FUSER_LR_FACTOR x lr (docs/decisions.md)
    lora_lr: float | None = Field(None, gt=0)  # a trainable LoRA (SAMed, stage-1 experts); None: lr
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int | float = DEFAULT_WARMUP  # an integer: optimizer steps; a float in [0, 1): a fraction of the run
    poly_power: float = Field(0.9, gt=0)
    checkpoint_every: int = Field(200, ge=1)  # optimizer steps
    log_every: int = Field(10, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum 0.9, nesterov
    schedule: Literal["poly", "cosine", "constant"] = "poly"  # after the warm-up; poly is SAMed's
    grad_clip: float | None = Field(None, gt=0)  # clip the gradients' global norm to this (None: no clipping)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU; fp16: CUDA, loss-scaled
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke runs, benchmarks)
    num_workers: int = Field(0, ge=0)  # data-loading processes per rank

    @field_validator("warmup")
    @classmethod
    def _steps_or_fraction(cls, warmup: int | float) -> int | float:
        if isinstance(warmup, bool):
            raise ValueError("expected a number of steps (an integer) or a fraction of the run (a float in [0, 1))")
        if isinstance(warmup, int) and warmup < 0:
            raise ValueError(f"{warmup} warm-up steps: the number of steps must be 0 or more")
        if isinstance(warmup, float) and not 0.0 <= warmup < 1.0:
            raise ValueError(f"{warmup} as a fraction of the run must be in [0, 1); give whole steps as an "
                             "integer (warmup = 250) or a fraction (warmup = 0.1)")
        return warmup


class SegmentTrainSection(TrainSection):
    """Training on labelled slices: the loss weights, the slice choice and the augmentation."""

    ce_weight: float = Field(0.2, ge=0)
    dice_weight: float = Field(0.8, ge=0)
    foreground_only: bool = False  # train only on slices that contain a label
    augment: AugmentConfig = AugmentConfig()


class EvalSection(Strict):
    policies: list[Literal["transunet", "strict"]] = ["transunet", "strict"]
    batch_size: int = Field(16, ge=1)
    overlays: int = Field(4, ge=0)  # overlay PNGs written after evaluation


class ValidationSection(Strict):
    """Scoring data.val's cases while a segmentation recipe trains (metrics.jsonl gets val_dice)."""

    every: int = Field(1, ge=1)  # epochs; the run's last step is scored too
    batch_size: int | None = Field(None, ge=1)  # slices per forward pass; None: eval.batch_size


class PretrainSection(Strict):
    recipe: Path  # a stage-1 recipe whose experts fill backbone.experts.packs (run or reused)


class CompareSection(Strict):
    recipes: list[Path]  # baselines run (or reused) on the same data; tables printed side by side


# what the core itself reads from a component's table, in a task's recipes: a segmentation recipe's
# data table takes `val`, the cases scored during training, selected like data.train / data.test
CORE_COMPONENT_KEYS = {("segment", "dataset"): {"val": (CaseSelection | None, None)}}


def component_type(registry: Registry, kind: str, task: str | None = None) -> Any:
    """One pydantic type accepting every registered component of `kind`, chosen by `name` (plus the keys
    the core reads from such a table in `task`'s recipes, unless the component declares them itself)."""
    core = CORE_COMPONENT_KEYS.get((task, kind), {})
    variants = [create_model(f"{kind}_{spec.name}", __base__=spec.config_model, name=(Literal[spec.name], ...),
                             **{k: v for k, v in core.items() if k not in spec.config_model.model_fields})
                for spec in registry.specs(kind)]
    if not variants:
        return dict
    if len(variants) == 1:
        return variants[0]
    return Annotated[Union[tuple(variants)], Field(discriminator="name")]


_MODELS: "weakref.WeakKeyDictionary[Registry, dict]" = weakref.WeakKeyDictionary()  # built models, per registry


def recipe_model(registry: Registry, task: str) -> type[BaseModel]:
    """The pydantic model of a recipe of `task` with the installed plugins' components (built once per
    registry and task while the registry holds the same components: loading a recipe asks for it often)."""
    key = (task, tuple((spec.kind, spec.name, spec.config_model) for spec in registry.specs()))
    built = _MODELS.setdefault(registry, {})
    if key not in built:
        built[key] = _recipe_model(registry, task)
    return built[key]


def _recipe_model(registry: Registry, task: str) -> type[BaseModel]:
    common: dict[str, Any] = {
        "task": (Literal[task], ...),
        "run": (RunSection, RunSection()),
        "plugins": (PluginsSection, PluginsSection()),
        "backbone": (component_type(registry, "backbone"), ...),
        "data": (component_type(registry, "dataset", task), ...),
    }
    validators = {}
    if task == "segment":
        fields = {"train": (SegmentTrainSection, SegmentTrainSection()),
                  "eval": (EvalSection, EvalSection()),
                  "decoder": (component_type(registry, "decoder"), ...),
                  "fuser": (Optional[component_type(registry, "fuser")], None),
                  "validation": (Optional[ValidationSection], None),
                  "pretrain": (Optional[PretrainSection], None),
                  "compare": (Optional[CompareSection], None)}
        validators["validation_needs_cases"] = model_validator(mode="after")(validation_needs_cases)
    elif task == "pretrain_experts":
        expert = create_model("ExpertEntry", __base__=Strict, name=(str, ...),
                              pretext=(component_type(registry, "pretext"), ...),
                              teacher=(Optional[component_type(registry, "teacher")], None))

        def unique_names(recipe):
            names = [e.name for e in recipe.experts]
            if len(set(names)) != len(names):
                raise ValueError(f"experts: names {names} must be unique")
            return recipe

        fields = {"train": (TrainSection, TrainSection()), "experts": (list[expert], Field(..., min_length=1))}
        validators["unique_names"] = model_validator(mode="after")(unique_names)
    elif task == "pretrain_base":
        base = create_model("BasePretraining", __base__=Strict, pretext=(component_type(registry, "pretext"), ...))
        fields = {"train": (TrainSection, TrainSection()), "base_pretraining": (base, ...)}
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return create_model(f"Recipe_{task}", __base__=Strict, __validators__=validators, **common, **fields)


def validation_needs_cases(recipe):
    """[validation] says how to score data.val's cases; without them it would do nothing."""
    if recipe.validation is not None and not (isinstance(recipe.data, ValidationCases) and recipe.data.val is not None):
        raise ValueError("validation: [validation] is set but data.val is not; name the cases to score "
                         "during training, e.g. data.val = { split_file = \"split.json\", key = \"val\" }")
    return recipe


def recipe_json_schema(registry: Registry) -> dict:
    """One JSON schema for every task's recipe (chosen by `task`), installed plugins included."""
    models = tuple(recipe_model(registry, task) for task in TASKS)
    return TypeAdapter(Annotated[Union[models], Field(discriminator="task")]).json_schema()


def task_of(raw: dict) -> tuple[str | None, list[str]]:
    """The recipe's task, or None and the problem (a hint from the sections present when it is missing)."""
    task = raw.get("task")
    if isinstance(task, str) and task in TASKS:
        return task, []
    if task is None:
        hint = next((f' (this recipe has [{key}]: task = "{t}")' for key, t in
                     (("decoder", "segment"), ("experts", "pretrain_experts"), ("base_pretraining", "pretrain_base"))
                     if key in raw), "")
        return None, [f"task: required key is missing; expected one of {', '.join(map(repr, TASKS))}{hint}"]
    return None, [f"task = {task!r}: unknown task{did_you_mean(task, TASKS)}; expected one of "
                  f"{', '.join(map(repr, TASKS))}"]


def load_recipe(path: str | Path, registry: Registry, overrides: list[str] = ()):
    """Read, override and validate a recipe; raise RecipeError listing every problem."""
    path = Path(path)
    raw = _read_with_bases(path, [], registry)
    problems = [p for item in _component_switches_first(list(overrides)) for p in _apply_override(raw, item)]
    if overrides:  # typed in a shell: relative paths resolve from the working directory (the file's already did)
        resolve_paths(raw, Path.cwd(), _models_for(raw, registry))
    problems += _check_plugins(raw, registry)
    recipe, validation_problems = _validate(raw, registry)
    if problems or validation_problems:
        raise RecipeError(str(path), problems + validation_problems)
    return recipe


def _validate(raw: dict, registry: Registry) -> tuple[Any, list[str]]:
    """(the recipe, []) or (None, every problem)."""
    task, problems = task_of(raw)
    if task is None:
        return None, problems
    model = recipe_model(registry, task)
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, [_describe(err, raw, registry, model) for err in exc.errors()]


def _read_with_bases(path: Path, seen: list[Path], registry: Registry) -> dict:
    """The recipe's tables merged over those of its `base` recipe (a path relative to it), every path
    in each file resolved from that file's folder."""
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except FileNotFoundError:
        where = f" (base of {seen[-1]})" if seen else ""
        raise RecipeError(str(path), [f"no such recipe file{where}"]) from None
    except IsADirectoryError:
        raise RecipeError(str(path), ["is a folder; expected a recipe file (TOML)"]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [f"not UTF-8 text (byte {exc.start}); a recipe is a TOML file"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [toml_problem(text, exc)]) from None
    base = raw.pop("base", None)
    if base is None:
        resolve_paths(raw, path.parent, _models_for(raw, registry))
        return raw
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(str(path), [f"base = {base!r}: expected the path of another recipe file, as a string"])
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise RecipeError(str(path), [f"base = {base!r} makes a cycle: {' -> '.join(map(str, seen))}"])
    below = _read_with_bases(base_path, [*seen, path.resolve()], registry)
    resolve_paths(raw, path.parent, _models_for({**below, **raw}, registry), below)
    return _merge(below, raw)


def _models_for(raw: dict, registry: Registry) -> list[type[BaseModel]]:
    """Every task's recipe model, the recipe's own task first (it reads the file's paths)."""
    return [recipe_model(registry, t) for t in sorted(TASKS, key=lambda t: t != raw.get("task"))]


def _merge(base: dict, top: dict) -> dict:
    """Tables merge key by key; a table naming another component replaces the base's whole."""
    merged = dict(base)
    for key, value in top.items():
        below = base.get(key)
        same_component = isinstance(below, dict) and below.get("name") == value.get("name", below.get("name")) \
            if isinstance(value, dict) else False
        merged[key] = _merge(below, value) if same_component else value
    return merged


def parse_recipe_text(text: str, registry: Registry, source: str = "<recipe>"):
    """A resolved recipe (a run folder's recipe.resolved.toml: paths already absolute)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(source, [toml_problem(text, exc)]) from None
    recipe, problems = _validate(raw, registry)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def toml_problem(text: str, exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's message, plus the key when a key or table is given twice (tomllib names only the line)."""
    message = f"not valid TOML: {exc}"
    found = re.search(r"at line (\d+)", str(exc))
    if not found or not str(exc).startswith(("Cannot overwrite a value", "Cannot declare")):
        return message
    lines = text.splitlines()
    number = int(found.group(1))
    line = lines[number - 1].strip() if number <= len(lines) else ""
    if line.startswith("["):
        return f"{message}: table {line} appears twice"
    table = next((ln.strip().strip("[]") for ln in reversed(lines[:number - 1]) if ln.strip().startswith("[")), "")
    key = line.split("=", 1)[0].strip()
    return f"{message}: key {f'{table}.' if table else ''}{key} is given twice"


def dump_recipe(recipe: BaseModel) -> str:
    """The fully resolved recipe as TOML (defaults filled in)."""
    return tomli_w.dumps(_drop_none(recipe.model_dump(mode="json")))


def _apply_override(raw: dict, item: str) -> list[str]:
    """Set key.path=value in the raw recipe; a numeric part indexes a list (`experts.0.pretext.grid=2`).
    Setting a component's `name` to another component drops the old one's keys."""
    if "=" not in item:
        return [f"override {item!r}: expected key.path=value"]
    key, value = item.split("=", 1)
    try:  # a TOML value (number, bool, list, quoted string) or else a bare string
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    node: Any = raw
    parts = key.strip().split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return [f"override {key}: {'.'.join(parts[:depth]) or key} has {len(node)} entries; "
                        f"expected an index 0..{len(node) - 1} at {where!r}"]
            if last:
                node[int(part)] = parsed
            else:
                node = node[int(part)]
        elif not isinstance(node, dict):
            return [f"override {key}: {'.'.join(parts[:depth])!r} is not a table"]
        elif last:
            switched = part == "name" and depth and parts[depth - 1] in COMPONENT_KEYS
            if switched and node.get("name") not in (None, parsed):
                node.clear()  # another component: the old one's keys mean nothing to it
            node[part] = parsed
        else:
            node = node.setdefault(part, {})
    return []


def _component_switches_first(overrides: list[str]) -> list[str]:
    """`fuser.name=lac fuser.init=0.5` and `fuser.init=0.5 fuser.name=lac` mean the same."""
    def switches(item: str) -> bool:
        parts = item.split("=", 1)[0].strip().split(".")
        return len(parts) > 1 and parts[-1] == "name" and parts[-2] in COMPONENT_KEYS
    return sorted(overrides, key=lambda item: not switches(item))


def _check_plugins(raw: dict, registry: Registry) -> list[str]:
    from .plugins import default_plugins  # late: avoids a cycle

    section = raw.get("plugins")
    required = (section.get("require") if isinstance(section, dict) else None) or []
    if not isinstance(required, list):  # a string is no list of names: the schema reports its type, once
        return []
    plugins = default_plugins()
    failed = {f.name: f for f in plugins.failures}
    problems = []
    for name in required:
        if not isinstance(name, str) or name in plugins.sources:
            continue
        if name in failed:
            problems.append(f"plugins.require: plugin {name!r} ({failed[name].distribution}) is installed but failed "
                            f"to load: {failed[name].error}")
        else:
            problems.append(f"plugins.require: plugin {name!r} is not installed{did_you_mean(name, plugins.sources)}")
    return problems


def _describe(err: dict, raw: dict, registry: Registry, recipe_type: type[BaseModel]) -> str:
    loc = _strip_tags(list(err["loc"]), raw)
    key = ".".join(str(p) for p in loc) or "(recipe)"
    value = _lookup(raw, loc)
    shown = f" = {value!r}" if value is not _MISSING else ""
    kind = err["type"]
    component = next((COMPONENT_KEYS[p] for p in reversed(loc) if p in COMPONENT_KEYS), None)
    if kind == "extra_forbidden":
        model = _model_at(recipe_type, loc[:-1], raw)
        siblings = list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
        owners = [t for t in TASKS if len(loc) == 1 and loc[0] in recipe_model(registry, t).model_fields]
        if owners:  # a section of another task: the recipe says the wrong task, or holds a key that does nothing
            return (f"{key}{shown}: unknown key for task = {raw.get('task')!r}; it belongs to "
                    f"{' and '.join(f'task = {t!r}' for t in owners)} recipes")
        return f"{key}{shown}: unknown key{did_you_mean(loc[-1], siblings)}"
    if kind == "union_tag_invalid" and loc and loc[-1] in COMPONENT_KEYS:  # reported on the table itself
        loc = [*loc, "name"]
        key, value = f"{key}.name", _lookup(raw, loc)
        shown = f" = {value!r}"
    if kind in ("union_tag_invalid", "literal_error") and loc and loc[-1] == "name" and component:
        names = registry.names(component)
        return (f"{key}{shown}: no {component} of that name{did_you_mean(value, names)}; "
                f"installed: {', '.join(names) or 'none'}")
    if kind == "union_tag_not_found" and component:
        return f"{key}.name: missing; expected one of {', '.join(registry.names(component))}"
    if kind == "missing":
        return f"{key}: required key is missing"
    return f"{key}{shown}: {err['msg'].removeprefix('Value error, ')}"


_MISSING = object()


def _strip_tags(loc: list, raw: dict) -> list:
    """Drop pydantic's union tags (a component's `name`) from an error location."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("name") == part:
            continue
        out.append(part)
        node = _lookup(node, [part]) if node is not _MISSING else _MISSING
    return out


def _lookup(raw: Any, loc: list) -> Any:
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node


def _model_at(model: Any, loc: list, raw: Any) -> Any:
    """The config model that validates the table at `loc` (for did-you-mean hints)."""
    node, value = model, raw
    for part in loc:
        node = pick_member(node, value)
        if isinstance(part, int):
            node = get_args(node)[0] if get_origin(node) is list else None
            value = _lookup(value, [part])
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            return None
        node, value = node.model_fields[part].annotation, _lookup(value, [part])
    return pick_member(node, value)


def _drop_none(node):
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_none(v) for v in node]
    return node
