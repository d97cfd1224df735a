"""`samora-kit recipes ls` and `samora-kit recipes cp NAME DEST`: the recipes that ship with the
package (the data package `samora_kit.recipes`, a clone's recipes/ folder), as torchtune's `tune ls`
and `tune cp`. A copy takes along every recipe the named one refers to, and each path it names outside
them (data, split files, checkpoints) becomes the absolute path it named, or is reported with the key to
edit where nothing is there, so the copy runs where it lands."""

from __future__ import annotations

import copy
import importlib.resources
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rich.markup import escape

from .errors import SamoraError

# where a recipe names other recipe files, each path relative to the recipe that names it
REFERENCE_KEYS = ("base", "pretrain.recipe", "compare.recipes")
# a full stop, ! or ? that ends a sentence: followed by a space or the end, not closing "e.g." and the like
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s|$)")


def recipes_root() -> Path:
    """The folder the shipped recipes are in (tests point it elsewhere)."""
    return Path(str(importlib.resources.files("samora_kit.recipes")))


def shipped_recipes(root: Path) -> dict[str, str]:
    """Each recipe's path relative to `root` -> its description; the top folder's first."""
    paths = sorted(root.rglob("*.toml"), key=lambda p: (p.parent != root, p.relative_to(root).as_posix()))
    return {p.relative_to(root).as_posix(): description(p) for p in paths}


def description(path: Path) -> str:
    """The first sentence of the comment a recipe opens with, over as many lines as it takes (its first
    paragraph when no sentence ends there; "" when the recipe opens with a key)."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        text = line.strip()
        if not text and not words:
            continue
        if not text.startswith("#") or not text.lstrip("#").strip():  # a key, or the paragraph's end
            break
        words.append(text.lstrip("#").strip())
    paragraph = " ".join(words)
    end = SENTENCE_END.search(paragraph)
    return paragraph[:end.end()] if end else paragraph


def find_recipe(name: str, root: Path) -> Path:
    """`samed`, `fewshot/hippocampus_samora.toml` (or `recipes/samed.toml`, as a clone spells it)."""
    known = [p.removesuffix(".toml") for p in shipped_recipes(root)]
    wanted = name.replace("\\", "/").removesuffix(".toml")
    for candidate in (wanted, wanted.removeprefix("recipes/")):
        if candidate in known:
            return root / f"{candidate}.toml"
    from .registry import did_you_mean  # imports torch: only for a wrong name

    raise SamoraError(f"no shipped recipe {name!r}{did_you_mean(wanted, known)}; `samora-kit recipes ls` lists them")


def references(path: Path, root: Path) -> list[Path]:
    """The recipe files `path` names through base, [pretrain] recipe and [compare] recipes (`root` resolved)."""
    where = path.relative_to(root).as_posix()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SamoraError(f"{where}: not a TOML recipe ({exc})") from None
    found = []
    for key in REFERENCE_KEYS:
        table, _, field = key.rpartition(".")
        section = data.get(table) if table else data
        value = section.get(field) if isinstance(section, dict) else None
        for ref in value if isinstance(value, list) else [] if value is None else [value]:
            if not isinstance(ref, str):
                raise SamoraError(f"{where}: {key} holds {ref!r}; expected the path of a recipe file")
            target = (path.parent / ref).resolve()
            if not target.is_relative_to(root):
                raise SamoraError(f"{where}: {key} = {ref!r} points outside the recipes folder")
            if not target.is_file():
                raise SamoraError(f"{where}: {key} = {ref!r} names {target.relative_to(root).as_posix()}, which "
                                  "is not a shipped recipe (a path is relative to the recipe that names it)")
            found.append(target)
    return found


def with_references(path: Path, root: Path) -> list[Path]:
    """`path` and every recipe it refers to, directly or through another, each once, `path` first."""
    order = [path.resolve()]
    for current in order:  # grows while it is read: breadth first; a file already listed is not followed again
        for ref in references(current, root):
            if ref not in order:
                order.append(ref)
    return order


@dataclass
class CopiedRecipes:
    """What `recipes cp` did: the files it wrote, the paths it made absolute, and what is left to edit."""

    written: list[Path]  # the named recipe's new file first
    rewritten: list[str] = field(default_factory=list)  # "file: key = 'absolute path' (was 'relative path')"
    to_edit: list[str] = field(default_factory=list)  # "file: key = 'path': ...; edit key", one per path


def copy_recipe(name: str, dest: Path, force: bool = False, root: Path | None = None) -> CopiedRecipes:
    """Copy recipe `name` and the recipes it refers to, keeping their layout. A relative path that names
    something outside the copied recipes is written as the absolute path it named, or, when nothing is
    there, left as it is and reported with its key; a run folder that would land outside the copy is
    reported too.

    `dest` is a folder (created when missing) or, ending in .toml, the named recipe's new file name."""
    root = (root or recipes_root()).resolve()
    files = with_references(find_recipe(name, root), root)
    top = Path(os.path.commonpath([f.parent for f in files]))  # the layout kept under dest starts here
    if dest.suffix == ".toml" and not dest.is_dir():  # a new name for the named recipe
        if files[0].parent != top:
            outside = next(f for f in files if not f.is_relative_to(files[0].parent))
            raise SamoraError(f"{name} refers to {outside.relative_to(root).as_posix()}, outside its own folder: "
                              f"copy it into a folder instead (samora-kit recipes cp {name} DIR)")
        targets = [dest, *(dest.parent / f.relative_to(top) for f in files[1:])]
        if dest in targets[1:]:
            raise SamoraError(f"{dest}: {name} refers to a recipe of that name; choose another name or a folder")
    else:
        targets = [dest / f.relative_to(top) for f in files]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise SamoraError(f"refusing to overwrite {', '.join(existing)}: pass --force to replace")
    copied = CopiedRecipes(targets)
    landing = Path(os.path.commonpath([t.parent.resolve() for t in targets]))  # what the copy fills
    texts = [_moved_text(source, target, files, root, landing, copied) for source, target in zip(files, targets)]
    for source, target, text in zip(files, targets, texts):
        target.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            shutil.copyfile(source, target)
        else:
            target.write_text(text, encoding="utf-8")
    return copied


