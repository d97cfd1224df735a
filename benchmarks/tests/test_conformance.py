"""The world's datasets meet samora-kit's dataset contract, checked the way any plugin checks itself."""

from samora_kit.testing import conformance_tests

test_conformance = conformance_tests("world")  # this package's entry point (benchmarks/pyproject.toml)
