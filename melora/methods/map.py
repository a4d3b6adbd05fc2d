"""MAP: plain LoRA with weight decay (BLoB's MAP runs use AdamW weight decay 1e-5)."""

from __future__ import annotations

from melora.methods.base import Method


class Map(Method):
    name = "map"
    weight_decay = 1e-5
