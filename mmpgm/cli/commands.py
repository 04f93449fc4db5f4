"""The commands: demo, fit, infer, impute, prep."""

from __future__ import annotations

import inspect
import json
import os
import sys
import time

from .files import (
    _check_out,
    _check_table_streams,
    _collect,
    _data_parts,
    _float_labels,
    _is_shard_glob,
    _load_model,
    _read_data,
    _read_shards,
    _write_output,
)
from .options import _MODEL_OPTIONS, _defaults, _dest, _model_class


def _demo(args) -> int:
    if args.which == "av":
        return _demo_av(args)
    from mmpgm.demos.hmm import run_hmm_demo

    run_hmm_demo(args.out, smoke=args.smoke, seed=args.seed, progress=args.progress)
    return 0


def _demo_av(args) -> int:
    from mmpgm.features import missing_av_requirements

    missing = missing_av_requirements()
    if missing:
        print("mmpgm demo av needs " + " and ".join(missing), file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    print(
        "generating a GRID-layout corpus (espeak-ng speech, a real face photo), preparing it with "
        "0 dB babble and a video patch, training experts and a conditional gate ..."
    )
    t0 = time.perf_counter()
    # corpus generation and preparation belong to data_prep, which only this CLI imports
    from data_prep.grid import prepare_grid
    from data_prep.synth_grid import make_synth_grid
    from mmpgm.data import MultimodalData
    from mmpgm.demos.av import format_table, run_av_demo

    num_speakers, num_utterances = (3, 3) if args.smoke else (5, 8)
    root = os.path.join(args.out, "av")
    corpus = os.path.join(root, "corpus")
    make_synth_grid(
        corpus, num_speakers=num_speakers, num_utterances=num_utterances, seed=args.seed
    )
    npz = os.path.join(root, "babble0dB_patch.npz")
    prepare_grid(
        corpus,
        npz,
        audio_kind="logmel",
        seed=args.seed,
        progress=False,
        corruption={"audio_noise": "babble", "snr_db": 0.0, "video_patch": True},
    )
    result = run_av_demo(MultimodalData.load(npz), smoke=args.smoke, seed=args.seed)
    result.update(speakers=num_speakers, clips=num_speakers * num_utterances)
    print(format_table(result))
    print(
        f"({result['clips']} clips of {result['speakers']} speakers, {result['test_frames']} test "
        f"frames; {time.perf_counter() - t0:.0f} s)"
    )
    with open(os.path.join(args.out, "av_demo.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


def _fit(args) -> int:
    import mmpgm

    family = args.model
    cls = _model_class(family)
    defaults = _defaults(cls)
    _check_out(args.out)
    kwargs = {}
    for flag, per_family, _, _, _ in _MODEL_OPTIONS:
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if family not in per_family:
            fams = " or ".join(per_family)
            raise ValueError(f"{flag}: applies to --model {fams}, not to --model {family}")
        kwargs[per_family[family]] = value
    config = {**defaults, **kwargs}
    paths = [str(p) for p in args.data]
    if len(paths) > 1 or _is_shard_glob(paths[0]):  # .npz shards, streamed by mmpgm.fit
        data = _read_shards(paths if len(paths) > 1 else paths[0], args)
    elif args.cache_shards is not None:
        raise ValueError(
            f"--cache-shards: applies to .npz shards as DATA (a glob or several files), got "
            f"the one file {paths[0]!r}"
        )
    else:
        data = _read_data(paths[0], args, _float_labels(config) if family == "mixture" else ())
    if family == "mixture" and args.method == "em" and not hasattr(data, "obs"):
        raise ValueError(
            "DATA: the gated mixture's EM (--method em) needs the data in memory, got .npz "
            "shards; pass one .npz (the shards concatenated) or use --method svi"
        )
    obs_dims = dict(data.obs_dims)
    if family == "hmm":
        _categorical_dims(obs_dims, data, config["emission"])
    if family == "mixture":
        _mixture_target(kwargs, config, data)
    model = cls(obs_dims, **kwargs)
    res = mmpgm.fit(
        model,
        data,
        method=args.method,
        program=args.program,
        num_steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        num_restarts=args.restarts,
        seed=args.seed,
        progress=args.progress,
    )
    model.save(args.out)
    print(
        json.dumps(
            {
                "model": args.out,
                "family": family,
                "class": type(model).__name__,
                "modalities": dict(data.obs_dims),
                "method": res.method,
                "final_loss_per_frame": res.final_loss,
                "steps": res.num_steps,
                "converged": res.converged,
            }
        )
    )
    return 0


def _categorical_dims(obs_dims, data, emission) -> None:
    """A categorical HMM stream holds class indices in one column: its size is their count
    (over every shard of a sharded corpus, read one at a time)."""
    import torch

    kinds = {m: emission.get(m) if isinstance(emission, dict) else emission for m in obs_dims}
    cats = [m for m in obs_dims if kinds[m] == "categorical"]
    for m in cats:
        if obs_dims[m] != 1:
            raise ValueError(
                f"modality {m!r}: a categorical emission needs one column of class indices, "
                f"got {obs_dims[m]} columns"
            )
    if not cats:
        return
    largest = dict.fromkeys(cats, -1)
    for part in _data_parts(data):
        for m in cats:
            seen = part.obs[m][part.mask[m]]
            if seen.numel() == 0:
                continue
            if not bool(torch.all((seen >= 0) & (seen == seen.round()))):
                raise ValueError(
                    f"modality {m!r}: a categorical emission needs class indices 0, 1, 2, ...; "
                    f"got values such as {sorted(set(seen.flatten().tolist()))[:5]}"
                )
            largest[m] = max(largest[m], int(seen.max()))
    for m in cats:
        if largest[m] < 0:
            raise ValueError(f"modality {m!r}: no observed value to count its classes from")
        obs_dims[m] = max(largest[m] + 1, 2)


def _mixture_target(kwargs, config, data) -> None:
    target, head = config["target"], config["head"]
    names = data.label_names if hasattr(data, "label_names") else tuple(data.labels)
    if target not in names:
        raise ValueError(
            f"the mixture's target label {target!r} is not in the data (its labels: "
            f"{sorted(names) or 'none'}); choose one with --target, or for a table name "
            f"its column with --label {target}=COLUMN"
        )
    need_classes = head == "categorical" and config.get("num_classes") is None
    need_mask_dim = head == "ratio_mask" and config.get("mask_dim") is None
    if not (need_classes or need_mask_dim):
        return
    largest, shape = None, None
    for part in _data_parts(data):  # a sharded corpus: every shard once, one at a time
        y = part.labels[target]
        shape = tuple(y.shape)
        top = int(y.max())
        largest = top if largest is None else max(largest, top)
        if not need_classes:
            break
    if need_classes:
        kwargs["num_classes"] = max(largest + 1, 2)
    if need_mask_dim and len(shape) == 3:
        kwargs["mask_dim"] = int(shape[-1])


def _infer(args) -> int:
    import mmpgm

    ext = _check_out(args.out, (".npz", ".csv", ".tsv"))
    model = _load_model(args.model)
    data = _read_data(args.data, args, _float_labels(model.config()))
    _check_table_streams(data, model, args.data)
    post = mmpgm.infer(
        model,
        data,
        causal=args.causal,
        num_samples=args.samples,
        seed=args.seed,
        map_path=args.map,
    )
    collected = _collect(post, data.lengths, data.num_timesteps)
    _write_output(args.out, ext, collected, data)
    print(f"wrote {args.out}: {', '.join(k for k, _, _ in collected)}")
    return 0


def _impute(args) -> int:
    import math

    import torch

    import mmpgm

    ext = _check_out(args.out, (".npz", ".csv", ".tsv"))
    model = _load_model(args.model)
    impute = getattr(model, "impute", None)
    if impute is None:
        raise ValueError(
            f"{type(model).__name__} has no impute: it predicts its target label from the "
            "streams and does not generate a stream; use 'mmpgm infer'"
        )
    params = inspect.signature(impute).parameters
    kwargs = {}
    for flag, kw in (("--samples", "num_samples"), ("--seed", "seed")):
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if kw not in params:
            raise ValueError(
                f"{flag}: {type(model).__name__}'s impute is exact and draws no samples"
            )
        kwargs[kw] = value
    data = _read_data(args.data, args, _float_labels(model.config()))
    _check_table_streams(data, model, args.data)
    dims = model.data_dims
    if args.modality not in dims:
        raise ValueError(
            f"--modality: unknown modality {args.modality!r}; the model has {list(dims)}"
        )
    if args.modality not in data.obs:  # the stream to impute may be absent from the data
        obs = dict(data.obs)
        first = next(iter(obs.values()))
        shape = (data.num_sequences, data.num_timesteps, dims[args.modality])
        obs[args.modality] = torch.full(shape, math.nan, dtype=first.dtype)
        data = mmpgm.MultimodalData(
            obs, lengths=data.lengths, mask=data.mask, labels=data.labels, meta=data.meta
        )
    res = impute(data, args.modality, **kwargs)
    collected = _collect(res, data.lengths, data.num_timesteps)
    _write_output(args.out, ext, collected, data)
    print(f"wrote {args.out}: {', '.join(k for k, _, _ in collected)}")
    return 0


def _prep(dataset, rest) -> int:
    if dataset == "grid":
        from data_prep import grid

        return grid.main(rest)
    from data_prep import synth_grid

    return synth_grid.main(rest)
