r"""Building blocks of the multimodal variational RNN (paper section 5.4, eq. 42-47).

:class:`MVRNNNet` holds every network of the model and runs the recurrence over time; its
Gaussian heads are in :mod:`mmpgm.nn.heads`, the observation likelihoods in
:mod:`mmpgm.nn.likelihoods` and the Gaussian algebra (product of experts, analytic KL) in
:mod:`mmpgm.ops.gaussian`.

Recurrence (``b`` ranges over the shared block ``s`` and the modalities ``m``; :math:`o^m_t`
is the observed-bit of modality ``m`` at frame ``t``, missing frames are zero-filled):

.. math::
    p(z^b_t \mid h^b_{t-1}) &= \mathcal N(\mu^{p,b}(h^b_{t-1}), \sigma^{p,b}(h^b_{t-1})^2), \\
    q(z^s_t \mid x_t, h^s_{t-1}) &\propto p(z^s_t \mid h^s_{t-1})
        \prod_{m: o^m_t = 1} \mathcal N(z^s_t; \mu^{e,m}(x^m_t, h^s_{t-1}), \sigma^{e,m}(\cdot)^2),
        \\
    q(z^m_t \mid x^m_t, h^m_{t-1}, z^s_t) &= \mathcal N(\mu^{q,m}(x^m_t, h^m_{t-1}, z^s_t), \cdot)
        \text{ if } o^m_t = 1 \text{ else } p(z^m_t \mid h^m_{t-1}), \\
    p(x^m_t \mid z^m_t, z^s_t, h^m_{t-1}) &= \mathrm{Lik}_m(\mathrm{dec}_m(z^m_t, z^s_t,
        h^m_{t-1})), \\
    h^s_t &= \mathrm{GRU}_s([x^1_t o^1_t, o^1_t, \dots, x^M_t o^M_t, o^M_t, z^s_t], h^s_{t-1}), \\
    h^m_t &= \mathrm{GRU}_m([x^m_t o^m_t, o^m_t, z^m_t], h^m_{t-1}).

The deterministic states are functions of the observed inputs and the sampled latents only, so
the generative model and the guide share them (computed once per step).

Speed: :meth:`MVRNNNet.scan` splits every first layer into the part that reads the inputs (one
matmul over all frames before the loop), the part that reads :math:`h_{t-1}` (all heads of one
stream fused into one matmul per step) and the part that reads :math:`z^s_t`; decoders and KL
terms run vectorized over time after the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.gaussian import gaussian_kl, gaussian_log_prob, product_of_experts
from .heads import GaussianHead, split_loc_scale
from .likelihoods import make_likelihood

__all__ = ["gru_update", "MVRNNNet", "ScanResult", "make_likelihood", "split_loc_scale"]


def gru_update(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``torch.nn.GRUCell`` from precomputed input and hidden projections (``(..., 3H)`` each,
    biases included), gate order ``r, z, n`` as in PyTorch."""
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


class ScanResult(NamedTuple):
    r"""Output of :meth:`MVRNNNet.scan`, time-major.

    reconstruction : dict m -> ``(T, N)`` :math:`\log p(x^m_t \mid z^m_t, z^s_t, h^m_{t-1})`, 0
        where missing.
    kl : dict block -> ``(T, N)`` analytic KL of eq. 46-47 (``"shared"`` and every modality), 0 on
        padding.
    latents : dict block -> ``(T, N, Z)`` the sampled (or given) latents.
    q_loc, q_scale, p_loc, p_scale : dict block -> ``(T, N, Z)`` guide and prior parameters.
    decoded : dict m -> ``(T, N, P)`` the raw likelihood parameters.
    log_ratio : ``(T, N)`` :math:`\sum_b \log p(z^b_t \mid \cdot) - \log q(z^b_t \mid \cdot)` at the
        sampled latents (for importance weighting), or None.
    """

    reconstruction: dict
    kl: dict
    latents: dict
    q_loc: dict
    q_scale: dict
    p_loc: dict
    p_scale: dict
    decoded: dict
    log_ratio: torch.Tensor | None


