"""TOML recipe -> validated pydantic objects. A recipe is data: no eval, no imports.

Component sections (`backbone`, `decoder`, `data`) pick a registered component with
`name = "..."`; the rest of the section is checked against that component's config.
Every problem is collected into one RecipeError with key paths and did-you-mean hints.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .data.slices import AugmentConfig
from .errors import RecipeError
from .registry import Registry, did_you_mean

# recipe section -> registry kind
COMPONENT_SECTIONS = {"backbone": "backbone", "decoder": "decoder", "data": "dataset"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RunSection(Strict):
    name: str = "run"
    output_dir: Path | None = None  # default runs/<name>
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"


class PluginsSection(Strict):
    require: list[str] = []  # plugin (entry-point) names this recipe needs


class TrainSection(Strict):
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(12, ge=1)  # global batch, split across ranks
    lr: float = Field(0.005, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = Field(250, ge=0)
    poly_power: float = Field(0.9, gt=0)
    ce_weight: float = Field(0.2, ge=0)
    dice_weight: float = Field(0.8, ge=0)
    checkpoint_every: int = Field(200, ge=1)  # optimizer steps
    log_every: int = Field(10, ge=1)
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke runs, benchmarks)
    foreground_only: bool = False  # train only on slices that contain a label
    num_workers: int = Field(0, ge=0)  # data-loading processes per rank
    augment: AugmentConfig = AugmentConfig()


class EvalSection(Strict):
    policies: list[Literal["transunet", "strict"]] = ["transunet", "strict"]
    batch_size: int = Field(16, ge=1)
    overlays: int = Field(4, ge=0)  # overlay PNGs written after evaluation


def recipe_model(registry: Registry) -> type[BaseModel]:
    """The pydantic model of a recipe with the installed plugins' components."""
    fields: dict[str, Any] = {
        "run": (RunSection, RunSection()),
        "plugins": (PluginsSection, PluginsSection()),
        "train": (TrainSection, TrainSection()),
        "eval": (EvalSection, EvalSection()),
    }
    for section, kind in COMPONENT_SECTIONS.items():
        variants = [create_model(f"{kind}_{spec.name}", __base__=spec.config_model,
                                 name=(Literal[spec.name], ...))
                    for spec in registry.specs(kind)]
        if not variants:
            fields[section] = (dict, ...)
        elif len(variants) == 1:
            fields[section] = (variants[0], ...)
        else:
            fields[section] = (Annotated[Union[tuple(variants)], Field(discriminator="name")], ...)
    return create_model("Recipe", __base__=Strict, **fields)


def load_recipe(path: str | Path, registry: Registry, overrides: list[str] = ()):
    """Read, override and validate a recipe; raise RecipeError listing every problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(str(path), ["no such recipe file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [f"not valid TOML: {exc}"]) from None
    problems = [p for item in overrides for p in _apply_override(raw, item)]
    recipe = None
    try:
        recipe = recipe_model(registry).model_validate(raw)
    except ValidationError as exc:
        problems += [_describe(err, raw, registry) for err in exc.errors()]
    problems += _check_plugins(raw, registry)
    if problems:
        raise RecipeError(str(path), problems)
    return recipe


def parse_recipe_text(text: str, registry: Registry, source: str = "<recipe>"):
    try:
        raw = tomllib.loads(text)
        return recipe_model(registry).model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(source, [f"not valid TOML: {exc}"]) from None
    except ValidationError as exc:
        raise RecipeError(source, [_describe(e, raw, registry) for e in exc.errors()]) from None


def dump_recipe(recipe: BaseModel) -> str:
    """The fully resolved recipe as TOML (defaults filled in)."""
    return tomli_w.dumps(_drop_none(recipe.model_dump(mode="json")))


def _apply_override(raw: dict, item: str) -> list[str]:
    if "=" not in item:
        return [f"override {item!r}: expected key.path=value"]
    key, value = item.split("=", 1)
    try:  # a TOML value (number, bool, list, quoted string) or else a bare string
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return [f"override {key}: {part!r} is not a table"]
    node[parts[-1]] = parsed
    return []


def _check_plugins(raw: dict, registry: Registry) -> list[str]:
    from .plugins import default_plugins  # late: avoids a cycle

    required = (raw.get("plugins") or {}).get("require") or []
    loaded = set(default_plugins().sources)
    return [f"plugins.require: plugin {name!r} is not installed{did_you_mean(name, loaded)}"
            for name in required if isinstance(name, str) and name not in loaded]


def _describe(err: dict, raw: dict, registry: Registry) -> str:
    loc = list(err["loc"])
    if len(loc) > 1 and loc[0] in COMPONENT_SECTIONS and isinstance(raw.get(loc[0]), dict) \
            and loc[1] == raw[loc[0]].get("name"):
        del loc[1]  # drop pydantic's union tag from the key path
    key = ".".join(str(p) for p in loc)
    value = _lookup(raw, loc)
    shown = f" = {value!r}" if value is not _MISSING else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        siblings = _allowed_keys(raw, loc[:-1], registry)
        return f"{key}{shown}: unknown key{did_you_mean(loc[-1], siblings)}"
    if kind in ("union_tag_invalid", "literal_error") and loc and loc[-1] == "name" \
            and loc[0] in COMPONENT_SECTIONS:
        names = registry.names(COMPONENT_SECTIONS[loc[0]])
        return (f"{key}{shown}: no {COMPONENT_SECTIONS[loc[0]]} of that name"
                f"{did_you_mean(value, names)}; installed: {', '.join(names)}")
    if kind == "union_tag_not_found":
        names = registry.names(COMPONENT_SECTIONS[loc[0]])
        return f"{key}.name: missing; expected one of {', '.join(names)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    return f"{key}{shown}: {err['msg']}"


_MISSING = object()


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


def _allowed_keys(raw: dict, loc: list, registry: Registry) -> list[str]:
    """Field names valid at `loc`, for did-you-mean hints."""
    model: Any = recipe_model(registry)
    for i, part in enumerate(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        if i == 0 and part in COMPONENT_SECTIONS:
            name = (raw.get(part) or {}).get("name")
            try:
                model = registry.get(COMPONENT_SECTIONS[part], name).config_model
            except Exception:
                return ["name"]
            continue
        field = model.model_fields.get(part)
        model = field.annotation if field else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        names = list(model.model_fields)
        return names + (["name"] if len(loc) == 1 and loc[0] in COMPONENT_SECTIONS else [])
    return []


def _drop_none(node):
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_none(v) for v in node]
    return node
