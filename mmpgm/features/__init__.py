"""Audio-visual feature extraction and corruptions (paper section 7; DESIGN.md section 6).

Submodules (imported lazily by users; librosa / OpenCV are only needed when used):

* :mod:`mmpgm.features.audio`   -- 16 kHz, 25 frames/s STFT / log-mel / MFCC features.
* :mod:`mmpgm.features.video`   -- Haar face box, mouth DCT features, Farneback flow summaries.
* :mod:`mmpgm.features.corrupt` -- seeded, recorded video patch and audio noise corruptions
  (patch shapes, random gain: training-time augmentation).
* :mod:`mmpgm.features.normalize` -- causal per-utterance running normalization
  (:func:`~mmpgm.features.normalize.running_normalize`; gain-invariant log-spectral features).

:func:`missing_av_requirements` says what the audio-visual path still needs on this machine.
"""

from __future__ import annotations

import importlib.util
import shutil

__all__ = ["audio", "video", "corrupt", "normalize", "missing_av_requirements"]


def missing_av_requirements(*, speech_synthesis: bool = True) -> list[str]:
    """What the audio-visual preparation needs and this machine lacks, as install hints (empty
    when everything is there): librosa, soundfile, scikit-image, OpenCV with the Haar
    ``CascadeClassifier`` (``opencv-python-headless<5``) and, with ``speech_synthesis``, the
    ``espeak-ng`` program that :mod:`data_prep.synth_grid` speaks with."""
    missing = [
        f"{name} (pip install -e '.[prep]')"
        for name, module in [
            ("librosa", "librosa"),
            ("soundfile", "soundfile"),
            ("scikit-image", "skimage"),
            ("OpenCV", "cv2"),
        ]
        if importlib.util.find_spec(module) is None
    ]
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            missing.append("an OpenCV build with CascadeClassifier (opencv-python-headless<5)")
    if speech_synthesis and shutil.which("espeak-ng") is None:
        missing.append("the espeak-ng program (apt-get install espeak-ng; see .ci/av_deps.sh)")
    return missing
