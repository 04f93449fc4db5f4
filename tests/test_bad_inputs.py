"""The bad-input list: what a user passes wrongly, and what mmpgm must answer.

One table: each case is a name, a callable ``case(tmp)`` that triggers it (``tmp``: a fresh
folder), the exception it must raise and a regex of the message (which names the argument, what
was expected and what was got). A case whose exception is ``None`` is a design decision to
accept the input: it must return, with every floating-point number in the result finite.
Every case also checks that no code ran from a pickle (the ``PWNED`` marker file).
"""

from __future__ import annotations

import functools
import math
import os
import pickle

import numpy as np
import pytest
import torch

import mmpgm
from mmpgm import MultimodalData as MD
from mmpgm.inference.em_mixture import fit_em_mixture
from mmpgm.inference.mixture import fit_gate, fit_gate_to_scores, pretrain_experts
from mmpgm.nn.siamese import MLPTower
from mmpgm.online import Filter

N, T = 3, 5
QUIET = dict(num_steps=1, progress=False)
pytestmark = pytest.mark.filterwarnings("ignore")


def _x(D: int, n: int = N, t: int = T, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(D * 100 + n * 10 + t)
    return torch.randn(n, t, D, generator=g).to(dtype) * scale


def _data(labels=None, **obs) -> MD:
    """Modalities ``a`` (2-D) and ``b`` (3-D) unless given; the mixture's label when asked."""
    obs = obs or {"a": _x(2), "b": _x(3)}
    return MD(obs, labels=labels)


def _speech() -> dict:
    return {"speech": torch.tensor([[0, 1, 0, 1, 1], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0]])}


FAMILIES = {
    "hmm": lambda **k: mmpgm.MultimodalHMM({"a": 2, "b": 3}, **{"num_shared_states": 2, **k}),
    "lds": lambda **k: mmpgm.MultimodalLDS({"a": 2, "b": 3}, **{"shared_dim": 1, **k}),
    "mvrnn": lambda **k: mmpgm.MVRNN(
        {"a": 2, "b": 3}, **{"hidden_dim": 4, "shared_dim": 2, "private_dim": 1, **k}
    ),
    "mixture": lambda **k: mmpgm.GatedMixture(
        {"a": 2, "b": 3}, **{"hidden_dim": 4, "gate_hidden_dim": 4, **k}
    ),
}
CLASSES = {
    "hmm": mmpgm.MultimodalHMM,
    "lds": mmpgm.MultimodalLDS,
    "mvrnn": mmpgm.MVRNN,
    "mixture": mmpgm.GatedMixture,
}
SIZE = {
    "hmm": "num_shared_states",
    "lds": "shared_dim",
    "mvrnn": "shared_dim",
    "mixture": "hidden_dim",
}


@functools.cache
def _model(family: str):
    """A tiny model per family, shared by the cases that raise before touching it."""
    return FAMILIES[family]()


def _fit(model, data, **kw):
    return mmpgm.fit(model, data, **{**QUIET, **kw})


def _good(family: str) -> MD:
    return _data(labels=_speech() if family == "mixture" else None)


# ---------------------------------------------------------------------- files
def _text(tmp):
    p = tmp / "notes.txt"
    p.write_text("hello world\n")
    return p


def _empty(tmp):
    p = tmp / "empty.pt"
    p.write_bytes(b"")
    return p


class _Evil:
    """Unpickling this runs a shell command (a marker file): it must never happen."""

    def __init__(self, tmp):
        self.marker = str(tmp / "PWNED")

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_torch(tmp):
    p = tmp / "evil.pt"
    torch.save({"x": _Evil(tmp)}, p)
    return p


def _evil_pickle(tmp):
    p = tmp / "evil.pkl"
    with open(p, "wb") as f:
        pickle.dump(_Evil(tmp), f)
    return p


def _model_file(tmp):
    p = tmp / "hmm.pt"
    _model("hmm").save(p)
    return p


