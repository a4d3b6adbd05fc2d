"""MC dropout: LoRA trained with dropout (0.1, the paper's default), evaluated with the dropout kept on."""

from __future__ import annotations

from melora.methods.base import Method


class McDropout(Method):
    name = "mcd"
    mc_dropout = True
