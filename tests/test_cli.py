"""The command line: fit / infer / impute for every family, table input, one-line errors."""

import inspect
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mmpgm
from mmpgm.cli import build_parser, main
from mmpgm.cli._common import _FAMILIES
from mmpgm.tabular import from_columns, read_table, write_frames, write_table

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = [10, 7, 9, 4]
# tiny sizes: each fit runs a few steps
FIT = {
    "hmm": ["--model", "hmm", "--method", "em", "--steps", "3"],
    "lds": ["--model", "lds", "--steps", "3"],
    "mvrnn": ["--model", "mvrnn", "--hidden-dim", "4", "--shared-dim", "2", "--steps", "2"],
    "mixture": ["--model", "mixture", "--hidden-dim", "4", "--steps", "2"],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same ragged data with missing cells and a per-frame label, as .npz and as .csv."""
    root = tmp_path_factory.mktemp("cli")
    truth = mmpgm.MultimodalHMM({"accel": 2, "gyro": 1}, num_shared_states=2)
    sampled, latents = truth.sample(4, 10, seed=0)
    obs = {k: v.clone() for k, v in sampled.obs.items()}
    obs["accel"][0, 3, 1] = math.nan  # one empty cell: frame 3 of accel unobserved
    obs["gyro"][1, 2] = math.nan
    speech = latents["shared"].clone()
    speech[2, 5] = -1  # an unlabelled frame
    speech[torch.arange(10)[None, :] >= torch.tensor(LENGTHS)[:, None]] = -1  # padding
    data = mmpgm.MultimodalData(obs, lengths=torch.tensor(LENGTHS), labels={"speech": speech})
    data.save(root / "data.npz")
    mapping = write_table(data, root / "data.csv")
    return {"root": root, "npz": root / "data.npz", "csv": root / "data.csv", "data": data,
            "mapping": mapping}  # fmt: skip


def run(argv, capsys):
    """``main(argv)`` in-process: (status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def check_padding(arrays, lengths):
    """Every (N, T, ...) array is NaN (float) or -1 (int) exactly on the padding frames."""
    N, T = len(lengths), max(lengths)
    inside = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    checked = 0
    for key in arrays:
        x = arrays[key]
        if key.startswith("samples"):
            x = np.moveaxis(x, 0, 2)
        if x.ndim < 2 or x.shape[:2] != (N, T):
            continue
        pad = x[~inside]
        if x.dtype.kind == "f":
            assert np.isnan(pad).all(), key
            assert not np.isnan(x[inside]).all(), key
        elif x.dtype.kind in "iu":
            assert (pad == -1).all(), key
            assert (x[inside] >= 0).all(), key
        checked += 1
    assert checked


# ---------------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", list(FIT))
def test_fit_infer_impute_every_family(family, files, capsys):
    root = files["root"]
    model_path = root / f"{family}.pt"
    rc, out, err = run(
        ["fit", files["csv"], "--label", "speech", "--out", model_path, *FIT[family]], capsys
    )
    assert rc == 0, err
    assert f'"family": "{family}"' in out
    model = mmpgm.load_model(model_path)
    assert type(model).__name__ == _FAMILIES[family]

    post_path = root / f"{family}_post.npz"
    rc, out, err = run(
        ["infer", model_path, files["npz"], "--out", post_path, "--samples", "2", "--seed", "0"],
        capsys,
    )
    assert rc == 0, err
    with np.load(post_path) as z:
        arrays = {k: z[k] for k in z}
    np.testing.assert_array_equal(arrays["lengths"], LENGTHS)
    assert arrays["log_likelihood"].shape == (4,)
    check_padding(arrays, LENGTHS)
    expected = {
        "hmm": {"marginals/shared", "map/shared", "samples/accel"},
        "lds": {"mean/shared", "covariance/gyro", "state_mean", "cross_covariance", "samples"},
        "mvrnn": {"mean/shared", "covariance/accel", "elbo", "kl/shared", "mask/gyro"},
        "mixture": {"predictive", "gate_weights", "responsibilities", "map", "samples"},
    }[family]
    assert expected <= set(arrays), sorted(arrays)
    if family == "lds":  # (N, T-1, S, S): between frames t and t+1, NaN from t = length - 1
        cc = arrays["cross_covariance"]
        assert np.isnan(cc[3, 3:]).all() and not np.isnan(cc[3, :3]).any()

    imp_path = root / f"{family}_imp.npz"
    rc, out, err = run(
        ["impute", model_path, files["npz"], "--modality", "gyro", "--out", imp_path], capsys
    )
    if family == "mixture":  # predicts its target, generates no stream: a one-line error
        assert rc == 2 and err.startswith("mmpgm: error: GatedMixture has no impute")
        assert err.count("\n") == 1
        return
    assert rc == 0, err
    with np.load(imp_path) as z:
        imp = {k: z[k] for k in z}
    assert imp["mean"].shape == (4, 10, 1)
    assert "covariance" in imp and imp["covariance"].shape == (4, 10, 1, 1)
    np.testing.assert_array_equal(imp["lengths"], LENGTHS)
    check_padding(imp, LENGTHS)


def test_impute_a_stream_absent_from_a_table_and_csv_output(files, capsys, tmp_path):
    """The stream to impute need not be in the data; --out .csv is one row per frame."""
    model = tmp_path / "hmm.pt"
    assert run(["fit", files["npz"], "--out", model, *FIT["hmm"]], capsys)[0] == 0
    text = files["csv"].read_text().splitlines()
    keep = [j for j, c in enumerate(text[0].split(",")) if not c.startswith("gyro")]
    (tmp_path / "accel.csv").write_text(
        "\n".join(",".join(line.split(",")[j] for j in keep) for line in text) + "\n"
    )
    out = tmp_path / "imp.csv"
    rc, _, err = run(
        ["impute", model, tmp_path / "accel.csv", "--label", "speech", "--modality", "gyro",
         "--out", out], capsys,
    )  # fmt: skip
    assert rc == 0, err
    rows = out.read_text().splitlines()
    assert rows[0].startswith("sequence,time,mean_0,covariance_0_0")
    assert len(rows) == 1 + sum(LENGTHS)
    post = tmp_path / "post.csv"
    assert run(["infer", model, files["npz"], "--out", post], capsys)[0] == 0
    header = post.read_text().splitlines()[0].split(",")
    assert {"marginals/shared_0", "map/shared", "log_likelihood"} <= set(header)


def test_categorical_stream_counts_its_classes(tmp_path, capsys):
    rows = ["sequence,time,accel_0,button"]
    rng = np.random.default_rng(0)
    for s in range(3):
        for t in range(6):
            rows.append(f"s{s},{t},{rng.normal():.3f},{'' if t == 2 else rng.integers(3)}")
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    rc, out, err = run(
        ["fit", tmp_path / "b.csv", "--out", tmp_path / "b.pt", "--method", "em", "--steps", "2",
         "--emission", "accel=diag,button=categorical"], capsys,
    )  # fmt: skip
    assert rc == 0, err
    model = mmpgm.load_model(tmp_path / "b.pt")
    assert model.config()["obs_dims"]["button"] == 3


# ---------------------------------------------------------------------------------- shards
SHARD_SIZES = ((3, 10, [10, 6, 9]), (4, 8, [8, 8, 5, 3]), (2, 12, [12, 7]))  # N, T, lengths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A tiny sharded corpus (3 ``.npz`` shards of different sizes, frame counts and ragged
    lengths, missing cells) and the same sequences as one ``.npz``, built by hand: every shard
    padded to the longest T (NaN, mask False), concatenated in shard (name) order."""
    root = tmp_path_factory.mktemp("shards")
    truth = mmpgm.MultimodalHMM({"accel": 2, "gyro": 1}, num_shared_states=2).double()
    T_max = max(T for _, T, _ in SHARD_SIZES)
    obs, lengths = {"accel": [], "gyro": []}, []
    for s, (n, T, lens) in enumerate(SHARD_SIZES):
        sampled, _ = truth.sample(n, T, seed=s)
        part = {k: v.clone().double() for k, v in sampled.obs.items()}
        part["accel"][0, 1 + s, 1] = math.nan
        part["gyro"][-1, 2] = math.nan
        mmpgm.MultimodalData(part, lengths=torch.tensor(lens)).save(root / f"shard-{s:02d}.npz")
        for k, v in part.items():
            v = v.clone()
            v[torch.arange(T)[None, :] >= torch.tensor(lens)[:, None]] = math.nan
            pad = torch.full((n, T_max - T, v.shape[-1]), math.nan, dtype=v.dtype)
            obs[k].append(torch.cat([v, pad], 1))
        lengths += lens
    one = mmpgm.MultimodalData(
        {k: torch.cat(v) for k, v in obs.items()}, lengths=torch.tensor(lengths)
    )
    one.save(root / "all.npz")
    return {"root": root, "glob": str(root / "shard-*.npz"), "one": root / "all.npz"}


def _state(path):
    return mmpgm.load_model(path).state_dict()


@pytest.mark.parametrize("family", ["hmm", "lds"])
def test_fit_on_a_shard_glob_equals_the_fit_on_one_file(family, shards, capsys):
    """EM from the streamed shards (``--cache-shards 3``: the data-driven start sees the whole
    corpus, as in memory) equals EM on the same sequences in one file (float64; summation
    order only); the shell-expanded list of the shards gives the same fit."""
    root = shards["root"]
    fit = ["--model", family, "--method", "em", "--steps", "4", "--seed", "1", "--no-progress"]
    outs = {}
    for name, data in (
        ("one", [shards["one"]]),
        ("glob", [shards["glob"], "--cache-shards", "3"]),
        ("list", sorted(str(p) for p in root.glob("shard-*.npz")) + ["--cache-shards", "3"]),
    ):
        path = root / f"{family}_{name}.pt"
        rc, out, err = run(["fit", *data, "--out", path, *fit], capsys)
        assert rc == 0, err
        outs[name] = (json.loads(out), _state(path))
    ref_summary, ref = outs["one"]
    assert ref_summary["modalities"] == {"accel": 2, "gyro": 1}
    for name in ("glob", "list"):
        summary, state = outs[name]
        assert summary["steps"] == ref_summary["steps"] == 4
        assert summary["final_loss_per_frame"] == pytest.approx(
            ref_summary["final_loss_per_frame"], rel=1e-10, abs=1e-12
        )
        assert set(state) == set(ref)
        for k in ref:
            torch.testing.assert_close(state[k], ref[k], rtol=1e-10, atol=1e-10, msg=k)


def test_fit_on_shards_streams_them_as_the_python_api(shards, capsys):
    """Default ``--cache-shards`` (1): the CLI fit is ``mmpgm.fit(model, ShardedData(glob))``
    (the data-driven start from the first shard, every EM pass over all three)."""
    path = shards["root"] / "stream.pt"
    rc, out, err = run(
        ["fit", shards["glob"], "--out", path, "--method", "em", "--steps", "4", "--seed", "2",
         "--no-progress"], capsys,
    )  # fmt: skip
    assert rc == 0, err
    model = mmpgm.MultimodalHMM({"accel": 2, "gyro": 1})
    res = mmpgm.fit(model, mmpgm.ShardedData(shards["glob"]), method="em", num_steps=4, seed=2,
                    progress=False)  # fmt: skip
    assert json.loads(out)["final_loss_per_frame"] == pytest.approx(
        res.final_loss, rel=1e-10, abs=1e-12
    )
    state = _state(path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-10, atol=1e-10, msg=k)


def test_categorical_stream_counts_its_classes_over_every_shard(tmp_path, capsys):
    """Class 4 occurs only in the last shard: the stream's size is read from all of them."""
    for s, top in enumerate((2, 2, 5)):
        x = torch.arange(6, dtype=torch.float64).remainder(top).reshape(2, 3, 1)
        obs = {"accel": torch.randn(2, 3, 2, dtype=torch.float64), "button": x}
        mmpgm.MultimodalData(obs).save(tmp_path / f"s{s}.npz")
    rc, out, err = run(
        ["fit", tmp_path / "s*.npz", "--out", tmp_path / "b.pt", "--method", "em", "--steps",
         "2", "--emission", "accel=diag,button=categorical", "--no-progress"], capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert mmpgm.load_model(tmp_path / "b.pt").config()["obs_dims"]["button"] == 5


# ---------------------------------------------------------------------------------- tables
def test_csv_ragged_sequences_empty_cells_any_row_order(tmp_path):
    path = tmp_path / "frames.csv"
    path.write_text(
        "time,sequence,accel_0,accel.1,gyro_x,vad\n"
        "1,b,0.5,,2.0,1\n"  # rows out of order; an empty accel cell
        "0,a,1.0,2.0,3.0,0\n"
        "0,b,-1.0,1e-3,NA,\n"  # gyro missing; label empty
        "2,a,4.0,5.0,6.0,1\n"
        "1,a,7.0,8.0,,1\n"
    )
    data = read_table(path, labels={"speech": "vad"})
    assert data.modalities == ("accel", "gyro")
    assert data.obs_dims == {"accel": 2, "gyro": 1}
    assert data.lengths.tolist() == [2, 3]  # sequences in the order of their first row
    assert data.meta["sequence_ids"] == ["b", "a"] and data.meta["time"] == [[0, 1], [0, 1, 2]]
    torch.testing.assert_close(data.obs["accel"][1], torch.tensor([[1.0, 2.0], [7, 8], [4, 5]]))
    assert data.mask["accel"].tolist() == [[True, False, False], [True, True, True]]
    assert data.mask["gyro"].tolist() == [[False, True, False], [True, False, True]]
    assert math.isnan(data.obs["accel"][0, 1, 1]) and math.isnan(data.obs["gyro"][0, 0, 0])
    assert data.labels["speech"].dtype == torch.int64
    assert data.labels["speech"].tolist() == [[-1, 1, -1], [0, 1, 1]]
    explicit = read_table(path, modalities={"imu": ["accel_0", "gyro_x"]}, labels={"vad": "vad"})
    assert explicit.obs_dims == {"imu": 2} and explicit.labels["vad"].shape == (2, 3)
    as_float = read_table(path, labels={"speech": "vad"}, float_labels=("speech",))
    assert as_float.labels["speech"].is_floating_point()
    assert math.isnan(as_float.labels["speech"][0, 0])


def _same_data(a, b):
    assert a.modalities == b.modalities
    torch.testing.assert_close(a.lengths, b.lengths)
    for m in a.modalities:
        assert torch.equal(a.mask[m], b.mask[m]), m
        torch.testing.assert_close(a.obs[m][a.mask[m]], b.obs[m][b.mask[m]].to(a.obs[m].dtype))
    assert set(a.labels) == set(b.labels)
    for k in a.labels:
        assert a.labels[k].tolist() == b.labels[k].tolist(), k


def test_round_trip_npz_csv_same_data(files, tmp_path):
    data = mmpgm.MultimodalData.load(files["npz"])
    assert files["mapping"]["modalities"] == {"accel": ["accel_0", "accel_1"], "gyro": ["gyro_0"]}
    _same_data(data, read_table(files["csv"], labels={"speech": "speech"}))
    _same_data(data, read_table(files["csv"], **files["mapping"]))  # the returned mapping
    back = read_table(files["csv"], labels={"speech": "speech"})
    write_table(back, tmp_path / "again.tsv")  # meta carries ids and times through
    assert read_table(tmp_path / "again.tsv").meta["time"] == back.meta["time"]


def test_parquet_round_trip(files, tmp_path):
    pytest.importorskip("pyarrow")
    data = mmpgm.MultimodalData.load(files["npz"])
    write_table(data, tmp_path / "d.parquet")
    _same_data(data, read_table(tmp_path / "d.parquet", labels={"speech": "speech"}))


def test_from_columns_and_write_frames(tmp_path):
    data = from_columns({"sequence": [1, 1, 2], "time": [0.0, 0.5, 0.0], "x_0": [1.0, np.nan, 3.0]})
    assert data.meta["sequence_ids"] == ["1", "2"] and data.lengths.tolist() == [2, 1]
    path = tmp_path / "out.csv"
    write_frames(path, {"p": np.arange(4.0).reshape(2, 2), "ll": np.array([1.5, 2.5])},
                 [2, 1], times=[[0.0, 0.5], [0.0]])  # fmt: skip
    assert path.read_text().splitlines() == [
        "sequence,time,p,ll", "0,0.0,0.0,1.5", "0,0.5,1.0,1.5", "1,0.0,2.0,2.5"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text, match",
    [
        ("sequence,time,a_0\n0,0,1\n0,0,2\n", r"line 2 and line 3: sequence '0' has two rows"),
        ("sequence,time,a_0\n0,0,1\n0,1,x\n", r"line 3, column 'a_0': 'x' is not a number"),
        ("seq,time,a_0\n0,0,1\n", r"no column 'sequence'"),
        ("sequence,time,a_0,a_0\n0,0,1,2\n", r"column 'a_0' appears twice"),
        ("sequence,time,a_0\n0,0,1,2\n", r"line 2: 4 fields, but the header has 3"),
        ("sequence,time,a_0\n0,,1\n", r"line 2, column 'time': empty time"),
        ("sequence,time,a_0\n0,0,inf\n", r"line 2, column 'a_0': inf is not finite"),
        ("sequence,time\n0,0\n", r"no feature columns"),
    ],
)
def test_table_errors_name_the_column_and_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_table(path)


# ---------------------------------------------------------------------------------- help
def _help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_the_python_defaults(capsys):
    fit_d = {k: p.default for k, p in inspect.signature(mmpgm.fit).parameters.items()}
    text = _help(["fit", "--help"], capsys)
    assert f"(default: {fit_d['method']})" in text and "--method METHOD" in text
    assert f"fit from this many initializations and keep the best (default: " \
           f"{fit_d['num_restarts']})" in text  # fmt: skip
    hmm = inspect.signature(mmpgm.MultimodalHMM).parameters
    lds = inspect.signature(mmpgm.MultimodalLDS).parameters
    mvrnn = inspect.signature(mmpgm.MVRNN).parameters
    mix = inspect.signature(mmpgm.GatedMixture).parameters
    assert f"default: {hmm['num_shared_states'].default})" in text
    assert (f"default: {lds['shared_dim'].default} for lds, {mvrnn['shared_dim'].default} for "
            "mvrnn") in text  # fmt: skip
    assert f"default: {mix['gate'].default})" in text
    assert f"default: {mix['target'].default})" in text
    assert "DATA is a MultimodalData .npz" in text
    text = _help(["infer", "--help"], capsys)
    assert "(default: 0)" in text and "--map, --no-map compute the joint MAP path (default: True)"\
        in text  # fmt: skip
    text = _help(["impute", "--help"], capsys)
    assert "--modality M" in text and "unset: 16" in text
    args = build_parser().parse_args(["fit", "d.npz", "--out", "m.pt"])
    assert (args.method, args.steps, args.lr, args.restarts, args.seed, args.program) == (
        fit_d["method"], fit_d["num_steps"], fit_d["lr"], fit_d["num_restarts"], fit_d["seed"],
        fit_d["program"],
    )  # fmt: skip


@pytest.mark.parametrize("dataset, option", [("grid", "--workers"), ("synth-grid", "--speakers")])
def test_prep_help_is_the_scripts(dataset, option, capsys):
    text = _help(["prep", dataset, "--help"], capsys)
    assert text.startswith(f"usage: mmpgm prep {dataset}") and option in text


# ---------------------------------------------------------------------------------- errors
ERRORS = [
    (["fit", "{root}/missing.npz", "--out", "{tmp}/m.pt"], "missing.npz: no such file"),
    (["fit", "{tmp}/table.npz", "--out", "{tmp}/m.pt"], "not a MultimodalData .npz"),
    (["fit", "{tmp}/notes.txt", "--out", "{tmp}/m.pt"], "not a MultimodalData .npz"),
    (["fit", "{root}", "--out", "{tmp}/m.pt"], "is a directory"),
    (["fit", "{csv}", "--out", "{tmp}/m.pt", "--steps", "abc"], "argument --steps: invalid int"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--steps", "-3"], "num_steps: expected a positive"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--model", "crf"], "argument --model: invalid"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--hidden-dim", "3"], "applies to --model mvrnn"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--emission", "poisson"], "emission: unknown"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--method", "em", "--model", "mvrnn"], "has no EM"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--model", "mixture", "--target", "x"], "target"),
    (["fit", "{npz}", "--out", "{tmp}/no/m.pt"], "does not exist"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--columns", "a=b"], "applies to table input"),
    (["fit", "{tmp}/shard-*.npz", "--out", "{tmp}/m.pt"], "shard-*.npz' matches no file"),
    (["fit", "{npz}", "--out", "{tmp}/m.pt", "--cache-shards", "2"], "--cache-shards: applies"),
    (["fit", "{npz}", "{tmp}/s-*.npz", "--out", "{tmp}/m.pt"], "DATA: one glob or several"),
    (["fit", "{npz}", "{tmp}/none.npz", "--out", "{tmp}/m.pt"], "none.npz: no such file"),
    (["fit", "{npz}", "{tmp}/notes.txt", "--out", "{tmp}/m.pt"], "not a MultimodalData .npz"),
    (["infer", "{model}", "{tmp}/shard-*.npz", "--out", "{tmp}/o.npz"], "'mmpgm fit' streams"),
    (["fit", "{npz}", "{npz}", "--model", "mixture", "--method", "em", "--out", "{tmp}/m.pt"],
     "EM (--method em) needs the data in memory"),
    (["fit", "{tmp}/dup.csv", "--out", "{tmp}/m.pt"], "has two rows at time 0"),
    (["infer", "{csv}", "{npz}", "--out", "{tmp}/o.npz"], "not an mmpgm model file"),
    (["infer", "{model}", "{tmp}/wide.npz", "--out", "{tmp}/o.npz"], "expects obs_dim 1, got 3"),
    (["infer", "{model}", "{csv}", "--out", "{tmp}/o.npz"], "modalities ['speech'] that"),
    (["infer", "{model}", "{npz}", "--out", "{tmp}/o.txt"], "ending in .npz, .csv or .tsv"),
    (["impute", "{model}", "{npz}", "--modality", "video", "--out", "{tmp}/o.npz"], "'video'"),
    (
        [
            "impute",
            "{model}",
            "{npz}",
            "--modality",
            "gyro",
            "--out",
            "{tmp}/o.npz",
            "--samples",
            "3",
        ],
        "draws no samples",
    ),  # fmt: skip
    ([], "the following arguments are required: COMMAND"),
    (["fit"], "required: DATA, --out"),
]


