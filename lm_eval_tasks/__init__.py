"""Task YAMLs for lm-evaluation-harness: the paper's in-distribution and distribution-shift sets."""
