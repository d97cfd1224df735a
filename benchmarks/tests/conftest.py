"""The benchmarks package's tests. They run from the repository root with the core's (`python -m pytest`:
testpaths `tests` and `benchmarks/tests`) and borrow the core tests' helpers (tests/synthetic.py, the
fixtures of tests/conftest.py), so the checkout's root must be importable."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import hippocampus  # noqa: E402, F401 (a fixture shared with the core's tests)
