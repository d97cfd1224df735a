"""samora-kit's evidence, beside the product: every benchmark behind a figure in docs/benchmarks.md (speed,
memory, FLOPs; the few-shot arms; the miniature world; LiteMedSAM, the real foundation) and the world's
source-domain datasets, registered through the `samora_kit` entry point as a third party's plugin would.

Install it from a checkout (`pip install -e benchmarks`) and run its scripts from the repository root, e.g.
`python -m samora_benchmarks.fewshot --help`: they read the recipes, write runs/ and docs/ of that checkout.
It imports only samora-kit's public API (samora_kit.api); tests/test_layout.py checks it."""
