"""Audio-visual feature extraction and corruptions (paper section 7; DESIGN.md section 6).

Submodules (imported lazily by users; librosa / OpenCV are only needed when used):

* :mod:`mmpgm.features.audio`   -- 16 kHz, 25 frames/s STFT / log-mel / MFCC features.
* :mod:`mmpgm.features.video`   -- Haar face box, mouth DCT features, Farneback flow summaries.
* :mod:`mmpgm.features.corrupt` -- seeded, recorded video patch and audio noise corruptions.
"""

__all__ = ["audio", "video", "corrupt"]
