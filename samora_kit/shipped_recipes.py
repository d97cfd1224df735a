"""`samora-kit recipes ls` and `samora-kit recipes cp NAME DEST`: the recipes that ship with the
package (the data package `samora_kit.recipes`, a clone's recipes/ folder), as torchtune's `tune ls`
and `tune cp`. A copy takes along every recipe the named one refers to, so it runs where it lands."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tomllib
from pathlib import Path

from rich.markup import escape

from .errors import SamoraError

# where a recipe names other recipe files, each path relative to the recipe that names it
REFERENCE_KEYS = ("base", "pretrain.recipe", "compare.recipes")


def recipes_root() -> Path:
    """The folder the shipped recipes are in (tests point it elsewhere)."""
    return Path(str(importlib.resources.files("samora_kit.recipes")))


def shipped_recipes(root: Path) -> dict[str, str]:
    """Each recipe's path relative to `root` -> its first comment line; the top folder's first."""
    paths = sorted(root.rglob("*.toml"), key=lambda p: (p.parent != root, p.relative_to(root).as_posix()))
    return {p.relative_to(root).as_posix(): description(p) for p in paths}


def description(path: Path) -> str:
    """The first line of the comment a recipe opens with ("" when it opens with a key)."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip() if line.lstrip().startswith("#") else ""
    return ""


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


def copy_recipe(name: str, dest: Path, force: bool = False, root: Path | None = None) -> list[Path]:
    """Copy recipe `name` and the recipes it refers to, keeping their layout; return the files written.

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
    for source, target in zip(files, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return targets


def add_recipes_command(sub) -> None:
    """`samora-kit recipes ls|cp` on the CLI's subcommand parsers."""
    recipes = sub.add_parser("recipes", help="list the shipped recipes, or copy one out to edit")
    action = recipes.add_subparsers(dest="action", required=True)
    action.add_parser("ls", help="each shipped recipe and what it does").set_defaults(func=_ls)
    cp = action.add_parser("cp", help="copy a shipped recipe and the recipes it refers to (base, [pretrain] "
                                      "recipe, [compare] recipes), keeping their layout")
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
    written = copy_recipe(args.name, args.dest, args.force)
    for path in written:
        console.print(f"wrote {escape(str(path))}", soft_wrap=True, highlight=False)
    console.print(f"run it with: samora-kit run {escape(str(written[0]))}", soft_wrap=True, highlight=False)
