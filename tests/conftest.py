from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """A data set from ../shared/data, or a clean skip saying what is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: these tests need the shared medical data next to the repo")
    return path


@pytest.fixture
def hippocampus() -> Path:
    return shared_dataset("msd_hippocampus")
