"""SVI checkpoints: what :func:`~mmpgm.inference.svi.fit_svi` saves and resumes from.

A checkpoint is one file written by ``torch.save`` and read with ``torch.load(weights_only=True)``
(tensors and plain containers only, so a crafted file cannot run code). It holds

``mmpgm_checkpoint``
    :data:`FORMAT_VERSION` (newer files are refused by name);
``class``, ``config``, ``dtype``
    the model's class name, ``model.config()`` and parameter dtype;
``data_fingerprint``
    :func:`data_fingerprint` of the training data (sizes, modalities, label names and a hash of
    the values, masks, lengths and labels);
``options``
    the fit options that change the trajectory (:func:`fit_options`: lr, batch_size, seed,
    program, clip_norm, the ELBO); ``num_steps``, ``patience`` and ``tol`` may differ;
``step``, ``losses``, ``model``, ``optimizer``
    steps done, the loss of each, the model's and Adam's state dicts;
``rng``
    every random state the loop draws from: torch's CPU generator, the CUDA generator of the
    model's device, numpy's and Python ``random``'s global states (as plain tensors, ints and
    floats) and the minibatch generator, so a resumed fit continues bitwise.

Writes are atomic: a temp file ``<path>.tmp.<pid>.<random>`` in the same folder, flushed and
fsynced, then ``os.replace``; the temp file is removed on any exception, and temp files of the
same checkpoint left by a killed process are removed by :func:`remove_stale_temps`. The file at
``path`` is therefore always either absent, the previous checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import warnings

import numpy as np
import torch

from ..models._savable import content_digest

__all__ = [
    "FORMAT_VERSION",
    "check_compatible",
    "data_fingerprint",
    "fit_options",
    "get_rng_state",
    "load_checkpoint",
    "remove_stale_temps",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 1
"""Version of the checkpoint layout; :func:`load_checkpoint` refuses newer files."""

_TMP = ".tmp."  # temp files of checkpoint ``p`` are ``p + _TMP + "<pid>.<hex>"``
_SAMPLE = 4096  # values of each tensor hashed exactly (a strided sample), besides its sum


# ---------------------------------------------------------------------- fingerprint
def _digest_tensor(h, name: str, t: torch.Tensor) -> None:
    """Feed shape, dtype, the float64 sum and a strided sample of ``t`` into the hash ``h``."""
    t = t.detach()
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    flat = t.reshape(-1)
    if flat.is_floating_point():
        flat = torch.nan_to_num(flat.double(), nan=-1.2345e300, posinf=1e300, neginf=-1e300)
    else:
        flat = flat.double()
    h.update(float(flat.sum()).hex().encode() if flat.numel() else b"empty")
    stride = max(1, flat.numel() // _SAMPLE)
    h.update(flat[::stride].cpu().numpy().tobytes())


def data_fingerprint(data) -> dict:
    """What makes resuming on ``data`` meaningful: sizes, modalities, label names and a content
    hash (sha256 over each tensor's shape, sum and a strided sample of its values)."""
    h = hashlib.sha256()
    for m in data.modalities:
        _digest_tensor(h, f"obs/{m}", data.obs[m])
        _digest_tensor(h, f"mask/{m}", data.mask[m])
    _digest_tensor(h, "lengths", data.lengths)
    for name in sorted(data.labels):
        _digest_tensor(h, f"labels/{name}", torch.as_tensor(data.labels[name]))
    return {
        "num_sequences": int(data.num_sequences),
        "num_timesteps": int(data.num_timesteps),
        "obs_dims": {m: int(d) for m, d in data.obs_dims.items()},
        "labels": sorted(data.labels),
        "content": h.hexdigest()[:16],
    }


def fit_options(*, lr, batch_size, seed, program, clip_norm, elbo) -> dict:
    """The fit options that change the trajectory (``num_steps``, ``patience``, ``tol`` and
    ``checkpoint_every`` do not)."""
    return {
        "lr": float(lr),
        "batch_size": None if batch_size is None else int(batch_size),
        "seed": int(seed),
        "program": str(program),
        "clip_norm": None if clip_norm is None else float(clip_norm),
        "elbo": f"{type(elbo).__name__}(num_particles={getattr(elbo, 'num_particles', None)})",
    }


def _plain(value):
    """Tuples as lists (recursively), so a config compares equal after a save/load."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _dtype_name(model) -> str:
    return str(next(iter(model.parameters())).dtype).replace("torch.", "")


def header(model, fingerprint: dict, options: dict) -> dict:
    """The identifying part of a checkpoint of ``model``."""
    return {
        "mmpgm_checkpoint": FORMAT_VERSION,
        "class": type(model).__name__,
        "config": model.config(),
        "dtype": _dtype_name(model),
        "data_fingerprint": fingerprint,
        "options": options,
    }


def check_compatible(state: dict, path, expected: dict) -> None:
    """Raise ``ValueError("checkpoint: <path> was written for ...")`` naming every entry of the
    header ``expected`` (see :func:`header`) that the loaded ``state`` does not match
    (``expected X`` = the checkpoint's value, ``got Y`` = this fit's)."""
    diffs = []

    def compare(label, saved, current):
        if _plain(saved) != _plain(current):
            diffs.append(f"{label}: expected {saved!r}, got {current!r}")

    compare("model class", state["class"], expected["class"])
    if not diffs:
        saved, current = _plain(state["config"]), _plain(expected["config"])
        for key in sorted(set(saved) | set(current)):
            compare(f"config[{key!r}]", saved.get(key, "<absent>"), current.get(key, "<absent>"))
    compare("dtype", state["dtype"], expected["dtype"])
    saved, current = state["data_fingerprint"], expected["data_fingerprint"]
    for key in current:
        what = "content (hash of values, masks, lengths, labels)" if key == "content" else key
        compare(f"data {what}", saved.get(key, "<absent>"), current[key])
    saved, current = state["options"], expected["options"]
    for key in current:
        compare(key, saved.get(key, "<absent>"), current[key])
    if diffs:
        raise ValueError(
            f"checkpoint: {path} was written for a different fit ({'; '.join(diffs)}); "
            "delete it or pass another path"
        )


# ---------------------------------------------------------------------- random states
def get_rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """Every random state the SVI loop draws from, as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    cuda = None
    if device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "minibatch": generator.get_state(),
    }


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    generator.set_state(state["minibatch"])


