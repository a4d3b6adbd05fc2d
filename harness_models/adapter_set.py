"""What `adapter=` names: one adapter of this project, or a deep ensemble of them; loading them and MC dropout.

An adapter directory is anything `save_pretrained` of a Me-LoRA, BLoB or LoRA PEFT model wrote; its kind is read
from its own config (`melora.adapters.adapter_kind`) and it is loaded through the project loader, never by plain PEFT
(which would silently drop Me-LoRA's and BLoB's posterior).

An ensemble is a directory holding `ensemble.json`:

```json
{"kind": "ensemble", "members": ["member-0", "member-1", "member-2"]}
```

where each member is a subdirectory (relative to the ensemble directory) holding a normal adapter, all of one kind.
The members are loaded as named adapters of one PEFT model over one copy of the base model, and the model averages
the predictions of every member (and of every posterior sample of each member, for Bayesian members).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from melora.errors import AdapterError


if TYPE_CHECKING:
    from torch import nn

ENSEMBLE_FILE = "ensemble.json"
BAYESIAN_KINDS = ("melora", "blob", "laplace")  # laplace: a LAP directory (harness_models.laplace)


@dataclass(frozen=True)
class AdapterSet:
    """The adapters one `adapter=` argument names.

    Attributes:
        path (`str`): the directory given.
        kind (`str`): the kind of every member (`melora`, `blob`, `lora`).
        members (`tuple[tuple[str, str], ...]`): `(adapter name, directory)` per member; one for a single adapter.
    """

    path: str
    kind: str
    members: tuple[tuple[str, str], ...]

    @property
    def is_ensemble(self) -> bool:
        """True when `path` is an ensemble directory (even of one member)."""
        return os.path.isfile(os.path.join(self.path, ENSEMBLE_FILE))

    @property
    def is_bayesian(self) -> bool:
        """True when the members have a posterior to sample (Me-LoRA, BLoB)."""
        return self.kind in BAYESIAN_KINDS


def resolve_adapter(path: str | os.PathLike) -> AdapterSet:
    """Read what `path` holds (a single adapter or an ensemble) without loading any weights.

    Raises:
        AdapterError: a missing directory, an unreadable or malformed `ensemble.json`, a member that is not an adapter
            of this project, or members of different kinds.
    """
    from melora.adapters import adapter_kind

    path = os.fspath(path)
    # --- LAP: a directory with laplace.json (harness_models.laplace) ---
    from harness_models.laplace import is_laplace_dir, resolve_laplace

    if is_laplace_dir(path):
        return resolve_laplace(path)
    # --- end LAP ---
    manifest = os.path.join(path, ENSEMBLE_FILE)
    if not os.path.isfile(manifest):
        return AdapterSet(path=path, kind=adapter_kind(path), members=(("default", path),))
    try:
        with open(manifest, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"Cannot read the ensemble manifest '{manifest}': {e}") from e
    members = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or spec.get("kind") != "ensemble" or not isinstance(members, list) or not members:
        raise AdapterError(
            f'Expected \'{manifest}\' to be {{"kind": "ensemble", "members": ["<subdir>", ...]}} with at least '
            f"one member, but got {spec!r}."
        )
    resolved, kinds = [], {}
    for i, member in enumerate(members):
        if not isinstance(member, str) or os.path.isabs(member):
            raise AdapterError(f"Ensemble member {member!r} in '{manifest}' must be a relative directory name.")
        member_dir = os.path.join(path, member)
        kinds[member] = adapter_kind(member_dir)
        resolved.append((f"member_{i}", member_dir))
    if len(set(kinds.values())) > 1:
        raise AdapterError(f"Ensemble '{path}' mixes adapter kinds {kinds}; all members must be of one kind.")
    return AdapterSet(path=path, kind=next(iter(kinds.values())), members=tuple(resolved))


def load_adapter_set(base_model: nn.Module, adapters: AdapterSet) -> nn.Module:
    """Load every member of `adapters` onto `base_model` with its own layers; the first member is active.

    Raises:
        AdapterError: a member does not fit the base model (checked before its weights are loaded), or its checkpoint
            lacks tensors the model expects.
    """
    from melora.adapters import load_adapter
    from melora.adapters.loader import check_adapter_shapes, config_class

    (first_name, first_dir), *rest = adapters.members
    model = load_adapter(base_model, first_dir, adapter_name=first_name)
    for name, member_dir in rest:
        check_adapter_shapes(model.get_base_model(), member_dir, adapters.kind)
        config = config_class(adapters.kind).from_pretrained(member_dir)
        config.inference_mode = True
        model.add_adapter(name, config)  # the right layer class; load_adapter then only fills in the weights
        result = model.load_adapter(member_dir, adapter_name=name)
        if result.missing_keys:
            raise AdapterError(f"Ensemble member '{member_dir}' lacks tensors: {sorted(result.missing_keys)[:5]}.")
    model.set_adapter(first_name)
    return model.eval()


def lora_dropout_rate(model: nn.Module) -> float:
    """The largest LoRA dropout probability of the active adapter(s) (0.0 when none has dropout)."""
    rates = [
        float(getattr(dropout, "p", 0.0))
        for module in model.modules()
        for dropout in getattr(module, "lora_dropout", {}).values()
        if hasattr(module, "lora_dropout")
    ]
    return max(rates, default=0.0)
