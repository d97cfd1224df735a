"""Paths in recipes: every path written in a recipe file resolves from that file's folder.

Which values are paths the schema says: a field typed `Path` (or `Path | None`, `list[Path]`,
`dict[str, Path]`), in the core's sections and in every plugin's config alike. A `base` recipe's
paths resolve from the base's folder; paths given as command-line overrides from the working
directory (where the shell user typed them); `~` is expanded; absolute paths are kept.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Union, get_args, get_origin

from pydantic import BaseModel

UNION_TYPES = (Union, types.UnionType)


def resolve_paths(raw: dict, folder: Path, models: list[type[BaseModel]], below: dict | None = None) -> None:
    """Make the relative paths in one file's raw tables absolute, in place. `models` are the recipe
    models that may describe the file (its task's first): the first that knows a key decides.
    `below` is what the file is merged over (its base's tables): a table that leaves its component's
    `name` to the base is read as that component's config."""
    for key, value in raw.items():
        annotation = next((m.model_fields[key].annotation for m in models if key in m.model_fields), None)
        if annotation is not None:
            raw[key] = _resolve_value(value, annotation, folder, (below or {}).get(key))


def _resolve_value(value: Any, annotation: Any, folder: Path, below: Any = None) -> Any:
    if _holds(annotation, Path) and isinstance(value, str) and not _is_literal_choice(annotation, value):
        return _absolute(value, folder)
    below = below if isinstance(below, dict) and isinstance(value, dict) else None
    member = pick_member(annotation, {**below, **value} if below else value)
    if get_origin(member) is list and isinstance(value, list):
        item = get_args(member)[0]
        return [_resolve_value(v, item, folder) for v in value]
    if get_origin(member) is dict and isinstance(value, dict):
        item = get_args(member)[1]
        return {k: _resolve_value(v, item, folder) for k, v in value.items()}
    if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(value, dict):
        resolve_paths(value, folder, [member], below)
    return value


def _absolute(value: str, folder: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (folder / path).resolve())


def _holds(annotation: Any, kind: type) -> bool:
    """`annotation` is `kind` or an Optional/Union of it."""
    if annotation is kind:
        return True
    return get_origin(annotation) in UNION_TYPES and kind in get_args(annotation)


def _is_literal_choice(annotation: Any, value: str) -> bool:
    """`value` is one of the annotation's Literal words (SAMed's `checkpoint = "backbone"`), not a path."""
    return any(get_origin(m) is Literal and value in get_args(m) for m in get_args(annotation))


def pick_member(annotation: Any, value: Any) -> Any:
    """Unwrap Annotated/Optional/Union, choosing the union member named by value['name']."""
    if get_origin(annotation) is Annotated:
        return pick_member(get_args(annotation)[0], value)
    if get_origin(annotation) in UNION_TYPES:
        members = [m for m in get_args(annotation) if m is not type(None)]
        name = value.get("name") if isinstance(value, dict) else None
        for m in members:
            m = pick_member(m, value)
            if isinstance(m, type) and issubclass(m, BaseModel) and "name" in m.model_fields \
                    and get_args(m.model_fields["name"].annotation) == (name,):
                return m
        return pick_member(members[0], value) if len(members) == 1 else annotation
    return annotation


def path_fields(model: BaseModel, where: str = "") -> Iterator[tuple[str, Path]]:
    """(dotted key, path) of every path set in a validated recipe (or any config model)."""
    for name, field in type(model).model_fields.items():
        yield from _paths_in(getattr(model, name), f"{where}{name}")


def _paths_in(value: Any, key: str) -> Iterator[tuple[str, Path]]:
    if isinstance(value, Path):
        yield key, value
    elif isinstance(value, BaseModel):
        yield from path_fields(value, f"{key}.")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _paths_in(item, f"{key}.{i}")
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _paths_in(item, f"{key}.{k}")
