"""Errors a user can act on: the CLI prints their message, never a traceback."""


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


class DataError(SamoraError):
    """A data file is missing, unreadable or not what the recipe declares."""


class CheckpointError(SamoraError):
    """A weights file is missing, corrupted or made for another architecture."""


class TrainingDiverged(SamoraError):
    """The loss became NaN or infinite."""