class MVRNNNet(nn.Module):
    """Every network of the multimodal VRNN and the recurrence over time (see module docstring).

    Parameters
    ----------
    obs_dims : Mapping[str, int]
    hidden_dim : int
        GRU state size ``H`` (each of the ``M + 1`` streams).
    shared_dim : int
        ``Z_s``.
    private_dims : Mapping[str, int]
        ``Z_m`` per modality (0 = no private latent for that modality).
    head_dim : int
        Hidden width of the prior, encoder and decoder MLPs (0 = linear heads).
    likelihoods : Mapping[str, nn.Module]
        Per-modality likelihoods (:func:`make_likelihood`).
    """

    def __init__(
        self,
        obs_dims: Mapping[str, int],
        hidden_dim: int,
        shared_dim: int,
        private_dims: Mapping[str, int],
        head_dim: int,
        likelihoods: Mapping[str, nn.Module],
    ):
        super().__init__()
        self.modalities = tuple(obs_dims)
        self.obs_dims = dict(obs_dims)
        self.hidden_dim, self.shared_dim, self.head_dim = hidden_dim, shared_dim, head_dim
        self.private_dims = dict(private_dims)
        self.batched = True
        H, Zs, E = hidden_dim, shared_dim, head_dim
        in_all = sum(d + 1 for d in obs_dims.values())
        self.gru_shared = nn.GRUCell(in_all + Zs, H)
        self.prior_shared = GaussianHead(H, 2 * Zs, E)
        self.experts = nn.ModuleDict(
            {m: GaussianHead(d + H, 2 * Zs, E) for m, d in obs_dims.items()}
        )
        self.gru_private = nn.ModuleDict()
        self.prior_private = nn.ModuleDict()
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.likelihoods = nn.ModuleDict(dict(likelihoods))
        for m, d in obs_dims.items():
            Zm = self.private_dims[m]
            self.gru_private[m] = nn.GRUCell(d + 1 + Zm, H)
            self.prior_private[m] = GaussianHead(H, 2 * max(Zm, 1), E)
            self.encoders[m] = GaussianHead(d + H + Zs, 2 * max(Zm, 1), E)
            self.decoders[m] = GaussianHead(Zm + Zs + H, self.likelihoods[m].num_params, E)

    # ------------------------------------------------------------------ helpers
    def draw_noise(
        self, num_steps: int, batch: int, *, dtype=None, device=None, generator=None
    ) -> dict:
        """Standard-normal noise for :meth:`scan`: block -> ``(T, N, Z)``, drawn shared first, then
        the modalities in order (the fixed order lets other implementations share the noise)."""
        p = self.gru_shared.weight_hh
        dtype, device = dtype or p.dtype, device or p.device
        out = {
            "shared": torch.randn(
                num_steps, batch, self.shared_dim, dtype=dtype, device=device, generator=generator
            )
        }
        for m in self.modalities:
            out[m] = torch.randn(
                num_steps,
                batch,
                self.private_dims[m],
                dtype=dtype,
                device=device,
                generator=generator,
            )
        return out

    def initial_state(self, batch: int, dtype=None, device=None):
        p = self.gru_shared.weight_hh
        z = torch.zeros(batch, self.hidden_dim, dtype=dtype or p.dtype, device=device or p.device)
        return z, {m: z for m in self.modalities}

    def _split_first_layer(self, head: GaussianHead, sizes):
        return head.l1.weight.split(list(sizes), dim=1)

    def prepare(self, xs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict:
        """Everything that depends on the inputs only, for all frames at once.

        ``xs[m]``: ``(T, N, D_m)`` zero-filled observations; ``masks[m]``: ``(T, N)`` bool.
        Returns the fused per-step weights and the input projections (tuples over time).
        """
        H, Zs = self.hidden_dim, self.shared_dim
        mods = self.modalities
        inputs = []
        for m in mods:
            o = masks[m].to(xs[m].dtype)[..., None]
            inputs += [xs[m] * o, o]
        W_ih_s = self.gru_shared.weight_ih
        in_all = W_ih_s.shape[1] - Zs
        W_s_x, W_s_z = W_ih_s.split([in_all, Zs], 1)
        pre = {"gru_shared_x": F.linear(torch.cat(inputs, -1), W_s_x, self.gru_shared.bias_ih)}
        # fused matmul on h^s: GRU hidden gates | prior first layer | experts' h-part
        ws = [self.gru_shared.weight_hh, self.prior_shared.l1.weight]
        bs = [self.gru_shared.bias_hh, self.prior_shared.l1.bias]
        # fused matmul on z^s: GRU input gates | private encoders' z^s part
        wz = [W_s_z]
        pre["expert_x"], pre["enc_x"], pre["gru_private_x"] = {}, {}, {}
        pre["private_w_h"], pre["private_b_h"], pre["gru_private_wz"] = {}, {}, {}
        for m in mods:
            D, Zm = self.obs_dims[m], self.private_dims[m]
            ex, eh = self._split_first_layer(self.experts[m], [D, H])
            pre["expert_x"][m] = F.linear(xs[m], ex, self.experts[m].l1.bias)
            ws.append(eh)
            bs.append(torch.zeros_like(self.experts[m].l1.bias))
            qx, qh, qz = self._split_first_layer(self.encoders[m], [D, H, Zs])
            pre["enc_x"][m] = F.linear(xs[m], qx, self.encoders[m].l1.bias)
            wz.append(qz)
            g = self.gru_private[m]
            gx, gz = g.weight_ih.split([D + 1, Zm], 1)
            o = masks[m].to(xs[m].dtype)[..., None]
            pre["gru_private_x"][m] = F.linear(torch.cat([xs[m] * o, o], -1), gx, g.bias_ih)
            pre["gru_private_wz"][m] = gz
            pre["private_w_h"][m] = torch.cat([g.weight_hh, self.prior_private[m].l1.weight, qh], 0)
            pre["private_b_h"][m] = torch.cat(
                [
                    g.bias_hh,
                    self.prior_private[m].l1.bias,
                    torch.zeros_like(self.encoders[m].l1.bias),
                ],
                0,
            )
        # per-frame views via unbind: indexing [t] inside the loop would make every backward step
        # zero-fill a full (T, N, .) gradient buffer (quadratic in T); unbind's backward stacks once
        pre["gru_shared_x"] = pre["gru_shared_x"].unbind(0)
        for k in ("expert_x", "enc_x", "gru_private_x"):
            pre[k] = {m: v.unbind(0) for m, v in pre[k].items()}
        pre["shared_w_h"] = torch.cat(ws, 0)
        pre["shared_b_h"] = torch.cat(bs, 0)
        pre["shared_w_z"] = torch.cat(wz, 0)
        E = self.prior_shared.l1.out_features
        pre["shared_split"] = [3 * H, E] + [self.experts[m].l1.out_features for m in mods]
        pre["z_split"] = [3 * H] + [self.encoders[m].l1.out_features for m in mods]
        pre["private_split"] = {
            m: [3 * H, self.prior_private[m].l1.out_features, self.encoders[m].l1.out_features]
            for m in mods
        }
        return pre

    # ------------------------------------------------------------------ one step, in pieces
    def shared_step(self, pre, t, h_s, masks_t):
        """Prior and PoE posterior of :math:`z^s_t`; returns ``(p_loc, p_scale, q_loc, q_scale,
        gh_s)``."""
        parts = F.linear(h_s, pre["shared_w_h"], pre["shared_b_h"]).split(pre["shared_split"], -1)
        gh_s, prior_pre, expert_h = parts[0], parts[1], parts[2:]
        p_loc, p_scale = split_loc_scale(self.prior_shared.finish(prior_pre))
        e_loc, e_scale = [], []
        for i, m in enumerate(self.modalities):
            loc, scale = split_loc_scale(
                self.experts[m].finish(pre["expert_x"][m][t] + expert_h[i])
            )
            e_loc.append(loc)
            e_scale.append(scale)
        stack_m = torch.stack([masks_t[m] for m in self.modalities])
        q_loc, q_scale = product_of_experts(
            p_loc, p_scale, torch.stack(e_loc), torch.stack(e_scale), stack_m
        )
        return p_loc, p_scale, q_loc, q_scale, gh_s

    def shared_z_projection(self, pre, z_s):
        """``(gi_s_z, {m: encoder z^s part})`` from one fused matmul."""
        parts = F.linear(z_s, pre["shared_w_z"]).split(pre["z_split"], -1)
        return parts[0], dict(zip(self.modalities, parts[1:], strict=False))

    def private_step(self, pre, t, m, h_m, enc_z, mask_t):
        """Prior and posterior of :math:`z^m_t` (posterior = prior where ``mask_t`` is False);
        returns ``(p_loc, p_scale, q_loc, q_scale, gh_m)``."""
        gh, prior_pre, enc_h = F.linear(h_m, pre["private_w_h"][m], pre["private_b_h"][m]).split(
            pre["private_split"][m], -1
        )
        p_loc, p_scale = split_loc_scale(self.prior_private[m].finish(prior_pre))
        q_loc, q_scale = split_loc_scale(
            self.encoders[m].finish(pre["enc_x"][m][t] + enc_h + enc_z)
        )
        Zm = self.private_dims[m]
        if Zm == 0:
            return p_loc[..., :0], p_scale[..., :0], q_loc[..., :0], q_scale[..., :0], gh
        obs = mask_t[:, None]
        return (
            p_loc,
            p_scale,
            torch.where(obs, q_loc, p_loc),
            torch.where(obs, q_scale, p_scale),
            gh,
        )

    def shared_update(self, pre, t, gi_z, gh_s, h_s):
        return gru_update(pre["gru_shared_x"][t] + gi_z, gh_s, h_s)

    def private_update(self, pre, t, m, z_m, gh_m, h_m):
        gi = pre["gru_private_x"][m][t] + F.linear(z_m, pre["gru_private_wz"][m])
        return gru_update(gi, gh_m, h_m)

    def decode(self, m, z_m, z_s, h_m_prev):
        """Raw likelihood parameters of :math:`p(x^m_t \\mid z^m_t, z^s_t, h^m_{t-1})` (any leading
        shape)."""
        return self.decoders[m](torch.cat([z_m, z_s, h_m_prev], -1))

    # ------------------------------------------------------------------ the whole sequence
    def scan(
        self, xs, masks, time_mask, *, noise=None, latents=None, log_ratio: bool = False
    ) -> ScanResult:
        r"""Run guide and model together over all frames (time-major inputs).

        Parameters
        ----------
        xs : dict m -> ``(T, N, D_m)`` zero-filled observations.
        masks : dict m -> ``(T, N)`` bool observed frames (already and-ed with ``time_mask``).
        time_mask : ``(T, N)`` bool frames inside the sequences.
        noise : dict block -> ``(T, N, Z)`` standard normals (:meth:`draw_noise`); None = zeros
            (the noise-free "mean path" :math:`z_t = \mu^q_t`).
        latents : dict block -> ``(T, N, Z)``, optional
            Use these latents instead of sampling (e.g. from a Pyro guide trace).
        log_ratio : also return :math:`\log p(z_t) - \log q(z_t)` at the latents.
        """
        if self.can_batch:
            st, h_prev = self._loop_batched(xs, masks, time_mask, noise, latents)
        else:
            st, h_prev = self._loop(xs, masks, time_mask, noise, latents)
        return self._finish(st, h_prev, xs, masks, time_mask, log_ratio)

    def _loop(self, xs, masks, time_mask, noise, latents, state=None, return_state=False):
        """The recurrence, one modality at a time (any private sizes).

        ``state``: the GRU states ``(h_s, {m: h_m})`` to start from (default
        :meth:`initial_state`); with ``return_state`` the states after the last frame are
        returned too (truncated backpropagation carries them across chunks)."""
        mods = self.modalities
        T, N = time_mask.shape
        pre = self.prepare(xs, masks)
        if state is None:
            state = self.initial_state(N, dtype=xs[mods[0]].dtype, device=xs[mods[0]].device)
        h_s, h_m = state
        keys = ("z", "ql", "qs", "pl", "ps")
        store = {k: {b: [] for b in ("shared",) + mods} for k in keys}
        h_prev = {m: [] for m in mods}
        for t in range(T):
            masks_t = {m: masks[m][t] for m in mods}
            p_loc, p_scale, q_loc, q_scale, gh_s = self.shared_step(pre, t, h_s, masks_t)
            if latents is not None:
                z_s = latents["shared"][t]
            elif noise is not None:
                z_s = q_loc + q_scale * noise["shared"][t]
            else:
                z_s = q_loc
            for k, v in zip(keys, (z_s, q_loc, q_scale, p_loc, p_scale), strict=False):
                store[k]["shared"].append(v)
            gi_z, enc_z = self.shared_z_projection(pre, z_s)
            new_h = {}
            for m in mods:
                pl, ps, ql, qs, gh_m = self.private_step(pre, t, m, h_m[m], enc_z[m], masks_t[m])
                if latents is not None:
                    z_m = latents[m][t]
                elif noise is not None:
                    z_m = ql + qs * noise[m][t]
                else:
                    z_m = ql
                for k, v in zip(keys, (z_m, ql, qs, pl, ps), strict=False):
                    store[k][m].append(v)
                h_prev[m].append(h_m[m])
                new_h[m] = self.private_update(pre, t, m, z_m, gh_m, h_m[m])
            h_s = self.shared_update(pre, t, gi_z, gh_s, h_s)
            h_m = new_h
        st = {k: {b: torch.stack(v) for b, v in d.items()} for k, d in store.items()}
        h_prev = {m: torch.stack(v) for m, v in h_prev.items()}
        return (st, h_prev, (h_s, h_m)) if return_state else (st, h_prev)

    @property
    def can_batch(self) -> bool:
        """Whether :meth:`scan` can run every stream's heads as one batched matmul (all private
        sizes equal and positive, MLP heads); ``self.batched = False`` forces the per-modality
        loop."""
        sizes = set(self.private_dims.values())
        return self.batched and self.head_dim > 0 and len(sizes) == 1 and sizes.pop() > 0

    def _loop_batched(self, xs, masks, time_mask, noise, latents):
        """The recurrence of :meth:`_loop` with the ``M`` modalities stacked on a leading axis:
        per step one ``baddbmm`` per layer for all experts / private streams instead of one
        ``linear`` per modality (the same math; rounding may differ in the last bits)."""
        mods = self.modalities
        M = len(mods)
        T, N = time_mask.shape
        H, Zs, E = self.hidden_dim, self.shared_dim, self.head_dim
        Zm = self.private_dims[mods[0]]
        dtype, device = xs[mods[0]].dtype, xs[mods[0]].device

        def stack_w(layers):  # Linear layers -> (M, in, out) weights and (M, 1, out) biases
            return (
                torch.stack([l.weight.t() for l in layers]),
                torch.stack([l.bias for l in layers])[:, None],
            )

        # inputs, for all frames at once
        inputs, expert_x, enc_x, gru_x, gru_wz, w_h, b_h = [], [], [], [], [], [], []
        for m in mods:
            D = self.obs_dims[m]
            o = masks[m].to(dtype)[..., None]
            inputs += [xs[m] * o, o]
            ex, eh = self.experts[m].l1.weight.split([D, H], 1)
            expert_x.append(F.linear(xs[m], ex, self.experts[m].l1.bias))
            qx, qh, qz = self.encoders[m].l1.weight.split([D, H, Zs], 1)
            enc_x.append(F.linear(xs[m], qx, self.encoders[m].l1.bias))
            g = self.gru_private[m]
            gx, gz = g.weight_ih.split([D + 1, Zm], 1)
            gru_x.append(F.linear(torch.cat([xs[m] * o, o], -1), gx, g.bias_ih))
            gru_wz.append(gz.t())
            w_h.append(torch.cat([g.weight_hh, self.prior_private[m].l1.weight, qh], 0).t())
            b_h.append(
                torch.cat(
                    [
                        g.bias_hh,
                        self.prior_private[m].l1.bias,
                        torch.zeros_like(self.encoders[m].l1.bias),
                    ]
                )[None]
            )
        W_s_x, W_s_z = self.gru_shared.weight_ih.split(
            [self.gru_shared.weight_ih.shape[1] - Zs, Zs], 1
        )
        gs_x = F.linear(torch.cat(inputs, -1), W_s_x, self.gru_shared.bias_ih).unbind(0)
        expert_x = torch.stack(expert_x, 1).unbind(0)  # T x (M, N, E)
        enc_x = torch.stack(enc_x, 1).unbind(0)
        gru_x = torch.stack(gru_x, 1).unbind(0)
        gru_wz = torch.stack(gru_wz)  # (M, Zm, 3H)
        w_h, b_h = torch.stack(w_h), torch.stack(b_h)  # (M, H, 3H + 2E), (M, 1, 3H + 2E)
        ws = torch.cat(
            [self.gru_shared.weight_hh, self.prior_shared.l1.weight]
            + [self.experts[m].l1.weight[:, self.obs_dims[m] :] for m in mods],
            0,
        )
        bs = torch.cat([self.gru_shared.bias_hh, self.prior_shared.l1.bias, ws.new_zeros(M * E)])
        wz = torch.cat(
            [W_s_z] + [self.encoders[m].l1.weight[:, self.obs_dims[m] + H :] for m in mods], 0
        )
        ex_w2, ex_b2 = stack_w([self.experts[m].l2 for m in mods])
        pr_w2, pr_b2 = stack_w([self.prior_private[m].l2 for m in mods])
        en_w2, en_b2 = stack_w([self.encoders[m].l2 for m in mods])
        obs = torch.stack([masks[m] for m in mods], 1).unbind(0)  # T x (M, N)
        if latents is not None:
            lat_s = latents["shared"].unbind(0)
            lat_m = torch.stack([latents[m] for m in mods], 1).unbind(0)
        elif noise is not None:
            eps_s = noise["shared"].unbind(0)
            eps_m = torch.stack([noise[m] for m in mods], 1).unbind(0)

        h_s = torch.zeros(N, H, dtype=dtype, device=device)
        h_m = torch.zeros(M, N, H, dtype=dtype, device=device)
        out = {
            k: []
            for k in ("zs", "qls", "qss", "pls", "pss", "zm", "qlm", "qsm", "plm", "psm", "hm")
        }
        for t in range(T):
            a = F.linear(h_s, ws, bs)
            gh_s, prior_pre, ex_h = a.split([3 * H, E, M * E], -1)
            p_loc, p_scale = split_loc_scale(self.prior_shared.l2(torch.relu(prior_pre)))
            ex_h = ex_h.reshape(N, M, E).transpose(0, 1)
            e_loc, e_scale = split_loc_scale(
                torch.baddbmm(ex_b2, torch.relu(expert_x[t] + ex_h), ex_w2)
            )
            q_loc, q_scale = product_of_experts(p_loc, p_scale, e_loc, e_scale, obs[t])
            if latents is not None:
                z_s = lat_s[t]
            elif noise is not None:
                z_s = q_loc + q_scale * eps_s[t]
            else:
                z_s = q_loc
            b = F.linear(z_s, wz)
            gi_z, enc_z = b[:, : 3 * H], b[:, 3 * H :].reshape(N, M, E).transpose(0, 1)
            c = torch.baddbmm(b_h, h_m, w_h)
            gh_m, pr_pre, enc_h = c.split([3 * H, E, E], -1)
            pl, ps = split_loc_scale(torch.baddbmm(pr_b2, torch.relu(pr_pre), pr_w2))
            ql, qs = split_loc_scale(
                torch.baddbmm(en_b2, torch.relu(enc_x[t] + enc_h + enc_z), en_w2)
            )
            seen = obs[t][..., None]
            ql, qs = torch.where(seen, ql, pl), torch.where(seen, qs, ps)
            if latents is not None:
                z_m = lat_m[t]
            elif noise is not None:
                z_m = ql + qs * eps_m[t]
            else:
                z_m = ql
            step = (z_s, q_loc, q_scale, p_loc, p_scale, z_m, ql, qs, pl, ps, h_m)
            for k, v in zip(out, step, strict=True):
                out[k].append(v)
            h_m = gru_update(gru_x[t] + torch.bmm(z_m, gru_wz), gh_m, h_m)
            h_s = gru_update(gs_x[t] + gi_z, gh_s, h_s)
        st = {}
        for key, (ks, km) in {
            "z": ("zs", "zm"),
            "ql": ("qls", "qlm"),
            "qs": ("qss", "qsm"),
            "pl": ("pls", "plm"),
            "ps": ("pss", "psm"),
        }.items():
            per_m = torch.stack(out[km]).unbind(1)
            st[key] = {"shared": torch.stack(out[ks]), **dict(zip(mods, per_m, strict=False))}
        h_prev = dict(zip(mods, torch.stack(out["hm"]).unbind(1), strict=False))
        return st, h_prev

    def _finish(self, st, h_prev, xs, masks, time_mask, log_ratio):
        """KL terms, decoders and reconstruction terms, vectorized over time."""
        mods = self.modalities
        zero = torch.zeros((), dtype=xs[mods[0]].dtype, device=xs[mods[0]].device)
        kl, recon, decoded = {}, {}, {}
        lr = None
        for b in ("shared",) + mods:
            k = gaussian_kl(st["ql"][b], st["qs"][b], st["pl"][b], st["ps"][b])
            kl[b] = torch.where(time_mask, k, zero)
            if log_ratio:
                z = st["z"][b]
                r = gaussian_log_prob(z, st["pl"][b], st["ps"][b]) - gaussian_log_prob(
                    z, st["ql"][b], st["qs"][b]
                )
                r = torch.where(time_mask, r, zero)
                lr = r if lr is None else lr + r
        for m in mods:
            raw = self.decode(m, st["z"][m], st["z"]["shared"], h_prev[m])
            decoded[m] = raw
            recon[m] = torch.where(masks[m], self.likelihoods[m].log_prob(xs[m], raw), zero)
        return ScanResult(recon, kl, st["z"], st["ql"], st["qs"], st["pl"], st["ps"], decoded, lr)
