"""Face-quality (occlusion) summaries: a flat patch anywhere on the face shows; shapes; errors."""

import numpy as np
import pytest

from mmpgm.features import missing_av_requirements

if missing_av_requirements(speech_synthesis=False):
    pytest.skip("needs " + "; ".join(missing_av_requirements(speech_synthesis=False)),
                allow_module_level=True)

from mmpgm.features import video as fv  # noqa: E402


def _faces(T=6, seed=0):
    r = np.random.default_rng(seed)
    base = r.integers(0, 256, (64, 64)).astype(np.float32)
    base = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1)) / 3  # textured, never flat
    return np.stack([np.clip(base + r.normal(0, 3, base.shape), 0, 255) for _ in range(T)]
                    ).astype(np.uint8)


def test_flat_patch_shows_in_its_cell_and_the_flat_fraction():
    faces = _faces()
    q = fv.face_quality_features(faces)
    assert q.shape == (6, fv.FACE_QUALITY_DIM) and q.dtype == np.float32
    patched = faces.copy()
    patched[3:, 0:16, 48:64] = 128  # the top-right cell of the 4x4 grid, frames 3-5
    p = fv.face_quality_features(patched)
    np.testing.assert_array_equal(p[:3], q[:3])
    assert (p[3:, 3] == 0).all() and (q[:, 3] > 2).all()  # log(1 + std) of a flat cell is 0
    others = [k for k in range(16) if k != 3]
    np.testing.assert_allclose(p[3:, others], q[3:, others], rtol=0.1, atol=0.2)
    assert (p[3:, -1] > q[3:, -1] + 0.03).all()  # about 1/16 of the pixels became flat
    assert (q[:, -1] < 0.05).all()


def test_bad_shape():
    with pytest.raises(ValueError, match="faces"):
        fv.face_quality_features(np.zeros((64, 64), np.uint8))
