"""Matplotlib figures: streams with posterior state bands."""

from __future__ import annotations

import numpy as np


def _runs(path: np.ndarray):
    """``(state, first, last)`` of every run of equal values of ``path``."""
    change = np.flatnonzero(np.diff(path)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(path)]]) - 1
    return [(int(path[a]), int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def state_bands(ax, path: np.ndarray, colors, alpha: float = 0.25) -> None:
    """Shade ``ax`` behind the data by the state of every frame: one band per run of equal
    states from half a frame before its first frame to half a frame after its last, so
    consecutive bands meet with no gap."""
    for k, a, b in _runs(np.asarray(path)):
        ax.axvspan(a - 0.5, b + 0.5, color=colors[k], alpha=alpha, linewidth=0, zorder=0)


def plot_streams_with_states(
    data,
    posterior,
    index: int = 0,
    chain: str = "shared",
    true_states=None,
    imputation=None,
    imputed_modality=None,
    figsize=None,
):
    """Each modality's stream of sequence ``index`` over time, the frames coloured by the MAP
    ``chain`` state, and a bottom panel with the posterior marginals of that chain.

    Returns the :class:`matplotlib.figure.Figure`.
    """
    import matplotlib.pyplot as plt  # the backend is the caller's (headless falls back to Agg)

    mods = list(data.modalities)
    L = int(data.lengths[index])
    marg = posterior.marginals[chain][index, :L].detach().cpu().numpy()
    K = marg.shape[-1]
    # state colours from a pastel map, distinct from the stream lines' default tab10 cycle
    colors = plt.get_cmap("Set2" if K <= 8 else "tab20")(np.arange(K) % (8 if K <= 8 else 20))
    path = (
        (
            posterior.map[chain][index, :L]
            if posterior.map is not None
            else posterior.marginals[chain][index, :L].argmax(-1)
        )
        .cpu()
        .numpy()
    )
    nrows = len(mods) + 1 + (true_states is not None)
    fig, axes = plt.subplots(nrows, 1, sharex=True, figsize=figsize or (10, 1.6 * nrows + 0.6))
    t = np.arange(L)
    for ax, m in zip(axes, mods, strict=False):
        x = data.obs[m][index, :L].detach().cpu().numpy()
        mask = data.mask[m][index, :L].cpu().numpy()
        state_bands(ax, path, colors)
        xs = np.where(mask[:, None], x, np.nan)
        imputed = imputation is not None and m == imputed_modality
        shown = min(2, x.shape[-1]) if imputed else x.shape[-1]
        lines = ax.plot(t, xs[:, :shown], lw=0.9)
        if imputed:
            mean = imputation.mean[index, :L].detach().cpu().numpy()
            var = np.diagonal(
                imputation.covariance[index, :L].detach().cpu().numpy(), axis1=-2, axis2=-1
            )
            sd = np.sqrt(np.clip(var, 0, None))
            for d in range(shown):
                c = lines[d].get_color()
                ax.plot(t, mean[:, d], "--", color=c, lw=1.0)
                ax.fill_between(
                    t, mean[:, d] - 2 * sd[:, d], mean[:, d] + 2 * sd[:, d], color=c, alpha=0.12
                )
            ax.set_title(
                f"{m} (first {shown} dims): observed (solid) and imputed from the other streams "
                "(dashed, +-2 sd)",
                fontsize=8,
            )
        ax.set_ylabel(m)
    from matplotlib.patches import Patch

    axes[0].legend(
        handles=[
            Patch(color=colors[k], alpha=0.5, label=f"MAP {chain} state {k}") for k in range(K)
        ],
        loc="upper right",
        fontsize=7,
        ncol=K,
        title="bands",
        title_fontsize=7,
    )
    ax = axes[len(mods)]
    ax.stackplot(
        t,
        marg.T,
        colors=colors,
        alpha=0.8,
        step="mid",
        labels=[f"{chain} state {k}" for k in range(K)],
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"p({chain})")
    ax.legend(loc="upper right", fontsize=7, ncol=K)
    if true_states is not None:
        ax = axes[-1]
        ax.step(t, np.asarray(true_states)[:L], where="mid", color="k")
        ax.set_ylabel("true")
        ax.set_yticks(range(K))
    axes[-1].set_xlabel("time step")
    fig.suptitle(f"sequence {index}: streams coloured by the MAP {chain} state")
    fig.tight_layout()
    return fig
