"""mmpgm: multimodal probabilistic graphical models on Pyro and PyTorch.

The public names are imported lazily (PEP 562), so light submodules such as
``mmpgm.features`` (used by data-preparation worker processes) do not pay for importing torch,
Pyro and ArviZ.

Pyro settings: importing or using mmpgm changes none of them (see :mod:`mmpgm._pyro` for the
policy); mmpgm models keep their parameters in the modules, like ``torch.nn.Module`` s.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "mmpgm.api",
    "infer": "mmpgm.api",
    "load_model": "mmpgm.io",
    "save_model": "mmpgm.io",
    "MultimodalData": "mmpgm.data",
    "ShardedData": "mmpgm.data_shards",
    "MultimodalHMM": "mmpgm.models.hmm",
    "HMMParams": "mmpgm.models.hmm",
    "MultimodalLDS": "mmpgm.models.lds",
    "LDSParams": "mmpgm.models.lds",
    "LDSPosterior": "mmpgm.results",
    "LDSImputation": "mmpgm.results",
    "GatedMixture": "mmpgm.models.mixture",
    "MixturePosterior": "mmpgm.results",
    "MVRNN": "mmpgm.models.mvrnn",
    "MVRNNPosterior": "mmpgm.results",
    "MVRNNImputation": "mmpgm.results",
    "SiameseEncoder": "mmpgm.models.siamese",
    "SiameseEmbedding": "mmpgm.models.siamese",
    "KNNMemory": "mmpgm.models.siamese",
    "DenoisingExpert": "mmpgm.models.denoising",
    "GatedDenoisers": "mmpgm.models.denoising",
    "finetune_into_embedding": "mmpgm.models.denoising",
    "gated_centre_classify": "mmpgm.models.denoising",
    "FitResult": "mmpgm.inference.result",
    "ConvergenceWarning": "mmpgm.inference.result",
    "Posterior": "mmpgm.results",
    "Imputation": "mmpgm.results",
    "retain_freed_memory": "mmpgm._malloc",
}
_SUBMODULES = (
    "observations",
    "ops",
    "models",
    "results",
    "inference",
    "datasets",
    "diagnostics",
    "online",
    "plots",
    "features",
)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"mmpgm.{name}")
    else:
        raise AttributeError(f"module 'mmpgm' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
