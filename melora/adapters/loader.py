"""One loader for every adapter this project writes (Me-LoRA, BLoB, plain LoRA), never as the wrong kind.

`save_pretrained` of a Me-LoRA or BLoB PEFT model writes a normal PEFT adapter directory (`adapter_config.json`
with `peft_type: "LORA"` plus the method's fields, and `adapter_model.safetensors`). Plain
`peft.PeftModel.from_pretrained(base, adapter_dir)` (and lm-eval's `hf` model with `peft=`, and transformers'
`model.load_adapter`) reads such a directory as a *plain LoRA*: the Bayesian fields are dropped with only a
"Unexpected keyword arguments ... these are ignored" warning, and so are `C`'s parameters (Me-LoRA's M and H,
BLoB's rho): the model runs, silently, as a different model. Load with `load_adapter` instead:

- `adapter_kind(adapter_dir)` reads the kind from the adapter's own config (`use_melora` / `use_blob` flags, plain
  LoRA otherwise) and refuses a config with fields no known kind declares;
- `load_adapter(base_model, adapter_dir)` checks every tensor of the checkpoint against the base model's modules
  before touching the model (a missing module or a shape made for another base model raises `AdapterError` naming
  the module and both shapes), then builds the right layers through PEFT with the right config class.

`ADAPTER_KINDS` maps each kind to its config class: a new method is one module plus one entry here.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import fields
from typing import TYPE_CHECKING

from peft import LoraConfig

from melora.adapters.blob_config import BlobConfig
from melora.adapters.melora_config import MeLoraConfig
from melora.errors import AdapterError


if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn

ADAPTER_KINDS: dict[str, type[LoraConfig]] = {"lora": LoraConfig, "melora": MeLoraConfig, "blob": BlobConfig}
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# Per kind, the tensors (suffix after `.lora_`) every adapted module must carry besides A and B.
_REQUIRED_TENSORS = {"melora": ("melora_M", "melora_H"), "blob": ("blob_rho",)}


def config_class(kind: str) -> type[LoraConfig]:
    """The config class registered for `kind` in `ADAPTER_KINDS`.

    Raises:
        AdapterError: `kind` is not registered (the message lists the available kinds).
    """
    if kind not in ADAPTER_KINDS:
        raise _unknown_kind(kind)
    return ADAPTER_KINDS[kind]


def _unknown_kind(kind: str, where: str = "") -> AdapterError:
    close = difflib.get_close_matches(str(kind), ADAPTER_KINDS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return AdapterError(f"Unknown adapter kind {kind!r}{where}.{hint} Available: {', '.join(sorted(ADAPTER_KINDS))}.")


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    """The raw `adapter_config.json` of `adapter_dir` as a dict.

    Raises:
        AdapterError: the directory or its config is missing or unreadable.
    """
    adapter_dir = os.fspath(adapter_dir)
    if not os.path.isdir(adapter_dir):
        raise AdapterError(f"Adapter directory '{adapter_dir}' does not exist.")
    path = os.path.join(adapter_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise AdapterError(f"'{adapter_dir}' is not a PEFT adapter directory: it has no {CONFIG_NAME}.")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"Cannot read '{path}': {e}") from e
    if not isinstance(config, dict):
        raise AdapterError(f"Expected a JSON object in '{path}', but got {type(config).__name__}.")
    return config


def adapter_kind(adapter_dir: str | os.PathLike) -> str:
    """The kind of the adapter saved in `adapter_dir`: `"melora"`, `"blob"` or `"lora"` (a key of `ADAPTER_KINDS`).

    Raises:
        AdapterError: missing directory or config, a PEFT type other than LoRA, or fields no known kind declares.
    """
    config = read_adapter_config(adapter_dir)
    peft_type = str(config.get("peft_type", "")).rsplit(".", 1)[-1]
    if peft_type.upper() != "LORA":  # every kind is LoRA-based
        raise _unknown_kind(peft_type.lower(), f" (peft_type {config.get('peft_type')!r} in '{adapter_dir}')")
    flagged = [kind for kind, cls in ADAPTER_KINDS.items() if config.get(getattr(cls, "variant_field", "") or "")]
    if len(flagged) > 1:
        raise AdapterError(f"Adapter '{adapter_dir}' is flagged as several kinds at once: {flagged}.")
    kind = flagged[0] if flagged else "lora"
    known = {f.name for f in fields(LoraConfig)} | {f.name for f in fields(ADAPTER_KINDS[kind])}
    unknown = sorted(set(config) - known)
    if unknown:
        raise AdapterError(
            f"Unknown adapter kind in '{adapter_dir}': its {CONFIG_NAME} has fields {unknown} that no known kind "
            f"declares (written by another method or a newer melora?). Available: {', '.join(sorted(ADAPTER_KINDS))}."
        )
    return kind


def check_adapter_shapes(base_model: nn.Module, adapter_dir: str | os.PathLike, kind: str | None = None) -> None:
    """Check every LoRA tensor of the checkpoint in `adapter_dir` against the modules of `base_model`.

    Checks that each adapted module exists, that A's columns (and BLoB's rho) match its `in_features` and B's rows
    its `out_features`, that Me-LoRA's M and H are `r x r` with A's rank, and that the kind's extra tensors exist
    for every adapted module. Reads only the tensor headers.

    Raises:
        AdapterError: naming every mismatching module with the adapter's and the base model's shapes.
    """
    kind = adapter_kind(adapter_dir) if kind is None else kind
    shapes = _tensor_shapes(os.fspath(adapter_dir))
    per_module: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        module_path, sep, tensor = key.removeprefix("base_model.model.").rpartition(".lora_")
        if sep:
            per_module.setdefault(module_path, {})[tensor] = shape
    problems = []
    for module_path, tensors in per_module.items():
        try:
            module = base_model.get_submodule(module_path)
        except AttributeError:
            problems.append(f"module '{module_path}' does not exist in the base model")
            continue
        module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        a_shape = tensors.get("A.weight")
        if a_shape is not None and n_in is not None and a_shape[1] != n_in:
            problems.append(
                f"'{module_path}': lora_A.weight {a_shape} needs in_features={a_shape[1]}, base has {n_in}"
            )
        b_shape = tensors.get("B.weight")
        if b_shape is not None and n_out is not None and b_shape[0] != n_out:
            problems.append(
                f"'{module_path}': lora_B.weight {b_shape} needs out_features={b_shape[0]}, base has {n_out}"
            )
        for name in _REQUIRED_TENSORS.get(kind, ()):
            if name not in tensors and a_shape is not None:
                problems.append(f"'{module_path}': the {kind} checkpoint lacks lora_{name}")
        rho = tensors.get("blob_rho")
        if rho is not None and a_shape is not None and rho != a_shape:
            problems.append(f"'{module_path}': lora_blob_rho {rho} differs from lora_A.weight {a_shape}")
        for name in ("melora_M", "melora_H"):
            square = tensors.get(name)
            if square is not None and a_shape is not None and square != (a_shape[0], a_shape[0]):
                problems.append(f"'{module_path}': lora_{name} {square} is not r x r with r={a_shape[0]}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise AdapterError(f"Adapter '{os.fspath(adapter_dir)}' does not fit this base model: {shown}.")


def load_adapter(
    base_model: nn.Module,
    adapter_dir: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
) -> PeftModel:
    """Load any adapter this project writes onto `base_model`, with the layers of its own kind.

    Args:
        base_model (`nn.Module`): the plain transformers model the adapter was trained on (modified in place).
        adapter_dir (`str` or `os.PathLike`): a directory written by `save_pretrained`.
        adapter_name (`str`): name of the adapter in the returned model.
        is_trainable (`bool`): keep the adapter trainable (to resume training); otherwise it is frozen.

    Returns:
        A `peft.PeftModel` whose targeted layers are `MeLoraLinear`, `BlobLinear` or `lora.Linear`.

    Raises:
        AdapterError: missing directory, unknown kind, an adapter made for another base model (checked before the
            model is touched), or a PeftModel passed as `base_model`.
    """
    from peft import PeftModel

    if isinstance(base_model, PeftModel):
        raise AdapterError("`base_model` is already a PeftModel; pass the plain base model.")
    kind = adapter_kind(adapter_dir)
    check_adapter_shapes(base_model, adapter_dir, kind)
    try:
        config = config_class(kind).from_pretrained(os.fspath(adapter_dir))
    except (TypeError, ValueError) as e:
        raise AdapterError(f"Invalid {kind} adapter config in '{os.fspath(adapter_dir)}': {e}") from e
    return PeftModel.from_pretrained(
        base_model, os.fspath(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable, config=config
    )


def _tensor_shapes(adapter_dir: str) -> dict[str, tuple[int, ...]]:
    for name in WEIGHTS_NAMES:
        path = os.path.join(adapter_dir, name)
        if os.path.isfile(path):
            break
    else:
        raise AdapterError(f"Adapter directory '{adapter_dir}' has no weights ({' or '.join(WEIGHTS_NAMES)}).")
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        import torch

        state = torch.load(path, map_location="meta", weights_only=True)
        return {key: tuple(value.shape) for key, value in state.items()}
    except Exception as e:  # any unreadable file is one clear error
        raise AdapterError(f"Cannot read the adapter weights '{path}': {e}") from e
