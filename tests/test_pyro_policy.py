"""The Pyro-settings policy of mmpgm._pyro: mmpgm changes no Pyro setting, and its models keep
their parameters in the modules whatever the user's ``module_local_params`` is."""

import pyro
import pytest
import torch
from pyro.nn import PyroModule, PyroParam

import mmpgm
from mmpgm.datasets import demo_hmm


class _UserModule(PyroModule):
    def __init__(self):
        super().__init__()
        self.w = PyroParam(torch.zeros(2))

    def forward(self):
        return self.w.sum()


def _fit_three_models(local):
    """Fit an HMM, an LDS and an MVRNN under ``module_local_params=local``; check that no
    parameter entered the global store and the setting is as the user left it."""
    with pyro.settings.context(module_local_params=local):
        pyro.clear_param_store()
        torch.manual_seed(0)  # the MVRNN's initial weights: both settings start from the same
        data, _ = demo_hmm().sample(4, 15, seed=0)
        models = [
            mmpgm.MultimodalHMM({"audio": 4, "video": 6, "flow": 2}, num_shared_states=2),
            mmpgm.MultimodalLDS({"audio": 4, "video": 6, "flow": 2}, shared_dim=1, private_dim=1),
            mmpgm.MVRNN(
                {"audio": 4, "video": 6, "flow": 2}, hidden_dim=4, shared_dim=2, private_dim=1
            ),
        ]
        losses = []
        for model in models:
            model.double()
            losses.append(mmpgm.fit(model, data, num_steps=2, progress=False).losses)
            twin = type(model).from_config(model.config()).double()
            for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
                assert a is not b, name
        assert pyro.settings.get("module_local_params") is local
        assert len(pyro.get_param_store()) == 0  # no mmpgm parameter entered the global store
        user = _UserModule()
        user()
        # the user's own module follows the user's setting
        assert ("w" in pyro.get_param_store()) is (not local)
    return losses


def test_importing_mmpgm_changes_no_pyro_setting():
    import subprocess
    import sys

    code = (
        "import pyro; before = pyro.settings.get(); import mmpgm; mmpgm.MultimodalHMM({'a': 1}); "
        "import mmpgm.online, mmpgm.inference, mmpgm.diagnostics; "
        "assert pyro.settings.get() == before, (before, pyro.settings.get())"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("local", [False, True])
def test_models_keep_parameters_local_and_settings_untouched(local):
    _fit_three_models(local)


def test_fit_is_the_same_under_either_setting():
    a = _fit_three_models(False)
    b = _fit_three_models(True)
    for x, y in zip(a, b, strict=True):
        # the same computation; only multithreaded reductions may round differently
        torch.testing.assert_close(torch.as_tensor(x), torch.as_tensor(y), rtol=1e-12, atol=0)
