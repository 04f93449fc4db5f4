"""Import-time checks of the layer contract (the full contract is `lint-imports`, setup.cfg)."""

import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> set:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_results_load_no_model_and_no_training():
    mods = _loaded_after("import mmpgm.results")
    assert not {m for m in mods if m.startswith(("mmpgm.models", "mmpgm.inference", "pyro"))}


@pytest.mark.parametrize("name", ["hmm", "kalman", "mixture", "kmeans", "linalg"])
def test_ops_load_no_pyro(name):
    mods = _loaded_after(f"import mmpgm.ops.{name}")
    assert not {m for m in mods if m.split(".")[0] in ("pyro", "arviz")}
    # the ops stand on torch and the argument checks of the ground floor only
    allowed = ("mmpgm.ops", "mmpgm._validation")
    assert not {m for m in mods if m.startswith("mmpgm.") and not m.startswith(allowed)}


def test_library_never_loads_data_prep():
    mods = _loaded_after("import mmpgm, mmpgm.api, mmpgm.online, mmpgm.diagnostics, mmpgm.demos.av")
    assert "data_prep" not in mods


def test_inference_calls_no_private_model_method():
    """Training code uses the models' public interface only (no ``model._name`` access)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "mmpgm" / "inference"
    offenders = [
        f"{path.name}:{i}: {line.strip()}"
        for path in root.glob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b(model|fold|mixture)\._[a-z]", line)
    ]
    assert not offenders, offenders
