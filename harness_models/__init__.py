"""Thin lm-eval model adapters over `melora` (the `melora` lm-eval model)."""
