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


@pytest.fixture(scope="module")
def dataset_registry():
    """A registry holding only the built-in dataset plugin, not whatever else is installed."""
    from samora_kit.plugins import DISABLE_AUTOLOAD, load_plugins
    from samora_kit_plugins import datasets as dataset_plugins

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DISABLE_AUTOLOAD, "1")
        loaded = load_plugins(extra=[dataset_plugins])
    assert not loaded.failures
    return loaded.registry
