"""Errors a user can act on: the CLI prints their message, never a traceback."""

import errno


class SamoraError(Exception):
    """A problem with the user's input: file, key or value, and what was expected."""


class RecipeError(SamoraError):
    """A recipe failed validation; `problems` holds every problem found, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class DuplicateComponentError(SamoraError):
    """Two plugins registered the same kind and name."""


class PluginContractError(SamoraError):
    """A plugin registered something that does not meet its kind's contract (samora_kit.interfaces)."""


class DataError(SamoraError):
    """A data file is missing, unreadable or not what the recipe declares."""


class CheckpointError(SamoraError):
    """A weights file is missing, corrupted or made for another architecture."""


class RuntimeFailure(SamoraError):
    """Something failed while running on valid input (the CLI exits 1; input errors exit 2)."""


class TrainingDiverged(RuntimeFailure):
    """The loss became NaN or infinite."""


class WriteError(RuntimeFailure):
    """A file could not be written (full disk, permissions, a read-only folder); what was there before stays."""


def describe_os_error(exc: BaseException) -> str:
    """'No space left on device: free some space, or write elsewhere', and the like."""
    text = getattr(exc, "strerror", None) or str(exc)
    code = getattr(exc, "errno", None)
    if code is None and "os error 28" in str(exc):  # safetensors reports the OS error in its message
        code = errno.ENOSPC
    advice = {errno.ENOSPC: "free some disk space, or write elsewhere",
              errno.EDQUOT: "free some of your disk quota, or write elsewhere",
              errno.EACCES: "check the folder's permissions, or write elsewhere",
              errno.EROFS: "the file system is read-only: write elsewhere"}.get(code)
    if code == errno.ENOSPC:
        text = "no space left on device"
    return f"{text}: {advice}" if advice else text
