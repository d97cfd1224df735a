"""Which cases a recipe uses: a key of a split JSON, a list file, or an explicit list, optionally subsampled."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field, model_validator

from ..errors import DataError
from ..registry import ComponentConfig, did_you_mean


class CaseSelection(ComponentConfig):
    """Exactly one source: split_file + key, list_file, or cases. `count` draws a seeded subset of it."""

    split_file: Path | None = None
    key: str | None = None          # dotted path into split_file, e.g. "support_sets.k3.0" or "test"
    list_file: Path | None = None   # one id per line; blank lines and "#" comments are ignored
    cases: list[str] | None = None
    count: int | None = Field(default=None, ge=1)
    seed: int = 1234

    @model_validator(mode="after")
    def _exactly_one_source(self):
        sources = [name for name in ("split_file", "list_file", "cases") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of split_file (+ key), list_file or cases; "
                             f"got {', '.join(sources) or 'none'}")
        if (self.split_file is None) != (self.key is None):
            raise ValueError("split_file and key go together: key is the dotted path of the id list "
                             "inside split_file, e.g. key = \"support_sets.k3.0\"")
        return self

    def describe(self) -> str:
        if self.split_file is not None:
            return f"{self.split_file} key {self.key!r}"
        if self.list_file is not None:
            return str(self.list_file)
        return "the explicit cases list"

    def resolve(self, available_ids: Iterable[str] | None, base_dir: str | Path) -> list[str]:
        """The selected ids, in source order; relative files are read from base_dir (the dataset root).
        available_ids None: the ids are not checked here (the adapter checks each when it loads it)."""
        ids, where = self._read_ids(Path(base_dir))
        if available_ids is not None:
            _check_known(ids, list(available_ids), where)
        if self.count is None:
            return ids
        if self.count > len(ids):
            raise DataError(f"{where}: count = {self.count} but the selection holds only {len(ids)} ids")
        drawn = set(random.Random(self.seed).sample(ids, self.count))
        return [case for case in ids if case in drawn]

    def _read_ids(self, base_dir: Path) -> tuple[list[str], str]:
        if self.cases is not None:
            return _unique([str(c) for c in self.cases], "cases"), "cases"
        path = _under(base_dir, self.list_file if self.list_file is not None else self.split_file)
        if not path.is_file():
            raise DataError(f"{path}: no such case selection file")
        if self.list_file is not None:
            lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
            return _unique([line for line in lines if line], str(path)), str(path)
        where = f"{path} key {self.key!r}"
        try:
            document = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        value = _follow_key(document, self.key, path)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            kind = f"a mapping with keys {', '.join(map(str, value))}" if isinstance(value, dict) else repr(value)[:80]
            raise DataError(f"{where}: expected a list of case ids, found {kind}")
        return _unique(value, where), where


def _follow_key(document, dotted: str, path: Path):
    value, walked = document, []
    for part in dotted.split("."):
        if isinstance(value, dict):
            if part not in value:
                raise DataError(f"{path}: no key {part!r} at {'.'.join(walked) or 'the top level'} "
                                f"of {dotted!r}{did_you_mean(part, value)}; keys there: {', '.join(map(str, value))}")
            value = value[part]
        elif isinstance(value, list):
            if not part.lstrip("-").isdigit() or not -len(value) <= int(part) < len(value):
                raise DataError(f"{path}: {'.'.join(walked)} in {dotted!r} is a list of {len(value)}; "
                                f"{part!r} is not an index 0..{len(value) - 1}")
            value = value[int(part)]
        else:
            raise DataError(f"{path}: {'.'.join(walked)} in {dotted!r} is a value, not a mapping or list; "
                            f"cannot go on to {part!r}")
        walked.append(part)
    return value


def _check_known(ids: list[str], available: list[str], where: str) -> None:
    known = set(available)
    unknown = [case for case in ids if case not in known]
    if unknown:
        shown = ", ".join(f"{case!r}{did_you_mean(case, available)}" for case in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(f"{where}: unknown case id {shown}{more}; the dataset has {len(available)} cases")


def _unique(ids: list[str], where: str) -> list[str]:
    seen: set[str] = set()
    for case in ids:
        if case in seen:
            raise DataError(f"{where}: case id {case!r} is listed twice")
        seen.add(case)
    return ids


def _under(base_dir: Path, path: Path) -> Path:
    return path if path.is_absolute() else base_dir / path
