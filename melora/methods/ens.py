"""Deep ensemble: `--ensemble-size` LoRA (MLE) members trained independently with seeds `seed, seed+1, ...`.

The members' adapters are gathered into one directory holding `ensemble.json` (`{"kind": "ensemble", "members":
["member-0", ...]}`) and a sub-directory per member, so the harness loads the ensemble as one `adapter=` argument and
averages the members' probabilities (BLoB's ensemble averaged logits; we average probabilities like every other
method).
"""

from __future__ import annotations

from melora.methods.base import Method


class Ensemble(Method):
    name = "ens"
    ensemble = True
    member_method = "mle"