def _moved_text(source: Path, target: Path, files: list[Path], root: Path, landing: Path,
                copied: CopiedRecipes) -> str | None:
    """The text `source` is written with at `target` in the folder `landing` (None: unchanged), noting in
    `copied` what changed or is left to edit."""
    from .checks import OUTPUTS  # imports torch, as the plugins do: only when copying

    where = source.relative_to(root).as_posix()
    values: dict[tuple, str] = {}
    for keys, written, named in relative_paths(source):
        key = ".".join(map(str, keys))
        if named in files:  # a recipe copied along
            continue
        if key in OUTPUTS:
            lands = (target.parent / written).resolve()
            if not lands.is_relative_to(landing):
                copied.to_edit.append(f"{where}: {key} = {written!r} puts the run outside the copy, in {lands}; "
                                      f"edit {key} to choose another folder")
        elif named.exists():
            values[keys] = str(named)
            copied.rewritten.append(f"{where}: {key} = {str(named)!r} (was {written!r})")
        else:
            copied.to_edit.append(f"{where}: {key} = {written!r} names {named}, which does not exist; edit {key}")
    return _with_values(source.read_text(encoding="utf-8"), values) if values else None


def relative_paths(path: Path) -> Iterator[tuple[tuple, str, Path]]:
    """(key path, value as written, the absolute path it names) of each relative path the recipe file
    `path` writes itself (its base's are the base's): the values the recipe schema types as paths."""
    from .plugins import default_registry  # imports torch: the installed plugins' configs name paths too
    from .recipe import _models_for, _read_with_bases
    from .recipe_paths import resolve_paths

    registry = default_registry()
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    base = raw.pop("base", None)
    below = _read_with_bases((path.parent / base).resolve(), [], registry) if isinstance(base, str) else {}
    resolved = copy.deepcopy(raw)
    resolve_paths(resolved, path.parent, _models_for({**below, **raw}, registry), below or None)
    yield from _changed(raw, resolved, ())


def _changed(written, resolved, keys: tuple) -> Iterator[tuple[tuple, str, Path]]:
    if isinstance(written, dict):
        for key, value in written.items():
            yield from _changed(value, resolved[key], (*keys, key))
    elif isinstance(written, list):
        for i, value in enumerate(written):
            yield from _changed(value, resolved[i], (*keys, i))
    elif isinstance(written, str) and resolved != written and not Path(written).expanduser().is_absolute():
        yield keys, written, Path(resolved)


def _with_values(text: str, values: dict[tuple, str]) -> str:
    """The TOML `text` with the value at each key path replaced, its comments and layout kept."""
    import tomlkit

    document = tomlkit.parse(text)
    for keys, value in values.items():
        table = document
        for key in keys[:-1]:
            table = table[key]
        table[keys[-1]] = value
    return tomlkit.dumps(document)


def add_recipes_command(sub) -> None:
    """`samora-kit recipes ls|cp` on the CLI's subcommand parsers."""
    recipes = sub.add_parser("recipes", help="list the shipped recipes, or copy one out to edit")
    action = recipes.add_subparsers(dest="action", required=True)
    action.add_parser("ls", help="each shipped recipe and what it does").set_defaults(func=_ls)
    cp = action.add_parser("cp", help="copy a shipped recipe and the recipes it refers to (base, [pretrain] "
                                      "recipe, [compare] recipes), keeping their layout; paths to data and "
                                      "checkpoints become absolute, and those naming nothing are listed")
    cp.add_argument("name", help="as `recipes ls` shows it, with or without .toml: samed, fewshot/hippocampus_samora")
    cp.add_argument("dest", type=Path, help="a folder (created when missing), or a .toml file name for the recipe")
    cp.add_argument("--force", action="store_true", help="overwrite files that exist")
    cp.set_defaults(func=_cp)


def _ls(args, console):
    """Plain aligned columns, one line per recipe (grep-able, never cut; the terminal wraps long lines)."""
    recipes = shipped_recipes(recipes_root())
    width = max(map(len, recipes), default=0)
    for path, text in {"RECIPE": "DESCRIPTION", **recipes}.items():
        console.print(f"{path:<{width}}  {text}", markup=False, highlight=False, soft_wrap=True)


def _cp(args, console):
    copied = copy_recipe(args.name, args.dest, args.force)
    lines = [f"wrote {path}" for path in copied.written]
    lines += ["paths made absolute (the copy reads what the shipped recipe read):"] * bool(copied.rewritten)
    lines += [f"  {line}" for line in copied.rewritten]
    lines += [f"edit before running (samora-kit validate {copied.written[0]} checks it):"] * bool(copied.to_edit)
    lines += [f"  {line}" for line in copied.to_edit]
    lines.append(f"run it with: samora-kit run {copied.written[0]}")
    for line in lines:
        console.print(escape(line), soft_wrap=True, highlight=False)
