r"""Units of the data for the multimodal HMM: re-express a model in standardized units
:math:`x'^m = (x^m - m_m) / s_m` and back.

:func:`mmpgm.fit` (``method="svi"``) standardizes the observed frames of every modality whose
emission is :attr:`~mmpgm.observations.ObservationModel.rescalable` (the Gaussian ones;
categorical emissions are unit-free), maps the model with :func:`rescale_observations`, runs
SVI there (Adam's steps are then the same at any units of the data) and maps the fitted model
back. The chains are untouched: only the emissions and, with ``sensor_faults``, the per-modality
background densities (centre and scale in data units) depend on the units.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["rescalable_modalities", "rescale_observations"]


def rescalable_modalities(model) -> tuple[str, ...]:
    """The modalities of ``model`` whose densities can be re-expressed in other units (in the
    order of ``model.modalities``)."""
    return tuple(m for m in model.modalities if model.emissions[m].rescalable)


@torch.no_grad()
def rescale_observations(
    model, shift: Mapping[str, torch.Tensor], scale: Mapping[str, torch.Tensor]
) -> None:
    r"""Re-express ``model`` in place in the units :math:`x'^m = (x^m - \mathrm{shift}_m) /
    \mathrm{scale}_m` of the modalities in ``shift`` (each ``(obs_dim_m,)``, ``scale > 0``).

    Every density of :math:`x^m` is mapped (its parameters and prior hyper-parameters, through
    :meth:`~mmpgm.observations.ObservationModel.rescale_`), so that
    :math:`\log p'(x') = \log p(x) + \sum_m \sum_{t \text{ observed}} \sum_d
    \log \mathrm{scale}_{md}` and ``model.log_prior()`` changes by a constant: the MAP problem
    is the same in either units. The inverse is ``rescale_observations(model, {m: -shift_m /
    scale_m}, {m: 1 / scale_m})``.

    Raises
    ------
    ValueError
        A modality the model lacks, one whose emission is not rescalable, or ``shift`` and
        ``scale`` naming different modalities.
    """
    if set(shift) != set(scale):
        raise ValueError(
            f"scale: expected the modalities of shift {sorted(shift)}, got {sorted(scale)}"
        )
    for m in shift:
        if m not in model.modalities:
            raise ValueError(
                f"shift: unknown modality {m!r}; the model has {list(model.modalities)}"
            )
        if not model.emissions[m].rescalable:
            raise ValueError(
                f"shift: the emission of modality {m!r} ({type(model.emissions[m]).__name__}) "
                "has no units to rescale"
            )
    backgrounds = getattr(model, "fault_backgrounds", None)  # sensor faults, where present
    for m in shift:
        e = model.emissions[m]
        e.rescale_(shift[m], scale[m])
        if backgrounds is not None and m in backgrounds:
            g = backgrounds[m]  # a broad density in data units: centre and scale map like x
            if getattr(g, "num_categories", None) is None:
                sh, sc = (torch.as_tensor(v).to(g.loc) for v in (shift[m], scale[m]))
                g.loc = (g.loc - sh) / sc
                g.scale = g.scale / sc
                if hasattr(g, "stuck_scale"):  # the held-value part's spread maps like a scale
                    g.stuck_scale = g.stuck_scale / sc