# ---------------------------------------------------------------------- files
def _is_stale(name: str, base: str) -> bool:
    """``name`` is a temp file of checkpoint ``base`` whose writer is no longer running."""
    if name == base + ".tmp":  # the temp file name of earlier versions
        return True
    if not name.startswith(base + _TMP):
        return False
    pid = name[len(base + _TMP) :].split(".", 1)[0]
    if not pid.isdigit():
        return False
    pid = int(pid)
    if pid == os.getpid():
        return True  # this process writes one checkpoint at a time, and not now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # a live process of another user (or unknown): leave it
    return False


def remove_stale_temps(path) -> list[str]:
    """Remove the temp files of checkpoint ``path`` left by killed writers; returns their paths."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if _is_stale(name, base):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
            except FileNotFoundError:
                pass
    return removed


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, flush, fsync,
    ``os.replace``); the temp file never outlives an exception."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    state = {**state, "content_digest": content_digest(state)}  # checked by load_checkpoint
    tmp = f"{path}{_TMP}{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_KEYS = (
    ("class", str),
    ("config", dict),
    ("dtype", str),
    ("data_fingerprint", dict),
    ("options", dict),
    ("step", int),
    ("losses", list),
    ("model", dict),
    ("optimizer", dict),
    ("rng", dict),
)
_RNG_KEYS = (
    ("torch", torch.Tensor),
    ("numpy", dict),
    ("python", dict),
    ("minibatch", torch.Tensor),
)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` and check its layout.

    Raises
    ------
    ValueError
        ``path`` is not an mmpgm checkpoint (a foreign, truncated or random file, a model file,
        a code-running payload), has a newer format version, or is corrupted (its contents do
        not match the SHA-256 digest :func:`save_checkpoint` wrote with them).
    """
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: refused below
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001  weights_only runs no code: any failure = foreign
        # (UnpicklingError, BadZipFile, RuntimeError, OSError, EOFError ... from torch's reader)
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(
            f"checkpoint: {path} is not an mmpgm checkpoint (truncated or foreign file: "
            f"{type(err).__name__}: {first}); delete it or pass another path"
        ) from None
    if isinstance(state, dict) and "mmpgm_format" in state and "mmpgm_checkpoint" not in state:
        raise ValueError(
            f"checkpoint: {path} is an mmpgm model file (model.save), not a checkpoint; "
            "pass another path"
        )
    if not isinstance(state, dict) or "mmpgm_checkpoint" not in state:
        raise ValueError(f"checkpoint: {path} is not an mmpgm checkpoint (no mmpgm header)")
    version = state["mmpgm_checkpoint"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version:
        raise ValueError(f"checkpoint: {path} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint: {path} has format version {version}, newer than this mmpgm supports "
            f"(1..{FORMAT_VERSION}); upgrade mmpgm, or delete it or pass another path"
        )
    for table, keys in ((state, _KEYS), (state.get("rng"), _RNG_KEYS)):
        for key, kind in keys:
            if not isinstance(table, dict) or not isinstance(table.get(key), kind):
                got = type(table.get(key)).__name__ if isinstance(table, dict) else "nothing"
                raise ValueError(
                    f"checkpoint: {path} is not an mmpgm checkpoint ({key!r}: expected "
                    f"{kind.__name__}, got {got})"
                )
    digest = state.pop("content_digest", None)  # absent in checkpoints written before it
    if digest is not None and digest != content_digest(state):
        raise ValueError(
            f"checkpoint: {path} is corrupted (its contents do not match the SHA-256 digest "
            "written with them); delete it or pass another path"
        )
    if len(state["losses"]) != state["step"]:
        raise ValueError(
            f"checkpoint: {path} is not an mmpgm checkpoint ({len(state['losses'])} losses "
            f"for step {state['step']})"
        )
    return state
