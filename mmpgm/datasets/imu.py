"""Seeded IMU-like two-sensor activity sequences (accelerometer + gyroscope) and sensor faults.

:func:`imu_activity_data` draws classified sequences whose classes are small cyclic HMMs (a gait
/ arm-swing rhythm seen by both sensors); :func:`corrupt` replaces one sensor on known frames by
a fault (noise burst, stuck-at value, drift) and returns the exact corruption labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .._validation import check_choice, check_float, check_int
from ..data import MultimodalData

__all__ = ["FAULT_KINDS", "IMU_MODALITIES", "corrupt", "imu_activity_data"]

IMU_MODALITIES = ("accel", "gyro")
"""Stream names of :func:`imu_activity_data` (3-d each)."""

FAULT_KINDS = ("noise", "stuck", "drift")
"""Fault types of :func:`corrupt`."""

_GRAVITY = 9.81


def _templates(g, num_classes, num_phases, separation, confusable):
    """Per-class, per-phase means ``(C, K, 3)`` of one sensor.

    A common cyclic waveform (random harmonics of the phase) plus a class-specific deviation of
    size ``separation``; with ``confusable`` groups, the deviation is shared inside a group and
    only a fraction ``1/4`` of it is specific to the class.
    """
    phase = 2.0 * math.pi * torch.arange(num_phases, dtype=torch.float64) / num_phases
    amp = 1.0 + torch.rand(3, generator=g, dtype=torch.float64)
    shift = 2.0 * math.pi * torch.rand(3, generator=g, dtype=torch.float64)
    base = amp * torch.sin(phase[:, None] + shift)  # (K, 3)
    groups = torch.tensor([confusable(c) for c in range(num_classes)])
    num_groups = int(groups.max()) + 1
    group_dev = torch.randn(num_groups, num_phases, 3, generator=g, dtype=torch.float64)
    own_dev = torch.randn(num_classes, num_phases, 3, generator=g, dtype=torch.float64)
    dev = group_dev[groups] + 0.25 * own_dev
    dev = dev / dev.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    dev = dev * math.sqrt(num_phases * 3)  # unit RMS per coordinate
    return base[None] + separation * dev


def imu_activity_data(
    num_per_class: int,
    seed: int = 0,
    *,
    num_classes: int = 4,
    num_phases: int = 4,
    min_length: int = 60,
    max_length: int = 100,
    accel_separation: float = 0.7,
    gyro_separation: float = 0.7,
    noise_scale: float = 1.0,
    noise_ar: float = 0.3,
    rate: float = 0.5,
    rate_spread: float = 0.2,
    gain_sd: float = 0.1,
    template_seed: int | None = None,
    dtype=torch.float64,
) -> MultimodalData:
    r"""Activity-classified two-sensor sequences with a rhythm shared by both sensors.

    Each class :math:`c` is a cyclic Markov chain over ``num_phases`` phases :math:`\phi_t`
    (advance one phase with probability :math:`r_c`, else stay; uniform start) seen by both
    sensors, :math:`m \in \{\mathtt{accel}, \mathtt{gyro}\}`, 3-d each:

    .. math::
        x^m_t = g_n \, \mu^m_{c}(\phi_t) + b^m + \varepsilon^m_t, \qquad
        \varepsilon^m_t = a\, \varepsilon^m_{t-1} + \sqrt{1 - a^2}\, \sigma\, \eta^m_t, \quad
        \eta^m_t \sim \mathcal N(0, I_3),

    with :math:`b^{\mathtt{accel}} = (0, 0, 9.81)` (gravity), :math:`b^{\mathtt{gyro}} = 0`, a
    per-sequence gain :math:`g_n \sim \mathcal N(1, \mathtt{gain\_sd}^2)`, noise
    :math:`\sigma =` ``noise_scale`` and AR coefficient :math:`a =` ``noise_ar`` (0 = white
    noise: each class is then exactly an HMM with ``num_phases`` states and diagonal Gaussian
    emissions, up to the gain). The phase means :math:`\mu^m_c` are a common waveform plus a
    class deviation of RMS ``<sensor>_separation`` per coordinate. The two sensors confuse
    different classes: the accelerometer deviation is mostly shared by the classes
    ``{2j, 2j+1}`` and the gyroscope deviation by the classes of the same parity, each with a
    class-specific quarter, so each sensor alone separates the classes only partly while the
    two together do well. The advance rates
    :math:`r_c = \mathtt{rate} \, (1 + \mathtt{rate\_spread} \, (c / (C - 1) - 1/2))` differ by
    class (a cue in both sensors).

    Parameters
    ----------
    num_per_class : int
        Sequences per class (``N = num_classes * num_per_class``, in class order).
    seed : int
        Seeds the sequences (phases, noise, gains, lengths).
    num_classes : int
        :math:`C \ge 2`.
    num_phases : int
        Phases of the rhythm (``>= 2``).
    min_length, max_length : int
        Lengths are uniform on ``[min_length, max_length]`` (ragged, NaN-padded to
        ``max_length``).
    accel_separation, gyro_separation : float
        Class deviation of each sensor's phase means, in units of the noise-free waveform
        (``>= 0``).
    noise_scale : float
        :math:`\sigma > 0`.
    noise_ar : float
        :math:`a \in [0, 1)`.
    rate : float
        Mean phase-advance probability, in ``(0, 1]``.
    rate_spread : float
        Relative spread of the class rates (``>= 0``; every :math:`r_c` must stay in
        ``(0, 1]``).
    gain_sd : float
        Per-sequence gain spread (``>= 0``).
    template_seed : int, optional
        Seeds the class templates :math:`\mu^m_c`; default ``seed``. A train and a test split
        of one task share ``template_seed`` and differ in ``seed``.
    dtype : torch.dtype

    Returns
    -------
    MultimodalData
        Streams ``accel`` and ``gyro``, ``(N, max_length, 3)``; ``lengths`` ``(N,)``;
        ``labels["activity"]`` ``(N,)`` the class; ``labels["phase"]`` ``(N, T)`` the phase
        (``-1`` on padding).

    Examples
    --------
    >>> data = imu_activity_data(5, seed=0)
    >>> data.obs["accel"].shape, data.labels["activity"].shape
    (torch.Size([20, 100, 3]), torch.Size([20]))
    """
    check_int("num_per_class", num_per_class)
    check_int("seed", seed, minimum=0)
    check_int("num_classes", num_classes, minimum=2)
    check_int("num_phases", num_phases, minimum=2)
    check_int("min_length", min_length)
    check_int("max_length", max_length, minimum=min_length)
    check_int("template_seed", template_seed, minimum=0, allow_none=True)
    check_float("accel_separation", accel_separation, minimum=0.0)
    check_float("gyro_separation", gyro_separation, minimum=0.0)
    check_float("noise_scale", noise_scale, positive=True)
    check_float("gain_sd", gain_sd, minimum=0.0)
    check_float("rate_spread", rate_spread, minimum=0.0)
    check_float("rate", rate, positive=True)
    check_float("noise_ar", noise_ar, minimum=0.0)
    if rate > 1.0:
        raise ValueError(f"rate: expected a probability in (0, 1], got {rate!r}")
    if noise_ar >= 1.0:
        raise ValueError(f"noise_ar: expected a value in [0, 1), got {noise_ar!r}")
    C, K = num_classes, num_phases
    rates = rate * (1.0 + rate_spread * (torch.arange(C, dtype=torch.float64) / (C - 1) - 0.5))
    if float(rates.min()) <= 0.0 or float(rates.max()) > 1.0:
        raise ValueError(
            f"rate_spread: the class rates rate * (1 +- rate_spread / 2) must lie in (0, 1], got "
            f"[{float(rates.min()):.3g}, {float(rates.max()):.3g}] for rate={rate!r}, "
            f"rate_spread={rate_spread!r}"
        )

    gt = torch.Generator().manual_seed(seed if template_seed is None else template_seed)
    means = {
        "accel": _templates(gt, C, K, accel_separation, lambda c: c // 2),
        "gyro": _templates(gt, C, K, gyro_separation, lambda c: c % 2),
    }
    offsets = {
        "accel": torch.tensor([0.0, 0.0, _GRAVITY], dtype=torch.float64),
        "gyro": torch.zeros(3, dtype=torch.float64),
    }

    g = torch.Generator().manual_seed(seed)
    N, T = C * num_per_class, max_length
    activity = torch.arange(C).repeat_interleave(num_per_class)
    lengths = torch.randint(min_length, max_length + 1, (N,), generator=g)
    advance = torch.rand(N, T, generator=g, dtype=torch.float64) < rates[activity][:, None]
    phase = torch.empty(N, T, dtype=torch.long)
    phase[:, 0] = torch.randint(0, K, (N,), generator=g)
    for t in range(1, T):
        phase[:, t] = (phase[:, t - 1] + advance[:, t].long()) % K
    gain = 1.0 + gain_sd * torch.randn(N, generator=g, dtype=torch.float64)
    inside = torch.arange(T)[None, :] < lengths[:, None]
    obs = {}
    innov = math.sqrt(1.0 - noise_ar**2) * noise_scale
    for m in IMU_MODALITIES:
        eta = torch.randn(N, T, 3, generator=g, dtype=torch.float64)
        eps = torch.empty_like(eta)
        eps[:, 0] = noise_scale * eta[:, 0]
        for t in range(1, T):
            eps[:, t] = noise_ar * eps[:, t - 1] + innov * eta[:, t]
        mu = means[m][activity[:, None], phase]  # (N, T, 3)
        x = gain[:, None, None] * mu + offsets[m] + eps
        obs[m] = torch.where(inside[..., None], x, torch.full_like(x, math.nan)).to(dtype)
    labels = {"activity": activity, "phase": torch.where(inside, phase, torch.full_like(phase, -1))}
    return MultimodalData(obs, lengths=lengths, labels=labels)


def _segments(g, length: int, count: int, num_segments: int) -> list:
    """``num_segments`` disjoint ``(start, stop)`` runs of total length ``count`` in
    ``[0, length)``, in random positions (sizes as equal as possible, gaps random)."""
    q, r = divmod(count, num_segments)
    sizes = [q + (1 if i < r else 0) for i in range(num_segments)]
    sizes = [s for s in sizes if s > 0]
    free = length - count
    # random split of the free frames into len(sizes) + 1 gaps (stars and bars)
    cuts = torch.randperm(free + len(sizes), generator=g)[: len(sizes)].sort().values.tolist()
    gaps, prev = [], -1
    for c in cuts:
        gaps.append(c - prev - 1)
        prev = c
    out, t = [], 0
    for gap, size in zip(gaps, sizes, strict=True):
        t += gap
        out.append((t, t + size))
        t += size
    return out


def _reference_stats(reference, modality):
    if isinstance(reference, MultimodalData):
        if modality not in reference.obs:
            raise ValueError(
                f"reference: has no modality {modality!r}, got {list(reference.modalities)}"
            )
        x = reference.obs[modality][reference.mask[modality]]
        if x.shape[0] < 2:
            raise ValueError(
                f"reference: needs at least 2 observed frames of {modality!r}, got {x.shape[0]}"
            )
        return x.mean(0), x.std(0)
    if isinstance(reference, Mapping) and {"mean", "sd"} <= set(reference):
        return torch.as_tensor(reference["mean"]), torch.as_tensor(reference["sd"])
    raise TypeError(
        "reference: expected a MultimodalData or a dict with 'mean' and 'sd', got "
        f"{type(reference).__name__}"
    )


def corrupt(
    data: MultimodalData,
    modality: str,
    kind: str,
    fraction: float = 0.5,
    *,
    num_segments: int = 1,
    reference=None,
    offset_sd: float = 3.0,
    scale_sd: float = 1.0,
    drift_sd: float = 6.0,
    seed: int = 0,
) -> tuple[MultimodalData, dict]:
    r"""Replace one sensor by a fault on a known fraction of each sequence's frames.

    In every sequence :math:`n` with length :math:`T_n`, exactly
    :math:`F_n = \mathrm{round}(\mathtt{fraction} \cdot T_n)` frames inside the length, in
    ``num_segments`` disjoint contiguous segments at random positions, of ``modality`` are
    replaced; with the reference mean :math:`\bar x` and standard deviation :math:`s`
    (per coordinate, of ``reference``):

    * ``"noise"``: :math:`x_t \sim \mathcal N(\bar x + \mathtt{offset\_sd}\, s,\
      (\mathtt{scale\_sd}\, s)^2)` (a noise burst far from the clean data);
    * ``"stuck"``: :math:`x_t = x_{t_0}`, the last clean reading before the segment (the first
      frame of the segment when it starts the sequence), for every frame of the segment;
    * ``"drift"``: :math:`x_t = x^{\text{clean}}_t + \mathtt{drift\_sd}\, s \, (t - t_0 + 1) /
      L + \mathcal N(0, (\mathtt{scale\_sd}\, s / 2)^2)` over a segment of length :math:`L`
      starting at :math:`t_0` (an offset growing to ``drift_sd`` sd, plus noise).

    Masks, lengths, labels and the other modalities are unchanged.

    Parameters
    ----------
    data : MultimodalData
    modality : str
        The failing sensor.
    kind : {"noise", "stuck", "drift"}
    fraction : float
        In ``[0, 1]``.
    num_segments : int
        Contiguous segments per sequence (fewer when a sequence has fewer faulty frames).
    reference : MultimodalData or dict, optional
        Where :math:`\bar x, s` come from: a (training) data set (its observed frames of
        ``modality``) or ``{"mean": (D,), "sd": (D,)}``; default ``data`` itself.
    offset_sd, scale_sd, drift_sd : float
        Fault sizes in reference sd.
    seed : int
        Seeds positions and noise.

    Returns
    -------
    corrupted : MultimodalData
    faulty : dict modality -> bool ``(N, T)``
        True exactly on the replaced frames (all False for the other modalities).
    """
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected a MultimodalData, got {type(data).__name__}")
    if modality not in data.obs:
        raise ValueError(f"modality: expected one of {list(data.modalities)}, got {modality!r}")
    check_choice("kind", kind, FAULT_KINDS)
    check_float("fraction", fraction, minimum=0.0)
    if fraction > 1.0:
        raise ValueError(f"fraction: expected a value in [0, 1], got {fraction!r}")
    check_int("num_segments", num_segments)
    check_int("seed", seed, minimum=0)
    for name, v in (("offset_sd", offset_sd), ("scale_sd", scale_sd), ("drift_sd", drift_sd)):
        check_float(name, v, minimum=0.0)
    mean, sd = _reference_stats(data if reference is None else reference, modality)
    x = data.obs[modality].clone()
    mean, sd = mean.to(x), sd.to(x)
    N, T, D = x.shape
    g = torch.Generator().manual_seed(seed)
    bad = torch.zeros(N, T, dtype=torch.bool)
    for n in range(N):
        length = int(data.lengths[n])
        count = int(round(fraction * length))
        if count == 0:
            continue
        for t0, t1 in _segments(g, length, count, min(num_segments, count)):
            L = t1 - t0
            bad[n, t0:t1] = True
            if kind == "noise":
                z = torch.randn(L, D, generator=g, dtype=torch.float64).to(x)
                x[n, t0:t1] = mean + offset_sd * sd + scale_sd * sd * z
            elif kind == "stuck":
                x[n, t0:t1] = x[n, max(t0 - 1, 0)].clone()
            else:
                z = torch.randn(L, D, generator=g, dtype=torch.float64).to(x)
                ramp = torch.arange(1, L + 1, dtype=x.dtype)[:, None] / L
                x[n, t0:t1] = x[n, t0:t1] + drift_sd * sd * ramp + 0.5 * scale_sd * sd * z
    obs = dict(data.obs)
    obs[modality] = x
    corrupted = MultimodalData(
        obs,
        lengths=data.lengths,
        mask=data.mask,
        labels=data.labels,
        meta=getattr(data, "meta", None),
    )
    faulty = {m: (bad if m == modality else torch.zeros(N, T, dtype=torch.bool)) for m in obs}
    return corrupted, faulty
