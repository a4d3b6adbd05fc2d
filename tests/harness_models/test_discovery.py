"""Discovery of the `melora` model and tasks by the plain `lm_eval` command (melora/lm_eval_plugin.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from melora import lm_eval_plugin


def _python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_interpreter_start_stays_light():
    out = _python(
        "import sys; print(any(type(f).__name__ == '_Hook' for f in sys.meta_path), "
        "sorted(m for m in ('torch', 'lm_eval', 'harness_models', 'transformers', 'logging') if m in sys.modules))"
    )
    assert out == "True []"


def test_lm_eval_finds_the_model_lazily_and_the_task_dir():
    out = _python(
        "import sys; from lm_eval.api.registry import get_model, model_registry; import lm_eval.models; "
        "print(model_registry.origin('melora') or model_registry._objs['melora'], 'harness_models' in sys.modules); "
        "print(get_model('melora').__name__, 'hf' in model_registry); "
        "import lm_eval.tasks.manager as m; print(getattr(m.TaskManager.__init__, '__melora_plugin__', False))"
    )
    assert out.splitlines() == ["harness_models.melora_lm:MeloraLM False", "MeloraLM True", "True"]


def test_switched_off_by_the_environment():
    out = _python(
        "import sys; import lm_eval.models; from lm_eval.api.registry import model_registry; "
        "print('melora' in model_registry, any(type(f).__name__ == '_Hook' for f in sys.meta_path))",
        MELORA_LM_EVAL_PLUGIN="0",
    )
    assert out == "False False"


def test_native_support_is_detected_from_lm_eval_source(tmp_path, monkeypatch):
    import importlib.util

    assert not lm_eval_plugin.native_support("models") and not lm_eval_plugin.native_support("tasks")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "registry.py").write_text("eps = entry_points(group='lm_eval.models')\n")
    fake = importlib.util.spec_from_loader("lm_eval", loader=None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "lm_eval" else real(name, *a))
    assert lm_eval_plugin.native_support("models") and not lm_eval_plugin.native_support("tasks")


def test_include_path_keeps_precedence():
    ours = lm_eval_plugin.tasks_dir()
    assert lm_eval_plugin._prepend(ours, None) == [ours]
    assert lm_eval_plugin._prepend(ours, "mine") == [ours, "mine"]
    assert lm_eval_plugin._prepend(ours, ["a", ours]) == [ours, "a"]
