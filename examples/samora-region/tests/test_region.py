"""samora-kit's conformance suite on every component this plugin registers (run with the plugin installed)."""

from samora_kit.testing import conformance_tests

test_conformance = conformance_tests("region")