@pytest.fixture(scope="module")
def error_files(files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    (tmp / "table.npz").write_text(files["csv"].read_text())  # a CSV named .npz
    (tmp / "notes.txt").write_text("not data\n")
    (tmp / "dup.csv").write_text("sequence,time,a_0\n0,0,1\n0,0,2\n")
    wide = mmpgm.MultimodalData(
        {"accel": torch.randn(2, 5, 2), "gyro": torch.randn(2, 5, 3)}
    )  # obs_dim mismatch
    wide.save(tmp / "wide.npz")
    model = mmpgm.MultimodalHMM({"accel": 2, "gyro": 1})
    model.save(tmp / "model.pt")
    return {"tmp": tmp, "model": tmp / "model.pt", **files}


@pytest.mark.parametrize("argv, match", ERRORS, ids=[" ".join(a[:1]) + f"-{i}" for i, (a, _)
                                                     in enumerate(ERRORS)])  # fmt: skip
def test_user_errors_print_one_line_and_exit_2(argv, match, error_files, capsys, monkeypatch):
    monkeypatch.delenv("MMPGM_DEBUG", raising=False)
    argv = [a.format(**error_files) for a in argv]
    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert err.startswith("mmpgm: error: ") and err.count("\n") == 1, err
    assert match in err, err


def test_debug_shows_the_traceback(error_files, capsys, monkeypatch):
    argv = ["fit", str(error_files["npz"]), "--out", "m.pt", "--steps", "-3"]
    with pytest.raises(ValueError, match="num_steps"):
        main(["--debug", *argv])
    with pytest.raises(ValueError, match="num_steps"):
        main([*argv, "--debug"])
    monkeypatch.setenv("MMPGM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["infer", "missing.pt", str(error_files["npz"]), "--out", "o.npz"])


def test_subprocess_exit_status_and_stderr(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "mmpgm")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "mmpgm.cli"]
    env = {k: v for k, v in os.environ.items() if k != "MMPGM_DEBUG"}
    res = subprocess.run(
        [*cmd, "fit", str(tmp_path / "none.csv"), "--out", str(tmp_path / "m.pt")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"mmpgm: error: {tmp_path / 'none.csv'}: no such file"]
    assert res.stdout == ""