def _truncated(tmp):
    p = _model_file(tmp)
    raw = p.read_bytes()
    q = tmp / "truncated.pt"
    q.write_bytes(raw[: len(raw) // 2])
    return q


def _checkpoint(tmp):
    p = tmp / "fit.ckpt"
    mmpgm.fit(FAMILIES["hmm"](), _good("hmm"), checkpoint=p, **QUIET)
    return p


def _npz(tmp, data=None):
    p = tmp / "data.npz"
    (data or _good("hmm")).save(p)
    return p


def _fake_header(tmp, cls="MultimodalHMM"):
    p = tmp / "fake.pt"
    header = {"mmpgm_format": 1, "class": cls, "config": {"obs_dims": {"a": 2}}}
    torch.save({**header, "state_dict": {}, "dtype": "float32"}, p)
    return p


# ---------------------------------------------------------------------- the table
CASES: list[tuple] = []


def case(name, fn, exc, match=None):
    CASES.append(pytest.param(fn, exc, match, id=name))


def _inf_at(x, n=0, t=1):
    x = x.clone()
    x[n, t, 0] = math.inf
    return x


def _nan_all(x):
    return torch.full_like(x, math.nan)


# data: shapes, sizes, dtypes, values
case(
    "data 2-D",
    lambda tmp: MD({"a": torch.zeros(N, T)}),
    ValueError,
    r"obs\['a'\]: expected shape \(num_sequences, num_timesteps, obs_dim\), got \(3, 5\)",
)
case(
    "data 4-D",
    lambda tmp: MD({"a": torch.zeros(N, T, 2, 1)}),
    ValueError,
    r"obs\['a'\]: expected shape .* got \(3, 5, 2, 1\)",
)
case(
    "data 0 sequences",
    lambda tmp: MD({"a": _x(2, n=0)}),
    ValueError,
    r"obs: expected at least one sequence.*N=0",
)
case(
    "data T = 0",
    lambda tmp: MD({"a": _x(2, t=0)}),
    ValueError,
    r"obs: expected at least one sequence and one frame.*T=0",
)
case(
    "data obs_dim 0",
    lambda tmp: MD({"a": _x(0)}),
    ValueError,
    r"obs\['a'\]: expected obs_dim >= 1.*\(3, 5, 0\)",
)
case("data no modality", lambda tmp: MD({}), ValueError, r"obs: expected at least one modality")
case("data not a dict", lambda tmp: MD(_x(2)), TypeError, r"obs: expected a dict .* got Tensor")
case(
    "data modality name int",
    lambda tmp: MD({1: _x(2)}),
    TypeError,
    r"obs: modality names must be str",
)
case(
    "data modality name empty",
    lambda tmp: MD({"": _x(2)}),
    TypeError,
    r"obs: modality names must be str \(non-empty\)",
)
case(
    "data mismatched N",
    lambda tmp: MD({"a": _x(2), "b": _x(2, n=2)}),
    ValueError,
    r"obs\['b'\]: num_sequences 2 differs from obs\['a'\]'s 3",
)
case(
    "data mismatched T",
    lambda tmp: MD({"a": _x(2), "b": _x(2, t=4)}),
    ValueError,
    r"obs\['b'\]: num_timesteps 4 differs .*pass lengths",
)
case(
    "data bool dtype",
    lambda tmp: MD({"a": torch.ones(N, T, 1, dtype=torch.bool)}),
    TypeError,
    r"obs\['a'\]: expected a real numeric array, got torch.bool",
)
case(
    "data complex dtype",
    lambda tmp: MD({"a": torch.zeros(N, T, 2, dtype=torch.complex64)}),
    TypeError,
    r"obs\['a'\]: expected a real numeric array, got torch.complex64",
)
case(
    "data object array",
    lambda tmp: MD({"a": np.array([[[1, "x"]]], dtype=object)}),
    TypeError,
    r"obs\['a'\]: expected a numeric array, got dtype object",
)
case(
    "data string",
    lambda tmp: MD({"a": "abc"}),
    TypeError,
    r"obs\['a'\]: expected a torch.Tensor, a numpy array or a list, got str",
)
case(
    "data ragged dims differ",
    lambda tmp: MD({"a": [np.zeros((3, 2)), np.zeros((4, 3))]}),
    ValueError,
    r"obs\['a'\]: all sequences must share obs_dim, got dims \[2, 3\]",
)
case(
    "data inf in an observed frame",
    lambda tmp: MD({"a": _inf_at(_x(2))}),
    ValueError,
    r"obs\['a'\]: expected finite values or NaN \(missing\).*\+/-inf.*\[\[0, 1\]\]",
)
case(
    "data every frame NaN",
    lambda tmp: MD({"a": _nan_all(_x(2))}),
    ValueError,
    r"obs: sequences \[0, 1, 2\] have no observed frame",
)
case(
    "data int dtype (accepted: categorical / counts)",
    lambda tmp: MD({"a": torch.randint(0, 3, (N, T, 1))}).obs["a"],
    None,
)
case(
    "data float16 (accepted: stored in the default dtype)",
    lambda tmp: MD({"a": _x(2).half()}).obs["a"].dtype == torch.float32,
    None,
)
case("data numpy (accepted)", lambda tmp: MD({"a": np.ones((N, T, 2))}).obs["a"], None)
case("data nested lists (accepted)", lambda tmp: MD({"a": _x(2).tolist()}).obs["a"], None)
case(
    "data ragged list (accepted: padded, lengths)",
    lambda tmp: MD({"a": [np.ones((3, 2)), np.ones((5, 2))]}).lengths,
    None,
)
# masks
case(
    "mask wrong shape",
    lambda tmp: MD({"a": _x(2)}, mask={"a": torch.ones(N, 4, dtype=torch.bool)}),
    ValueError,
    r"mask\['a'\]: expected shape \(3, 5\), got \(3, 4\)",
)
case(
    "mask (N, T, 1)",
    lambda tmp: MD({"a": _x(2)}, mask={"a": torch.ones(N, T, 1, dtype=torch.bool)}),
    ValueError,
    r"mask\['a'\]: expected shape \(3, 5\), got \(3, 5, 1\)",
)
case(
    "mask of fractions",
    lambda tmp: MD({"a": _x(2)}, mask={"a": torch.full((N, T), 0.5)}),
    ValueError,
    r"mask\['a'\]: expected booleans \(or 0/1\)",
)
case(
    "mask of a string",
    lambda tmp: MD({"a": _x(2)}, mask={"a": "yes"}),
    TypeError,
    r"mask\['a'\]: expected a torch.Tensor",
)
case(
    "mask unknown modality",
    lambda tmp: MD({"a": _x(2)}, mask={"z": torch.ones(N, T, dtype=torch.bool)}),
    ValueError,
    r"mask: unknown modality 'z'",
)
case(
    "mask not a dict",
    lambda tmp: MD({"a": _x(2)}, mask=torch.ones(N, T, dtype=torch.bool)),
    TypeError,
    r"mask: expected a dict",
)
case(
    "mask hides every frame",
    lambda tmp: MD({"a": _x(2)}, mask={"a": torch.zeros(N, T, dtype=torch.bool)}),
    ValueError,
    r"obs: sequences \[0, 1, 2\] have no observed frame in any modality",
)
case(
    "mask of 0/1 ints (accepted)",
    lambda tmp: MD({"a": _x(2)}, mask={"a": torch.ones(N, T, dtype=torch.int64)}).mask["a"],
    None,
)
# lengths
case(
    "lengths > T",
    lambda tmp: MD({"a": _x(2)}, lengths=[5, 6, 5]),
    ValueError,
    r"lengths: expected values in \[1, num_timesteps=5\], got min 5 and max 6",
)
case(
    "lengths 0",
    lambda tmp: MD({"a": _x(2)}, lengths=[5, 0, 5]),
    ValueError,
    r"lengths: expected values in \[1, .*min 0",
)
case(
    "lengths negative",
    lambda tmp: MD({"a": _x(2)}, lengths=[5, -1, 5]),
    ValueError,
    r"lengths: expected values in \[1, .*min -1",
)
case(
    "lengths wrong size",
    lambda tmp: MD({"a": _x(2)}, lengths=[5, 5]),
    ValueError,
    r"lengths: expected shape \(3,\), got \(2,\)",
)
case(
    "lengths 2-D",
    lambda tmp: MD({"a": _x(2)}, lengths=torch.full((N, 1), T)),
    ValueError,
    r"lengths: expected shape \(3,\), got \(3, 1\)",
)
case(
    "lengths fractional floats",
    lambda tmp: MD({"a": _x(2)}, lengths=torch.tensor([5.0, 4.5, 3.0])),
    TypeError,
    r"lengths: expected integers, got \[5.0, 4.5, 3.0\]",
)
case(
    "lengths NaN",
    lambda tmp: MD({"a": _x(2)}, lengths=torch.tensor([5.0, math.nan, 3.0])),
    TypeError,
    r"lengths: expected integers",
)
case(
    "lengths bool",
    lambda tmp: MD({"a": _x(2)}, lengths=torch.ones(N, dtype=torch.bool)),
    TypeError,
    r"lengths: expected integers, got dtype torch.bool",
)
case(
    "lengths scalar",
    lambda tmp: MD({"a": _x(2)}, lengths=5),
    TypeError,
    r"lengths: expected a torch.Tensor, a numpy array or a list, got int",
)
case(
    "lengths integral floats (accepted)",
    lambda tmp: MD({"a": _x(2)}, lengths=torch.tensor([5.0, 4.0, 3.0])).lengths,
    None,
)
# labels (container level)
case(
    "labels wrong N",
    lambda tmp: MD({"a": _x(2)}, labels={"y": torch.zeros(2)}),
    ValueError,
    r"labels\['y'\]: expected shape \(3,\), \(3, 5\) or \(3, 5, ...\), got \(2,\)",
)
case(
    "labels wrong T",
    lambda tmp: MD({"a": _x(2)}, labels={"y": torch.zeros(N, 4)}),
    ValueError,
    r"labels\['y'\]: expected shape .*got \(3, 4\)",
)
case(
    "labels complex",
    lambda tmp: MD({"a": _x(2)}, labels={"y": torch.zeros(N, dtype=torch.complex64)}),
    TypeError,
    r"labels\['y'\]: expected a real array",
)
# indexing and the container's methods
case(
    "data[N] (out of range)",
    lambda tmp: _data()[N],
    IndexError,
    r"index: expected a sequence index in \[-3, 2\], got 3",
)
case(
    "data[-N-1]",
    lambda tmp: _data()[-N - 1],
    IndexError,
    r"index: expected a sequence index in \[-3, 2\], got -4",
)
case(
    "data[1.5]",
    lambda tmp: _data()[1.5],
    TypeError,
    r"index: expected an int, a slice or an index array, got float",
)
case(
    "data[index array out of range]",
    lambda tmp: _data()[torch.tensor([0, 7])],
    IndexError,
    r"index: expected sequence indices in \[-3, 2\], got \[7\]",
)
case(
    "data[bool mask of another length]",
    lambda tmp: _data()[torch.tensor([True, False])],
    ValueError,
    r"index: expected a bool mask of shape \(3,\), got \(2,\)",
)
case(
    "data[float index array]",
    lambda tmp: _data()[torch.tensor([0.0])],
    TypeError,
    r"index: expected a 1-D array of int sequence indices",
)
case(
    "iterating over data stops (no hang)",
    lambda tmp: [len(s) for s in _data()] == [1, 1, 1] or 1 / 0,
    None,
)
case(
    "batches(0)",
    lambda tmp: list(_data().batches(0)),
    ValueError,
    r"batch_size: expected a positive int, got 0",
)
case(
    "filled(unknown)",
    lambda tmp: _data().filled("z"),
    ValueError,
    r"modality: unknown modality 'z'",
)
case(
    "to(int dtype)",
    lambda tmp: _data().to(dtype=torch.int64),
    TypeError,
    r"dtype: expected a floating torch.dtype",
)
case(
    "split(1.5)",
    lambda tmp: _data().split(1.5),
    ValueError,
    r"fraction: expected a number in \(0, 1\), got 1.5",
)
case(
    "MultimodalData.load missing file",
    lambda tmp: MD.load(tmp / "nope.npz"),
    FileNotFoundError,
    r"nope.npz",
)
case(
    "MultimodalData.load empty file",
    lambda tmp: MD.load(_empty(tmp)),
    ValueError,
    r"empty.pt: not a MultimodalData .npz file",
)
case(
    "MultimodalData.load text file",
    lambda tmp: MD.load(_text(tmp)),
    ValueError,
    r"notes.txt: not a MultimodalData .npz file",
)
case(
    "MultimodalData.load a model file",
    lambda tmp: MD.load(_model_file(tmp)),
    ValueError,
    r"hmm.pt: no 'obs/<modality>' arrays found",
)
case(
    "MultimodalData.load path int",
    lambda tmp: MD.load(3),
    TypeError,
    r"path: expected a file path \(str or os.PathLike\), got 3",
)
case(
    "MultimodalData.save missing folder",
    lambda tmp: _data().save(tmp / "no" / "d.npz"),
    ValueError,
    r"path: expected a path in an existing folder.*does not exist",
)
case(
    "ShardedData glob matching nothing",
    lambda tmp: mmpgm.ShardedData(str(tmp / "s-*.npz")),
    ValueError,
    r"paths_or_glob: no file matches",
)
case(
    "ShardedData empty list",
    lambda tmp: mmpgm.ShardedData([]),
    TypeError,
    r"paths_or_glob: expected a glob pattern",
)
case(
    "ShardedData text file",
    lambda tmp: mmpgm.ShardedData(str(_text(tmp))),
    ValueError,
    r"notes.txt: not a MultimodalData .npz file",
)
case(
    "ShardedData missing file",
    lambda tmp: mmpgm.ShardedData(str(tmp / "nope.npz")),
    FileNotFoundError,
    r"nope.npz",
)
case(
    "fit ShardedData lacking a modality",
    lambda tmp: mmpgm.fit(
        _model("hmm"), mmpgm.ShardedData(str(_npz(tmp, _data(a=_x(2))))), **QUIET
    ),
    ValueError,
    r"data: the model expects modality 'b', which the data lacks",
)

# model construction, every family
for fam, make in FAMILIES.items():
    k, cls = SIZE[fam], CLASSES[fam]
    for bad in (0, -1, 2.0, True, "2"):
        case(
            f"{fam} {k}={bad!r}",
            lambda tmp, make=make, k=k, bad=bad: make(**{k: bad}),
            ValueError,
            rf"{k}: expected a positive int, got {bad!r}".replace("(", r"\(").replace(")", r"\)"),
        )
    case(
        f"{fam} unknown keyword",
        lambda tmp, make=make: make(bogus=1),
        TypeError,
        r"unexpected keyword argument 'bogus'",
    )
    case(
        f"{fam} obs_dims empty",
        lambda tmp, cls=cls: cls({}),
        TypeError,
        r"obs_dims: expected a non-empty dict",
    )
    case(
        f"{fam} obs_dims a list",
        lambda tmp, cls=cls: cls(["a", "b"]),
        TypeError,
        r"obs_dims: expected a non-empty dict",
    )
    case(
        f"{fam} obs_dims dim 0",
        lambda tmp, cls=cls: cls({"a": 0}),
        ValueError,
        r"obs_dims\['a'\]: expected a positive int, got 0",
    )
    case(
        f"{fam} obs_dims dim 2.0",
        lambda tmp, cls=cls: cls({"a": 2.0}),
        ValueError,
        r"obs_dims\['a'\]: expected a positive int, got 2.0",
    )
    case(
        f"{fam} obs_dims name ''",
        lambda tmp, cls=cls: cls({"": 2}),
        TypeError,
        r"obs_dims: modality names must be non-empty str",
    )
    case(
        f"{fam} obs_dims name with '.'",
        lambda tmp, cls=cls: cls({"a.b": 2}),
        ValueError,
        r"obs_dims: modality names cannot contain '.'",
    )
    case(
        f"{fam} obs_dims name 'shared'",
        lambda tmp, cls=cls: cls({"shared": 2}),
        ValueError,
        r"obs_dims: 'shared' is reserved",
    )

case(
    "hmm num_private_states 0",
    lambda tmp: FAMILIES["hmm"](num_private_states=0),
    ValueError,
    r"num_private_states\['a'\]: expected a positive int",
)
case(
    "hmm num_private_states unknown modality",
    lambda tmp: FAMILIES["hmm"](num_private_states={"a": 1, "z": 1}),
    ValueError,
    r"num_private_states: unknown modalities \['z'\]",
)
case(
    "hmm emission misspelt",
    lambda tmp: FAMILIES["hmm"](emission="diagonal"),
    ValueError,
    r"emission: unknown observation model 'diagonal'; expected one of",
)
case(
    "hmm concentration NaN",
    lambda tmp: FAMILIES["hmm"](concentration=math.nan),
    ValueError,
    r"concentration: expected a finite float >= 1.0, got nan",
)
case(
    "hmm sensor_faults unknown modality",
    lambda tmp: FAMILIES["hmm"](sensor_faults=["z"]),
    ValueError,
    r"sensor_faults: unknown modalities \['z'\]; the model has \['a', 'b'\]",
)
case(
    "hmm sensor_faults a string",
    lambda tmp: FAMILIES["hmm"](sensor_faults="a"),
    TypeError,
    r"sensor_faults: expected a bool, a list",
)
case(
    "hmm categorical with 1 category",
    lambda tmp: mmpgm.MultimodalHMM({"c": 1}, 2, emission="categorical"),
    ValueError,
    r"num_categories: expected an int >= 2, got 1",
)
case(
    "lds sensor_faults unknown modality",
    lambda tmp: FAMILIES["lds"](sensor_faults={"z": True}),
    ValueError,
    r"sensor_faults: unknown modalities \['z'\]",
)
case(
    "lds noise misspelt",
    lambda tmp: FAMILIES["lds"](noise="diagonal"),
    ValueError,
    r"noise\['a'\]: expected 'diag' or 'full', got 'diagonal'",
)
case(
    "lds private_dim -1",
    lambda tmp: FAMILIES["lds"](private_dim=-1),
    ValueError,
    r"private_dim\['a'\]: expected a non-negative int, got -1",
)
case(
    "lds stable 'yes'",
    lambda tmp: FAMILIES["lds"](stable="yes"),
    ValueError,
    r"stable: expected True or False, got 'yes'",
)
case(
    "lds max_spectral_norm 1.5",
    lambda tmp: FAMILIES["lds"](max_spectral_norm=1.5),
    ValueError,
    r"max_spectral_norm: expected a float in \(0, 1\)",
)
case(
    "mvrnn likelihood misspelt",
    lambda tmp: FAMILIES["mvrnn"](likelihood="gausian"),
    ValueError,
    r"likelihood\['a'\]: expected one of \['bernoulli', 'gaussian'\]",
)
case(
    "mvrnn kl_annealing a string",
    lambda tmp: FAMILIES["mvrnn"](kl_annealing="linear"),
    TypeError,
    r"kl_annealing: expected a sequence of KL weights",
)
case(
    "mvrnn tbptt 0",
    lambda tmp: FAMILIES["mvrnn"](tbptt=0),
    ValueError,
    r"tbptt: expected a positive int, got 0",
)
case(
    "mixture gate misspelt",
    lambda tmp: FAMILIES["mixture"](gate="markv"),
    ValueError,
    r"gate: expected one of \['conditional', 'markov', 'recurrent'\], got 'markv'",
)
case(
    "mixture head misspelt",
    lambda tmp: FAMILIES["mixture"](head="bernouli"),
    ValueError,
    r"head: expected one of .*got 'bernouli'",
)
case(
    "mixture categorical without num_classes",
    lambda tmp: FAMILIES["mixture"](head="categorical"),
    ValueError,
    r"num_classes: expected an int >= 2",
)
case(
    "mixture gate_inputs misspelt",
    lambda tmp: FAMILIES["mixture"](gate_inputs=("feature",)),
    ValueError,
    r"gate_inputs: expected distinct names from",
)
case(
    "mixture co_learning_units > hidden_dim",
    lambda tmp: FAMILIES["mixture"](co_learning_units=100),
    ValueError,
    r"co_learning_units: expected <= hidden_dim=4, got 100",
)
case(
    "siamese tower None",
    lambda tmp: mmpgm.SiameseEncoder(None),
    TypeError,
    r"tower: expected a torch.nn.Module, got NoneType",
)
case(
    "siamese margin 0",
    lambda tmp: mmpgm.SiameseEncoder(MLPTower(4, (4,), 2), margin=0),
    ValueError,
    r"margin: expected a finite positive float, got 0",
)
case(
    "siamese balance misspelt",
    lambda tmp: mmpgm.SiameseEncoder(MLPTower(4, (4,), 2), balance="clas"),
    ValueError,
    r"balance: expected one of \['class', 'frame'\]",
)
case(
    "siamese embed of an infinite item",
    lambda tmp: mmpgm.SiameseEncoder(MLPTower(4, (4,), 2)).embed(
        torch.tensor([[0.0, 1.0, math.inf, 2.0]])
    ),
    ValueError,
    r"x: expected finite values \(NaN marks a missing item\), got 1 infinite value",
)
case(
    "tower input_dim 0",
    lambda tmp: MLPTower(0, (4,), 2),
    ValueError,
    r"input_dim: expected a positive int, got 0",
)
case(
    "denoiser input_dim 0",
    lambda tmp: mmpgm.DenoisingExpert(0),
    ValueError,
    r"input_dim: expected a positive int, got 0",
)
case(
    "denoiser noisy == clean",
    lambda tmp: mmpgm.DenoisingExpert(4, noisy="x", clean="x"),
    ValueError,
    r"clean: expected a modality other than noisy='x'",
)
case(
    "gated denoisers without experts",
    lambda tmp: mmpgm.GatedDenoisers([]),
    TypeError,
    r"experts: expected a non-empty list",
)

# fit / infer / log_likelihood / impute / sample, every family
for fam in FAMILIES:
    m = functools.partial(_model, fam)
    good = functools.partial(_good, fam)
    lab = _speech() if fam == "mixture" else None
    case(
        f"fit {fam} method misspelt",
        lambda tmp, m=m, good=good: mmpgm.fit(m(), good(), method="sgd"),
        ValueError,
        r"method: expected one of \['svi', 'em'\], got 'sgd'",
    )
    case(
        f"fit {fam} program misspelt",
        lambda tmp, m=m, good=good: _fit(m(), good(), program="colapsed"),
        ValueError,
        r"program: expected one of \(.*\) for \w+, got 'colapsed'",
    )
    for bad in (0, -1, 2.0):
        case(
            f"fit {fam} num_steps={bad}",
            lambda tmp, m=m, good=good, bad=bad: mmpgm.fit(
                m(), good(), num_steps=bad, progress=False
            ),
            ValueError,
            rf"num_steps: expected a positive int, got {bad}",
        )
    for bad in (0, -1, math.nan, "0.1"):
        case(
            f"fit {fam} lr={bad!r}",
            lambda tmp, m=m, good=good, bad=bad: _fit(m(), good(), lr=bad),
            ValueError,
            rf"lr: expected a finite positive float or None, got {bad!r}",
        )
    case(
        f"fit {fam} batch_size 0",
        lambda tmp, m=m, good=good: _fit(m(), good(), batch_size=0),
        ValueError,
        r"batch_size: expected a positive int or None, got 0",
    )
    case(
        f"fit {fam} seed -1",
        lambda tmp, m=m, good=good: _fit(m(), good(), seed=-1),
        ValueError,
        r"seed: expected a non-negative int, got -1",
    )
    case(
        f"fit {fam} elbo a string",
        lambda tmp, m=m, good=good: _fit(m(), good(), elbo="trace"),
        TypeError,
        r"elbo: expected a pyro.infer.ELBO instance",
    )
    case(
        f"fit {fam} progress 'no'",
        lambda tmp, m=m, good=good: _fit(m(), good(), progress="no"),
        ValueError,
        r"progress: expected True or False, got 'no'",
    )
    case(
        f"fit {fam} unknown keyword",
        lambda tmp, m=m, good=good: _fit(m(), good(), bogus=1),
        TypeError,
        r"unexpected keyword argument 'bogus'",
    )
    case(
        f"fit {fam} data a dict",
        lambda tmp, m=m: _fit(m(), {"a": _x(2)}),
        TypeError,
        r"data: expected a MultimodalData or ShardedData, got dict",
    )
    case(
        f"fit {fam} unknown modality",
        lambda tmp, m=m, lab=lab: _fit(m(), _data(lab, a=_x(2), b=_x(3), c=_x(1))),
        ValueError,
        r"data: unknown modality 'c'; the model's modalities are \['a', 'b'\]",
    )
    case(
        f"fit {fam} missing modality",
        lambda tmp, m=m, lab=lab: _fit(m(), _data(lab, a=_x(2))),
        ValueError,
        r"data: the model expects modality 'b', which the data lacks",
    )
    case(
        f"fit {fam} wrong feature size",
        lambda tmp, m=m, lab=lab: _fit(m(), _data(lab, a=_x(2), b=_x(4))),
        ValueError,
        r"data.obs\['b'\]: the model expects obs_dim 3, got 4",
    )
    case(
        f"fit {fam} checkpoint in a missing folder",
        lambda tmp, m=m, good=good: _fit(m(), good(), checkpoint=tmp / "no" / "c.ckpt"),
        ValueError,
        r"checkpoint: expected a path in an existing folder.*does not exist",
    )
    for what, file in (("text", _text), ("empty", _empty), ("code-running pickle", _evil_torch)):
        case(
            f"fit {fam} resume from a {what} file",
            lambda tmp, m=m, good=good, file=file: _fit(m(), good(), checkpoint=file(tmp)),
            ValueError,
            r"checkpoint: .* is not an mmpgm checkpoint",
        )
    case(
        f"fit {fam} resume from a model file",
        lambda tmp, m=m, good=good: _fit(m(), good(), checkpoint=_model_file(tmp)),
        ValueError,
        r"checkpoint: .*hmm.pt is an mmpgm model file \(model.save\), not a checkpoint",
    )
    case(
        f"fit {fam} data too large for float32",
        lambda tmp, m=m, lab=lab: _fit(m(), _data(lab, a=_x(2, scale=1e30), b=_x(3))),
        ValueError,
        r"data.obs\['a'\]: expected observed values of magnitude <= 1.84e\+19 .*float32.*got up to",
    )
    case(
        f"infer {fam} float64 data overflowing float32",
        lambda tmp, m=m, lab=lab: mmpgm.infer(
            m(), _data(lab, a=_x(2, dtype=torch.float64, scale=1e300), b=_x(3))
        ),
        ValueError,
        r"data.obs\['a'\]: expected observed values of magnitude .*torch.float64",
    )
    case(
        f"infer {fam} float64 data (accepted: cast to the model's dtype)",
        lambda tmp, m=m, lab=lab: (
            mmpgm.infer(
                m(), _data(lab, a=_x(2, dtype=torch.float64), b=_x(3, dtype=torch.float64))
            ).log_likelihood
        ),
        None,
    )
    case(
        f"fit {fam} batch_size > N (accepted: one batch of all)",
        lambda tmp, fam=fam, good=good: _fit(FAMILIES[fam](), good(), batch_size=10).losses,
        None,
    )
    case(
        f"infer {fam} unknown modality",
        lambda tmp, m=m, lab=lab: mmpgm.infer(m(), _data(lab, a=_x(2), b=_x(3), c=_x(1))),
        ValueError,
        r"data: unknown modality 'c'",
    )
    case(
        f"infer {fam} missing modality",
        lambda tmp, m=m, lab=lab: mmpgm.infer(m(), _data(lab, a=_x(2))),
        ValueError,
        r"data: the model expects modality 'b', which the data lacks",
    )
    case(
        f"infer {fam} num_samples -1",
        lambda tmp, m=m, good=good: mmpgm.infer(m(), good(), num_samples=-1),
        ValueError,
        r"num_samples: expected a non-negative int, got -1",
    )
    case(
        f"infer {fam} causal 'yes'",
        lambda tmp, m=m, good=good: mmpgm.infer(m(), good(), causal="yes"),
        ValueError,
        r"causal: expected True or False, got 'yes'",
    )
    case(
        f"infer {fam} seed -1",
        lambda tmp, m=m, good=good: mmpgm.infer(m(), good(), seed=-1),
        ValueError,
        r"seed: expected a non-negative int or None, got -1",
    )
    case(
        f"{fam} log_likelihood missing modality",
        lambda tmp, m=m, lab=lab: m().log_likelihood(_data(lab, a=_x(2))),
        ValueError,
        r"data: the model expects modality 'b'",
    )
    case(
        f"{fam} log_likelihood of a dict",
        lambda tmp, m=m: m().log_likelihood({"a": _x(2)}),
        TypeError,
        r"data: expected a MultimodalData, got dict",
    )
    if fam != "mixture":
        case(
            f"{fam} impute unknown modality",
            lambda tmp, m=m, good=good: m().impute(good(), "z"),
            ValueError,
            r"modality: unknown modality 'z'; the model has \['a', 'b'\]",
        )
        case(
            f"{fam} impute from data with another modality",
            lambda tmp, m=m: m().impute(_data(a=_x(2), b=_x(3), c=_x(1)), "a"),
            ValueError,
            r"data: unknown modality 'c'",
        )
        case(
            f"{fam} impute from data lacking a modality",
            lambda tmp, m=m: m().impute(_data(a=_x(2)), "b"),
            ValueError,
            r"data: the model expects modality 'b'",
        )
        case(
            f"{fam} sample 0 sequences",
            lambda tmp, m=m: m().sample(0, T),
            ValueError,
            r"num_sequences: expected a positive int, got 0",
        )
        case(
            f"{fam} sample T = 0",
            lambda tmp, m=m: m().sample(N, 0),
            ValueError,
            r"num_timesteps: expected a positive int, got 0",
        )
        for bad in (-1, 1.5, "x"):
            case(
                f"{fam} sample seed={bad!r}",
                lambda tmp, m=m, bad=bad: m().sample(N, T, seed=bad),
                ValueError,
                rf"seed: expected a non-negative int or None, got {bad!r}",
            )

# fit options, EM, labels
case(
    "fit not a model",
    lambda tmp: mmpgm.fit(torch.nn.Linear(2, 2), _data(), **QUIET),
    TypeError,
    r"model: expected an mmpgm model .* got Linear",
)
case(
    "fit mvrnn method='em'",
    lambda tmp: mmpgm.fit(_model("mvrnn"), _data(), method="em", **QUIET),
    ValueError,
    r"method: 'em' is not available for MVRNN",
)
case(
    "fit hmm em with batch_size",
    lambda tmp: mmpgm.fit(_model("hmm"), _data(), method="em", batch_size=2, **QUIET),
    ValueError,
    r"batch_size: applies to method='svi'",
)
case(
    "fit num_restarts 0",
    lambda tmp: mmpgm.fit(_model("hmm"), _data(), num_restarts=0, **QUIET),
    ValueError,
    r"num_restarts: expected a positive int, got 0",
)
case(
    "fit init misspelt",
    lambda tmp: mmpgm.fit(_model("hmm"), _data(), init="random", **QUIET),
    ValueError,
    r"init: expected one of \['auto', 'data', 'none'\]",
)
case(
    "fit tol NaN",
    lambda tmp: mmpgm.fit(_model("hmm"), _data(), tol=math.nan, **QUIET),
    ValueError,
    r"tol: expected a finite float >= 0.0 or None, got nan",
)
case(
    "fit patience -1",
    lambda tmp: mmpgm.fit(_model("hmm"), _data(), patience=-1, **QUIET),
    ValueError,
    r"patience: expected a non-negative int or None",
)
case(
    "fit clip_norm 0",
    lambda tmp: mmpgm.fit(_model("hmm"), _data(), clip_norm=0, **QUIET),
    ValueError,
    r"clip_norm: expected a finite positive float",
)
case(
    "fit distributed without a process group",
    lambda tmp: mmpgm.fit(_model("hmm"), _data(), distributed=True, **QUIET),
    ValueError,
    r"distributed=True: torch.distributed is not initialized",
)
case(
    "fit resume a checkpoint of another model type",
    lambda tmp: mmpgm.fit(FAMILIES["lds"](), _good("lds"), checkpoint=_checkpoint(tmp), **QUIET),
    ValueError,
    r"checkpoint: .* was written for a different fit "
    r"\(model class: expected 'MultimodalHMM', got 'MultimodalLDS'\)",
)
case(
    "fit resume with another lr",
    lambda tmp: mmpgm.fit(
        FAMILIES["hmm"](), _good("hmm"), checkpoint=_checkpoint(tmp), lr=0.2, **QUIET
    ),
    ValueError,
    r"checkpoint: .* was written for a different fit \(lr: expected 0.05, got 0.2\)",
)
case(
    "fit resume a truncated checkpoint",
    lambda tmp: mmpgm.fit(FAMILIES["hmm"](), _good("hmm"), checkpoint=_truncated(tmp), **QUIET),
    ValueError,
    r"checkpoint: .*truncated.pt is not an mmpgm checkpoint",
)
for what, y in (
    ("NaN", torch.full((N, T), math.nan)),
    ("0.5", torch.full((N, T), 0.5)),
    ("5 (out of range)", torch.full((N, T), 5)),
    ("-2", torch.full((N, T), -2)),
):
    for method in ("svi", "em"):
        case(
            f"fit hmm {method} labels['shared'] {what}",
            lambda tmp, y=y, method=method: mmpgm.fit(
                _model("hmm"), _data({"shared": y}), method=method, **QUIET
            ),
            ValueError,
            r"data.labels\['shared'\]: expected "
            r"(integer class labels|-1 \(unknown\) or a value in \[0, 1\])",
        )
    case(
        f"infer hmm labels['shared'] {what}",
        lambda tmp, y=y: mmpgm.infer(_model("hmm"), _data({"shared": y})),
        ValueError,
        r"data.labels\['shared'\]: expected",
    )
case(
    "hmm labels['shared'] per sequence",
    lambda tmp: mmpgm.fit(_model("hmm"), _data({"shared": torch.zeros(N)}), **QUIET),
    ValueError,
    r"data.labels\['shared'\]: expected per-frame labels \(N, T\), got \(3,\)",
)
case(
    "hmm categorical value 1.5",
    lambda tmp: mmpgm.fit(
        mmpgm.MultimodalHMM({"c": 3}, 2, emission="categorical"),
        _data(c=torch.full((N, T, 1), 1.5)),
        **QUIET,
    ),
    ValueError,
    r"data.obs\['c'\]: expected category indices in \[0, 2\] .*got \[1.5\]",
)
case(
    "hmm categorical value out of range",
    lambda tmp: mmpgm.infer(
        mmpgm.MultimodalHMM({"c": 3}, 2, emission="categorical"), _data(c=torch.full((N, T, 1), 3))
    ),
    ValueError,
    r"data.obs\['c'\]: expected category indices in \[0, 2\] .*got \[3.0\]",
)
case(
    "mvrnn bernoulli value 2",
    lambda tmp: mmpgm.fit(
        FAMILIES["mvrnn"](likelihood="bernoulli"),
        _data(a=torch.full((N, T, 2), 2.0), b=_x(3).sigmoid()),
        **QUIET,
    ),
    ValueError,
    r"data.obs\['a'\]: expected values in \[0, 1\] for likelihood='bernoulli'",
)
case(
    "mixture without its target label",
    lambda tmp: mmpgm.fit(_model("mixture"), _data(), **QUIET),
    ValueError,
    r"data.labels: the mixture predicts the label 'speech', which the data do not have",
)
case(
    "mixture label out of range",
    lambda tmp: mmpgm.fit(_model("mixture"), _data({"speech": torch.full((N, T), 3)}), **QUIET),
    ValueError,
    r"data.labels\['speech'\]: expected -1 \(unknown\) or a value in \[0, 1\], got \[3\]",
)
case(
    "mixture label 0.5",
    lambda tmp: mmpgm.fit(_model("mixture"), _data({"speech": torch.full((N, T), 0.5)}), **QUIET),
    ValueError,
    r"data.labels\['speech'\]: expected integer class labels",
)
case(
    "mixture label per sequence",
    lambda tmp: mmpgm.fit(_model("mixture"), _data({"speech": torch.zeros(N)}), **QUIET),
    ValueError,
    r"data.labels\['speech'\]: expected per-frame labels \(N, T\), got \(3,\)",
)
case(
    "mixture infer label out of range",
    lambda tmp: mmpgm.infer(_model("mixture"), _data({"speech": torch.full((N, T), 3)})),
    ValueError,
    r"data.labels\['speech'\]: expected -1",
)
case(
    "mixture bool labels (accepted)",
    lambda tmp: (
        mmpgm.fit(
            FAMILIES["mixture"](), _data({"speech": _speech()["speech"].bool()}), **QUIET
        ).losses
    ),
    None,
)
case(
    "siamese fit without its label",
    lambda tmp: mmpgm.fit(mmpgm.SiameseEncoder(MLPTower(4, (4,), 2)), MD({"x": _x(4)}), **QUIET),
    ValueError,
    r"data.labels: the encoder learns from the label 'class'",
)
case(
    "siamese fit with one class",
    lambda tmp: mmpgm.fit(
        mmpgm.SiameseEncoder(MLPTower(4, (4,), 2)),
        MD({"x": _x(4)}, labels={"class": torch.zeros(N, T, dtype=torch.long)}),
        **QUIET,
    ),
    ValueError,
    r"data.labels\['class'\]: expected at least two classes",
)
case(
    "siamese embed wrong size",
    lambda tmp: mmpgm.SiameseEncoder(MLPTower(4, (4,), 2)).embed(torch.zeros(3, 5)),
    ValueError,
    r"x: expected items of size 4 \(..., input_dim\), got \(3, 5\)",
)
case(
    "denoiser fit without the clean modality",
    lambda tmp: mmpgm.fit(
        mmpgm.DenoisingExpert(4, hidden_dims=(4,), bottleneck_dim=2), MD({"noisy": _x(4)}), **QUIET
    ),
    ValueError,
    r"data: the model expects modality 'clean'",
)
case(
    "denoiser denoise wrong size",
    lambda tmp: mmpgm.DenoisingExpert(4, hidden_dims=(4,), bottleneck_dim=2).denoise(
        torch.zeros(3, 5)
    ),
    ValueError,
    r"x: expected a tensor \(..., 4\), got shape \(3, 5\)",
)

# load_model and save
L = mmpgm.load_model
case("load_model missing file", lambda tmp: L(tmp / "nope.pt"), FileNotFoundError, r"nope.pt")
case("load_model a folder", lambda tmp: L(tmp), IsADirectoryError, r"")
case(
    "load_model empty file",
    lambda tmp: L(_empty(tmp)),
    ValueError,
    r"empty.pt: not an mmpgm model file",
)
case(
    "load_model text file",
    lambda tmp: L(_text(tmp)),
    ValueError,
    r"notes.txt: not an mmpgm model file",
)
case(
    "load_model code-running torch file (refused, not run)",
    lambda tmp: L(_evil_torch(tmp)),
    ValueError,
    r"evil.pt: not an mmpgm model file \(UnpicklingError",
)
case(
    "load_model code-running pickle (refused, not run)",
    lambda tmp: L(_evil_pickle(tmp)),
    ValueError,
    r"evil.pkl: not an mmpgm model file",
)
case(
    "load_model truncated file",
    lambda tmp: L(_truncated(tmp)),
    ValueError,
    r"truncated.pt: not an mmpgm model file",
)
case(
    "load_model a checkpoint",
    lambda tmp: L(_checkpoint(tmp)),
    ValueError,
    r"fit.ckpt: not an mmpgm model file \(no mmpgm header\)",
)
case(
    "load_model a data file",
    lambda tmp: L(_npz(tmp)),
    ValueError,
    r"data.npz: not an mmpgm model file",
)
case(
    "load_model unknown class",
    lambda tmp: L(_fake_header(tmp, "os.system")),
    ValueError,
    r"fake.pt: unknown model class 'os.system'",
)
case(
    "load_model header of another model",
    lambda tmp: L(_fake_header(tmp)),
    ValueError,
    r"fake.pt: state_dict does not fit a MultimodalHMM",
)
case(
    "load_model path int",
    lambda tmp: L(3),
    TypeError,
    r"path: expected a file path \(str or os.PathLike\), got 3",
)
case("load_model path None", lambda tmp: L(None), TypeError, r"path: expected a file path")
case(
    "load_model unknown override",
    lambda tmp: L(_model_file(tmp), bogus=1),
    ValueError,
    r"bogus: not a constructor argument saved for MultimodalHMM",
)
case(
    "load_model bad override",
    lambda tmp: L(_model_file(tmp), num_shared_states=0),
    ValueError,
    r"config does not build a MultimodalHMM: num_shared_states: expected a positive int, got 0",
)
case(
    "load_model map_location misspelt",
    lambda tmp: L(_model_file(tmp), map_location="gpu9"),
    ValueError,
    r"map_location: expected a device such as 'cpu' or 'cuda:0', got 'gpu9'",
)
case(
    "save into a missing folder",
    lambda tmp: _model("hmm").save(tmp / "no" / "m.pt"),
    ValueError,
    r"path: expected a path in an existing folder",
)
case(
    "save onto a folder",
    lambda tmp: _model("hmm").save(tmp),
    ValueError,
    r"path: expected a file path, got the folder",
)

# online filters
for fam in ("hmm", "lds"):
    filt = functools.partial(lambda fam: Filter(_model(fam), 2), fam)
    case(
        f"online {fam} unknown modality",
        lambda tmp, filt=filt: filt().step({"z": torch.zeros(2, 1)}),
        ValueError,
        r"frame: unknown modalities \['z'\]; the model has \['a', 'b'\]",
    )
    case(
        f"online {fam} wrong feature size",
        lambda tmp, filt=filt: filt().step({"a": torch.zeros(2, 3)}),
        ValueError,
        r"frame\['a'\]: expected shape \(2, 2\) or \(2,\) for N=1, got \(2, 3\)",
    )
    case(
        f"online {fam} wrong N",
        lambda tmp, filt=filt: filt().step({"a": torch.zeros(3, 2)}),
        ValueError,
        r"frame\['a'\]: expected shape \(2, 2\)",
    )
    case(
        f"online {fam} frame not a dict",
        lambda tmp, filt=filt: filt().step(torch.zeros(2, 2)),
        TypeError,
        r"frame: expected a dict modality -> \(N, D\) array, got Tensor",
    )
    case(
        f"online {fam} inf",
        lambda tmp, filt=filt: filt().step({"a": torch.tensor([[math.inf, 0.0], [0.0, 0.0]])}),
        ValueError,
        r"frame\['a'\]: expected finite values or NaN \(missing\), got \+/-inf",
    )
    case(
        f"online {fam} a string",
        lambda tmp, filt=filt: filt().step({"a": "abc"}),
        TypeError,
        r"frame\['a'\]: expected a real numeric array, got str",
    )
    case(
        f"online {fam} complex",
        lambda tmp, filt=filt: filt().step({"a": torch.zeros(2, 2, dtype=torch.complex64)}),
        TypeError,
        r"frame\['a'\]: expected a real numeric array, got dtype torch.complex64",
    )
    case(
        f"online {fam} 0 streams",
        lambda tmp, fam=fam: Filter(_model(fam), 0),
        ValueError,
        r"num_sequences: expected a positive int, got 0",
    )
    case(
        f"online {fam} nested lists (accepted)",
        lambda tmp, filt=filt: filt().step({"a": [[0.0, 1.0], [1.0, 0.0]]}).log_likelihood,
        None,
    )
    case(
        f"online {fam} NaN row = missing (accepted)",
        lambda tmp, filt=filt: filt().step({"a": [[math.nan, 1.0], [1.0, 0.0]]}).log_likelihood,
        None,
    )
    case(
        f"online {fam} empty frame = prediction (accepted)",
        lambda tmp, filt=filt: filt().step({}).log_likelihood,
        None,
    )
case(
    "online filter of an MVRNN",
    lambda tmp: Filter(_model("mvrnn")),
    TypeError,
    r"model: no streaming filter for MVRNN",
)

# the kNN memory
_mem = lambda: mmpgm.KNNMemory(k=1).add(torch.eye(2), torch.tensor([0, 1]))  # noqa: E731
case("knn k 0", lambda tmp: mmpgm.KNNMemory(k=0), ValueError, r"k: expected a positive int, got 0")
case(
    "knn labels of another size",
    lambda tmp: mmpgm.KNNMemory().add(torch.zeros(3, 2), torch.zeros(2)),
    ValueError,
    r"y: expected one label per item, shape \(3,\), got \(2,\)",
)
case(
    "knn fractional labels",
    lambda tmp: mmpgm.KNNMemory().add(torch.zeros(3, 2), torch.tensor([0.5, 1.0, 0.0])),
    ValueError,
    r"y: expected integer class labels",
)
case(
    "knn NaN items",
    lambda tmp: mmpgm.KNNMemory().add(torch.full((3, 2), math.nan), torch.zeros(3)),
    ValueError,
    r"x: expected finite values, got 6 NaN/inf",
)
case(
    "knn predict before add",
    lambda tmp: mmpgm.KNNMemory().predict(torch.zeros(3, 2)),
    ValueError,
    r"memory: empty; add\(x, y\)",
)
case(
    "knn predict items of another size",
    lambda tmp: _mem().predict(torch.zeros(3, 5)),
    ValueError,
    r"x: embeddings of size 5 do not match the memory's 2",
)
case(
    "knn predict NaN items",
    lambda tmp: _mem().predict(torch.full((1, 2), math.nan)),
    ValueError,
    r"x: expected finite values",
)
case(
    "knn predict a string",
    lambda tmp: _mem().predict("ab"),
    TypeError,
    r"x: expected a real numeric array, got str",
)
case(
    "knn numpy items (accepted)",
    lambda tmp: _mem().predict(np.eye(2)).tolist() == [0, 1] or 1 / 0,
    None,
)


# the mixture's staged training entry points (mmpgm.inference.mixture / em_mixture)
def _mix():
    return FAMILIES["mixture"]()


_SCORES = lambda: (torch.zeros(N, T, 2), torch.ones(N, T, dtype=torch.bool))  # noqa: E731
for _bad in (-1, 0.5, "0"):
    _msg = r"seed: expected a non-negative int, got "
    case(
        f"pretrain_experts seed={_bad!r}",
        lambda tmp, b=_bad: pretrain_experts(_mix(), _good("mixture"), num_steps=1, seed=b),
        ValueError,
        _msg,
    )
    case(
        f"fit_gate seed={_bad!r}",
        lambda tmp, b=_bad: fit_gate(_mix(), _good("mixture"), num_steps=1, seed=b),
        ValueError,
        _msg,
    )
    case(
        f"fit_gate_to_scores seed={_bad!r}",
        lambda tmp, b=_bad: fit_gate_to_scores(
            _mix(), _good("mixture"), *_SCORES(), num_steps=1, seed=b
        ),
        ValueError,
        _msg,
    )
    case(
        f"fit_em_mixture seed={_bad!r}",
        lambda tmp, b=_bad: fit_em_mixture(_mix(), _good("mixture"), num_iters=1, seed=b),
        ValueError,
        _msg,
    )

def _all_finite(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind != "f" or bool(np.isfinite(obj).all())
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


@pytest.mark.parametrize("trigger, exc, match", CASES)
def test_bad_input(trigger, exc, match, tmp_path):
    if exc is None:
        out = trigger(tmp_path)
        assert _all_finite(out), f"accepted input gave non-finite values: {out!r}"
    else:
        with pytest.raises(exc, match=match):
            trigger(tmp_path)
    assert not (tmp_path / "PWNED").exists(), "a pickle ran code"
