"""SiameseEncoder (contrastive program, mmpgm.fit, hard negatives, save/load) and KNNMemory."""

import math

import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

import mmpgm
from mmpgm import KNNMemory, MultimodalData, SiameseEncoder
from mmpgm.nn.siamese import MLPTower
from mmpgm.ops import contrastive_loss


def ring_data(seed, N=40, T=10, D=16, C=4):
    """``C`` classes (one per sequence, ``N / C`` sequences each) told apart by two of the ``D``
    features only: class centres on a circle of radius 1.5 with spread 0.5 in features 0-1,
    and broad noise (sd 3) in the other 14 features, which swamps raw Euclidean distances."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.arange(N) % C
    angle = cls.double() * 2 * math.pi / C
    centre = torch.stack([angle.cos(), angle.sin()], -1).float() * 1.5
    x = torch.randn(N, T, D, generator=g) * 3.0
    x[..., :2] = centre[:, None, :] + 0.5 * torch.randn(N, T, 2, generator=g)
    return x, cls


def frames(x, cls):
    return x.reshape(-1, x.shape[-1]), cls[:, None].expand(x.shape[:2]).reshape(-1)


@pytest.mark.slow
def test_siamese_embedding_separates_known_classes():
    x, cls = ring_data(0)
    xt, ct = ring_data(100)
    data = MultimodalData({"x": x}, labels={"class": cls})  # per-sequence labels
    enc = SiameseEncoder(MLPTower(16, (32,), 8), num_pairs=256)
    mmpgm.fit(enc, data, num_steps=200, lr=0.01, seed=0, progress=False, patience=0)
    (xf, yf), (xq, yq) = frames(x, cls), frames(xt, ct)
    raw = (KNNMemory(k=5).add(xf, yf).predict(xq) == yq).double().mean()
    emb = (KNNMemory(enc, k=5).add(xf, yf).predict(xq) == yq).double().mean()
    centre = (KNNMemory(enc, centres=True).add(xf, yf).predict(xq) == yq).double().mean()
    # The Bayes rate of this problem is about 0.965 (adjacent centres 2.1 sd apart in the two
    # informative features); raw 5-NN is near chance (measured 0.33-0.40 over seeds 0-2)
    # because the 14 noise features dominate the distances, and the embedding reached
    # 0.93-0.97 over the same seeds. On 400 held-out frames an accuracy's sd is <= 0.025, so
    # these bounds sit > 3 sd inside the measured ranges.
    assert raw < 0.5, float(raw)
    assert emb > 0.85, float(emb)
    assert centre > 0.85, float(centre)
    assert emb - raw > 0.35


def small_data(seed=0, N=6, T=5, D=4):
    g = torch.Generator().manual_seed(seed)
    cls = torch.arange(N * T).reshape(N, T) % 3
    x = torch.randn(N, T, D, generator=g) + cls[..., None].float()
    return MultimodalData({"x": x}, labels={"class": cls})


def test_program_loss_is_the_summed_contrastive_loss_of_the_pairs():
    torch.manual_seed(0)
    enc = SiameseEncoder(MLPTower(4, (8,), 3), num_pairs=32, margin=2.0)
    data = small_data()
    torch.manual_seed(5)
    loss = Trace_ELBO().differentiable_loss(enc.model, enc.guide, data)
    torch.manual_seed(5)
    per_pair, same = enc.pair_loss(data)
    torch.testing.assert_close(loss, per_pair.sum(), rtol=1e-6, atol=1e-6)
    assert per_pair.shape == (32,) and int(same.sum()) == 16
    # and pair_loss is the ops' loss on the embeddings of the drawn frames
    lab = enc.frame_labels(data).reshape(-1)
    x = data.obs["x"].reshape(-1, 4)
    from mmpgm.ops import sample_pairs

    g = torch.Generator().manual_seed(3)
    i, j, s = sample_pairs(lab, 32, generator=g)
    want = contrastive_loss(enc.embed(x[i]), enc.embed(x[j]), s, margin=2.0)
    got, _ = enc.pair_loss(data, seed=3)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_frame_labels_broadcast_and_respect_masks():
    x = torch.randn(3, 4, 2)
    x[0, 1] = math.nan
    data = MultimodalData({"x": x}, lengths=[4, 2, 4], labels={"class": torch.tensor([2, 0, -1])})
    enc = SiameseEncoder(MLPTower(2, (), 2))
    lab = enc.frame_labels(data)
    want = torch.tensor([[2, -1, 2, 2], [0, 0, -1, -1], [-1, -1, -1, -1]])
    assert torch.equal(lab, want)
    post = mmpgm.infer(enc, data)
    assert post.embeddings.shape == (3, 4, 2)
    assert bool((post.embeddings[0, 1] == 0).all()) and not bool(post.mask[0, 1])
    torch.testing.assert_close(post.embeddings[1, 0], enc.embed(x[1, 0]), rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("float64")
def test_fit_is_seeded_lowers_the_loss_and_resumes_exactly(tmp_path):
    data = small_data()

    def run(num_steps, checkpoint=None):
        torch.manual_seed(0)
        enc = SiameseEncoder(MLPTower(4, (8,), 3), num_pairs=64)
        res = mmpgm.fit(
            enc,
            data,
            num_steps=num_steps,
            lr=0.02,
            seed=1,
            progress=False,
            patience=0,
            checkpoint=checkpoint,
            checkpoint_every=5,
        )
        return enc, res

    a, ra = run(30)
    b, rb = run(30)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    # it learns: the last 10 steps average 0.72x the first 10 (the classes overlap: the loss
    # cannot reach 0); 0.85 leaves room for the pair draws
    assert ra.losses[-10:].mean() < 0.85 * ra.losses[:10].mean()
    path = str(tmp_path / "ckpt.pt")
    run(15, path)
    c, rc = run(30, path)  # resumed from step 15
    assert rc.num_steps == 30
    for p, q in zip(a.parameters(), c.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert ra.losses.tolist() == rc.losses.tolist()


def test_minibatch_fit_runs():
    data = small_data(N=8)
    enc = SiameseEncoder(MLPTower(4, (8,), 3), num_pairs=16)
    res = mmpgm.fit(enc, data, num_steps=3, batch_size=3, seed=0, progress=False, patience=0)
    assert res.num_steps == 3 and all(math.isfinite(v) for v in res.losses)


def test_hard_negatives_are_the_closest_candidates():
    torch.manual_seed(0)
    data = small_data(N=10)
    easy = SiameseEncoder(MLPTower(4, (8,), 3), num_pairs=400)
    hard = SiameseEncoder(MLPTower(4, (8,), 3), num_pairs=400, hard_negatives=True)
    hard.load_state_dict(easy.state_dict())
    lab = easy.frame_labels(data).reshape(-1)
    x = data.obs["x"].reshape(-1, 4)

    def negative_distances(enc):
        g = torch.Generator().manual_seed(0)
        z1, z2, same = enc._pairs(lab, x, 400, g)
        return (z1 - z2).norm(dim=-1)[~same].detach(), same

    d_easy, s_easy = negative_distances(easy)
    d_hard, s_hard = negative_distances(hard)
    assert torch.equal(s_easy, s_hard)
    # the minimum of 8 candidate distances is below a single draw's in distribution: its mean
    # sits far below (measured about half); 0.8 leaves room for the draw
    assert d_hard.mean() < 0.8 * d_easy.mean(), (float(d_hard.mean()), float(d_easy.mean()))
    loss, same = hard.pair_loss(data, seed=1)
    assert loss.shape == (400,) and bool(torch.isfinite(loss).all())


class UserTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x)


def test_save_and_load(tmp_path):
    data = small_data()
    enc = SiameseEncoder(MLPTower(4, (8,), 3), modality="x", margin=0.5, hard_negatives=True)
    enc.init_from_data(data)
    enc.save(tmp_path / "enc.pt")
    loaded = mmpgm.load_model(tmp_path / "enc.pt")
    assert loaded.config() == enc.config()
    x = data.obs["x"]
    torch.testing.assert_close(loaded.embed(x), enc.embed(x), rtol=0, atol=0)
    user = SiameseEncoder(UserTower(), input_dim=4)
    assert user.embed_dim == 2  # found by a forward pass
    user.save(tmp_path / "user.pt")
    with pytest.raises(ValueError, match="tower"):
        mmpgm.load_model(tmp_path / "user.pt")
    back = mmpgm.load_model(tmp_path / "user.pt", tower=UserTower())
    torch.testing.assert_close(back.embed(x), user.embed(x), rtol=0, atol=0)


def test_encoder_errors_are_named():
    data = small_data()
    enc = SiameseEncoder(MLPTower(4, (8,), 3))
    with pytest.raises(NotImplementedError, match="contrastive"):
        enc.log_likelihood(data)
    with pytest.raises(ValueError, match="label"):
        mmpgm.fit(enc, MultimodalData({"x": data.obs["x"]}), num_steps=1, progress=False)
    one = MultimodalData({"x": data.obs["x"]}, labels={"class": torch.zeros(6, dtype=torch.long)})
    with pytest.raises(ValueError, match="two classes"):
        mmpgm.fit(enc, one, num_steps=1, progress=False)
    with pytest.raises(ValueError, match="modality"):
        enc.check_data(MultimodalData({"y": data.obs["x"]}))
    with pytest.raises(ValueError, match="obs_dim"):
        enc.check_data(MultimodalData({"x": torch.zeros(2, 3, 5)}))
    with pytest.raises(ValueError, match="x"):
        enc.embed(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="tower"):
        SiameseEncoder("mlp")
    with pytest.raises(ValueError, match="input_dim"):
        SiameseEncoder(UserTower())
    for kwargs, name in (
        (dict(margin=0.0), "margin"),
        (dict(num_pairs=0), "num_pairs"),
        (dict(positive_fraction=1.5), "positive_fraction"),
        (dict(balance="x"), "balance"),
    ):
        with pytest.raises(ValueError, match=name):
            SiameseEncoder(MLPTower(4, (8,), 3), **kwargs)
    # extra modalities are ignored: an encoder of one stream of multimodal data
    both = MultimodalData({"x": data.obs["x"], "y": torch.zeros(6, 5, 1)}, labels=data.labels)
    assert enc.check_data(both).obs["x"].shape == (6, 5, 4)


@pytest.mark.usefixtures("float64")
def test_knn_memory_votes_grows_and_uses_centres():
    z = torch.tensor([[0.0], [1.0], [1.2], [10.0], [11.0], [30.0]])
    y = torch.tensor([0, 0, 1, 1, 1, -1])  # the last is unlabelled: not stored
    mem = KNNMemory(k=3).add(z, y)
    assert len(mem) == 5
    # 3-NN of 0.9: 1.0 (0), 1.2 (1), 0.0 (0): class 0 by 2 votes; of 8: 10, 11 (1) and 1.2 (1)
    assert mem.predict(torch.tensor([[0.9], [8.0]])).tolist() == [0, 1]
    one = KNNMemory(k=1).add(z, y)
    assert one.predict(torch.tensor([[1.15]])).tolist() == [1]  # nearest is 1.2
    tie = KNNMemory(k=2).add(torch.tensor([[0.0], [1.0]]), torch.tensor([4, 7]))
    assert tie.predict(torch.tensor([[0.8]])).tolist() == [7]  # a tie goes to the nearest
    classes, centres = mem.centres()
    assert classes.tolist() == [0, 1]
    torch.testing.assert_close(centres, torch.tensor([[0.5], [(1.2 + 10 + 11) / 3]]))
    # growing: adding in two parts equals adding at once
    grown = KNNMemory(k=3).add(z[:2], y[:2]).add(z[2:], y[2:])
    q = torch.linspace(-1, 12, 27)[:, None]
    assert torch.equal(grown.predict(q), mem.predict(q))
    by_centre = KNNMemory(centres=True).add(z, y)
    assert by_centre.predict(torch.tensor([[3.0], [6.0]])).tolist() == [0, 1]
    # weighted centre (section 6.4): the query is the weighted mean of S candidate points
    cand = torch.tensor([[[0.0], [10.0]], [[0.0], [10.0]]])  # (F=2, S=2, E=1)
    w = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    torch.testing.assert_close(mem.query_points(cand, w), torch.tensor([[1.0], [9.0]]))
    assert by_centre.predict(cand, weights=w).tolist() == [0, 1]


def test_knn_memory_embeds_with_the_encoder_and_checks_input():
    enc = SiameseEncoder(MLPTower(4, (8,), 3))
    x = torch.randn(10, 4)
    mem = KNNMemory(enc, k=1).add(x, torch.arange(10) % 2)
    assert mem.predict(x).tolist() == (torch.arange(10) % 2).tolist()  # each is its own NN
    plain = KNNMemory(nn.Linear(4, 3), k=1).add(x, torch.arange(10))
    assert plain.predict(x).tolist() == list(range(10))
    with pytest.raises(ValueError, match="empty"):
        KNNMemory().predict(x)
    with pytest.raises(ValueError, match="y"):
        KNNMemory().add(x, torch.arange(3))
    with pytest.raises(ValueError, match="weights"):
        mem.predict(x[:, None, :], weights=torch.ones(10, 2))
    with pytest.raises(ValueError, match="k"):
        KNNMemory(k=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_encoder_memory_and_embedding_hmm_follow_the_parameters():
    from mmpgm import MultimodalHMM
    from mmpgm.observations import EmbeddingObservation

    data = small_data()
    enc = SiameseEncoder(MLPTower(4, (8,), 3), num_pairs=32, hard_negatives=True).cuda()
    mmpgm.fit(enc, data, num_steps=3, seed=0, progress=False, patience=0)
    x = data.obs["x"].reshape(-1, 4)
    assert enc.embed(x).device.type == "cuda"
    loss, _ = enc.pair_loss(data, seed=0)
    assert loss.device.type == "cuda"
    mem = KNNMemory(enc).add(x, enc.frame_labels(data).reshape(-1))
    assert mem.predict(x).device.type == "cuda"
    hmm = MultimodalHMM({"x": 3}, 2, 1, emission={"x": EmbeddingObservation(enc, 2, 1)}).cuda()
    mmpgm.fit(hmm, data, method="em", num_steps=2, progress=False, patience=0)
    assert hmm.log_likelihood(data).device.type == "cuda"


def test_embed_data_feeds_other_models():
    data = small_data()
    obs = {"x": data.obs["x"].clone(), "y": torch.randn(6, 5, 2)}
    obs["x"][1, 2] = math.nan
    data = MultimodalData(obs, lengths=[5, 5, 4, 5, 5, 5], labels=data.labels)
    enc = SiameseEncoder(MLPTower(4, (8,), 3))
    out = enc.embed_data(data, name="z")
    assert set(out.obs) == {"z", "y"} and out.obs["z"].shape == (6, 5, 3)
    assert torch.equal(out.mask["z"], data.mask["x"]) and torch.equal(out.lengths, data.lengths)
    # float32: a batched matmul and a single-row one may differ by an ulp
    torch.testing.assert_close(out.obs["z"][0, 0], enc.embed(obs["x"][0, 0]), rtol=1e-6, atol=1e-6)
    assert bool(torch.isnan(out.obs["z"][1, 2]).all())
    lds = mmpgm.MultimodalLDS({"z": 3, "y": 2}, shared_dim=1, private_dim=1)
    assert lds.log_likelihood(out).shape == (6,)
    with pytest.raises(ValueError, match="name"):
        enc.embed_data(data, name="y")


def test_embed_maps_a_missing_item_to_nan_and_leaves_the_others():
    """A NaN item is a missing one: its embedding is NaN, the others equal their embeddings
    alone (items are embedded independently); an infinite value raises."""
    enc = SiameseEncoder(MLPTower(4, (8,), 2))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    x[1, 2] = math.nan
    out = enc.embed(x)
    assert bool(out[1].isnan().all())
    keep = [0, 2, 3, 4]
    torch.testing.assert_close(out[keep], enc.embed(x[keep]), rtol=0, atol=0)
    assert bool(torch.isfinite(out[keep]).all())
    x[3, 0] = math.inf
    with pytest.raises(ValueError, match="x: expected finite values"):
        enc.embed(x)
