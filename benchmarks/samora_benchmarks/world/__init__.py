"""The miniature of SAMora's world (issue 11): a mini-SAM and mini-teachers trained on a source domain,
exported in the official layouts and imported as real weights are."""
