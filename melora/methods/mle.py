"""MLE: plain LoRA, no weight decay."""

from __future__ import annotations

from melora.methods.base import Method


class Mle(Method):
    name = "mle"
