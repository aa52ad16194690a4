"""Client-side algorithms: proximal/corrected local objectives and the FedAlign paper's regularisers.

Every class is a `Strategy` (see `fedscape.fl.strategy`) that changes local training only through
the engine's hooks; the server step stays the sample-weighted mean delta fed to a server optimiser
(`server_lr`, `server_momentum`), so each can be combined with server momentum.
Randomness (Mixup's lambda and permutation, Stochastic Depth's drops, GradAug's widths and
resolutions) is drawn from the client's CPU generator `ctx.generator`, which the engine derives
from (seed, round, client): runs are reproducible and resumable at any round.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedscape.fl.aggregate import sample_weights, weighted_mean

# The hyperparameter dataclasses and the model requirements are torch-free (fedscape.fl.hparams,
# read by config validation); re-exported here.
from fedscape.fl.hparams import (  # noqa: F401
    FedAlignConfig,
    FedDynConfig,
    FedProxConfig,
    GradAugConfig,
    MixupConfig,
    MoonConfig,
    StochDepthConfig,
    require_model,
)
from fedscape.fl.server_opt import ServerSGD
from fedscape.fl.strategy import ClientContext, ClientResult, ClientStore, Strategy, param_views, register
from fedscape.params import FlatParams, flatten_buffers, flatten_params, load_buffers, load_params
from fedscape.utils import derive_seed

_MOON_HEAD_STREAM = 0x4D4F4F4E  # seed stream of MOON's projection head


# ---------------------------------------------------------------------------------------------
# FedProx
@register
class FedProx(Strategy):
    """FedProx (Li et al. 2020, MLSys): local loss + mu/2 ||w - w_global||^2, added as a gradient term."""

    name = "fedprox"
    Config = FedProxConfig
    standard_local_training = False
    vectorized = True  # the prox gradient is elementwise: adjust_gradients_vectorized

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        ctx.scratch["global_views"] = param_views(ctx.global_params, model)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        mu = self.config.mu
        for p, g in zip(model.parameters(), ctx.scratch["global_views"], strict=True):
            prox = p.detach() - g
            if p.grad is None:
                p.grad = mu * prox
            else:
                p.grad.add_(prox, alpha=mu)

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor]) -> None:
        """The prox gradient mu (w - w_global) of every stacked client (FedProx, Li et al. 2020)."""
        for grad, p, g in zip(grads, params, global_params, strict=True):
            grad.add_(p.detach() - g, alpha=self.config.mu)


# ---------------------------------------------------------------------------------------------
# SCAFFOLD
def effective_steps(steps: int, momentum: float) -> float:
    """sum_{k=1..K} (1 - m^k) / (1 - m): how far K heavy-ball steps with momentum m move under a
    constant gradient, in plain-SGD steps (K for m = 0; FedNova's momentum normaliser, Wang et al. 2020)."""
    if momentum == 0:
        return float(steps)
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


@register
class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al. 2020): control variates correct client drift; option-II update.

    Server control variate c and client control variates c_i start at zero. Each local step uses
    the gradient g + c - c_i; afterwards c_i+ = c_i - c + (x - y_i) / (K lr) (option II, K local
    steps; with client momentum m, K is replaced by `effective_steps(K, m)` so that the quotient stays
    an average gradient), and the server sets c <- c + (1/N) sum_{i in S} (c_i+ - c_i), so that c stays the mean
    of all N clients' c_i. The model step is the weighted mean delta (times the global lr
    `server_lr`, 1 in the paper's experiments).
    """

    name = "scaffold"
    standard_local_training = False

    def setup(self, num_clients, num_params, device, model=None, seed=0) -> None:
        super().setup(num_clients, num_params, device, model, seed)
        self.c = torch.zeros(num_params, device=device)
        self.c_clients = ClientStore(num_params)
        self._delta_c: dict[int, torch.Tensor] = {}

    def state_dict(self):
        return {**super().state_dict(), "c": self.c, "c_clients": self.c_clients.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.c = state["c"].to(self.device)
        self.c_clients.load_state_dict(state["c_clients"])

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        c_i = self.c_clients.get(ctx.client_id, ctx.global_params.device)
        ctx.scratch["c_i"] = c_i
        ctx.scratch["correction"] = param_views(self.c.to(c_i.device) - c_i, model)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        for p, corr in zip(model.parameters(), ctx.scratch["correction"], strict=True):
            if p.grad is not None:
                p.grad.add_(corr)

    def end_local(self, model: nn.Module, ctx: ClientContext, params: torch.Tensor) -> None:
        if ctx.steps == 0 or ctx.lr <= 0:
            return
        c_i = ctx.scratch["c_i"]
        steps = effective_steps(ctx.steps, ctx.momentum)
        c_new = c_i - self.c.to(c_i.device) + (ctx.global_params - params) / (steps * ctx.lr)
        self._delta_c[ctx.client_id] = (c_new - c_i).to(self.c.device)
        self.c_clients.set(ctx.client_id, c_new)

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        for r in results:
            if r.client_id in self._delta_c:
                self.c = self.c + self._delta_c[r.client_id] / self.num_clients
        self._delta_c.clear()
        return super().server_update(global_params, results)


# ---------------------------------------------------------------------------------------------
# FedDyn
@register
class FedDyn(Strategy):
    """FedDyn (Acar et al. 2021): dynamic regularisation that aligns local and global stationary points.

    Client k minimises L_k(w) - <g_k, w> + alpha/2 ||w - w_global||^2, then g_k <- g_k -
    alpha (w_k - w_global) (g_k starts at 0). The server keeps h <- h - alpha (1/N) sum_{k in S}
    (w_k - w_global) and sets w = mean_k w_k - h / alpha (the mean weighted by sample counts, as
    everywhere in fedscape; equal shards give the paper's plain mean).
    """

    name = "feddyn"
    Config = FedDynConfig
    standard_local_training = False

    def setup(self, num_clients, num_params, device, model=None, seed=0) -> None:
        super().setup(num_clients, num_params, device, model, seed)
        self.h = torch.zeros(num_params, device=device)
        self.grads = ClientStore(num_params)
        self._deltas: dict[int, torch.Tensor] = {}

    def state_dict(self):
        return {**super().state_dict(), "h": self.h, "grads": self.grads.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.h = state["h"].to(self.device)
        self.grads.load_state_dict(state["grads"])

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        g_k = self.grads.get(ctx.client_id, ctx.global_params.device)
        ctx.scratch["g_k"] = g_k
        ctx.scratch["g_views"] = param_views(g_k, model)
        ctx.scratch["global_views"] = param_views(ctx.global_params, model)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        alpha = self.config.alpha
        for p, g_k, w_g in zip(model.parameters(), ctx.scratch["g_views"], ctx.scratch["global_views"], strict=True):
            extra = alpha * (p.detach() - w_g) - g_k
            if p.grad is None:
                p.grad = extra
            else:
                p.grad.add_(extra)

    def end_local(self, model: nn.Module, ctx: ClientContext, params: torch.Tensor) -> None:
        delta = params - ctx.global_params
        self.grads.set(ctx.client_id, ctx.scratch["g_k"] - self.config.alpha * delta)
        self._deltas[ctx.client_id] = delta

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        alpha = self.config.alpha
        for r in results:
            self.h = self.h - alpha * self._deltas.pop(r.client_id).to(self.h.device) / self.num_clients
        self._deltas.clear()
        weights = sample_weights([r.num_samples for r in results])
        mean = weighted_mean(torch.stack([r.params for r in results]), weights)
        target = mean - self.h / alpha
        return self.server_opt.step(global_params, global_params - target)


# ---------------------------------------------------------------------------------------------
# MOON
def moon_contrastive_loss(z: torch.Tensor, z_global: torch.Tensor, z_prev: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """MOON's model-contrastive loss (Li et al. 2021, eq. 3): -log e^{s_g/T} / (e^{s_g/T} + e^{s_p/T}),
    s = cosine similarity of the local representation to the global resp. previous local one."""
    pos = F.cosine_similarity(z, z_global, dim=-1)
    neg = F.cosine_similarity(z, z_prev, dim=-1)
    logits = torch.stack([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


@register
class Moon(Strategy):
    """MOON (Li et al. 2021, Model-Contrastive Federated Learning) with a two-layer projection head.

    The head (Linear(D, H)-ReLU-Linear(H, O) on the penultimate features) is trained and averaged
    with the model but kept by the strategy, so the model saved in trajectories is the plain
    classifier (the head only feeds the contrastive term; the MOON code puts the classifier on top of
    the head instead). The previous local model of a client that has not yet trained is the initial
    global model, as in the FedAlign code.
    """

    name = "moon"
    Config = MoonConfig
    standard_local_training = False

    def setup(self, num_clients, num_params, device, model=None, seed=0) -> None:
        super().setup(num_clients, num_params, device, model, seed)
        if model is None:
            raise ValueError("MOON needs the model at setup (its projection head is sized from it)")
        dim = model.classifier.in_features
        out = self.config.projection_dim or dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, _MOON_HEAD_STREAM))
            head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))
        self.head = head.to(device)
        self.head_flat = FlatParams(self.head)
        self.head_global = self.head_flat.get()
        self._global_model = copy.deepcopy(model).requires_grad_(False)
        self._prev_model = copy.deepcopy(model).requires_grad_(False)
        self._global_head = copy.deepcopy(self.head).requires_grad_(False)
        self._prev_head = copy.deepcopy(self.head).requires_grad_(False)
        self.prev = ClientStore(num_params, flatten_params(model).cpu())
        self.prev_heads = ClientStore(self.head_global.numel(), self.head_global.cpu())
        self._pending_heads: dict[int, torch.Tensor] = {}

    def state_dict(self):
        return {**super().state_dict(), "head_global": self.head_global, "prev": self.prev.state_dict(),
                "prev_heads": self.prev_heads.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.head_global = state["head_global"].to(self.device)
        self.prev.load_state_dict(state["prev"])
        self.prev_heads.load_state_dict(state["prev_heads"])

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        device = ctx.global_params.device
        buffers = flatten_buffers(model)
        for copy_, params in ((self._global_model, ctx.global_params),
                              (self._prev_model, self.prev.get(ctx.client_id, device))):
            load_params(copy_, params)
            if buffers.numel():
                load_buffers(copy_, buffers)
            copy_.train(model.training)
        load_params(self._global_head, self.head_global)
        load_params(self._prev_head, self.prev_heads.get(ctx.client_id, device))
        self.head_flat.set(self.head_global)
        self.head.train()

    def local_parameters(self, ctx: ClientContext) -> list[torch.Tensor]:
        return list(self.head.parameters())

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        features = model.forward_features(x)
        ce = F.cross_entropy(model.classifier(features), y)
        with torch.no_grad():
            z_global = self._global_head(self._global_model.forward_features(x))
            z_prev = self._prev_head(self._prev_model.forward_features(x))
        con = moon_contrastive_loss(self.head(features), z_global, z_prev, self.config.temperature)
        return ce + self.config.mu * con

    def end_local(self, model: nn.Module, ctx: ClientContext, params: torch.Tensor) -> None:
        head = self.head_flat.get()
        self.prev.set(ctx.client_id, params)
        self.prev_heads.set(ctx.client_id, head)
        self._pending_heads[ctx.client_id] = head

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        weights = sample_weights([r.num_samples for r in results])
        heads = torch.stack([self._pending_heads.pop(r.client_id) for r in results])
        self._pending_heads.clear()
        self.head_global = weighted_mean(heads, weights)
        return super().server_update(global_params, results)


# ---------------------------------------------------------------------------------------------
# Mixup
def mixup_batch(x: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm] (Zhang et al. 2018, mixup)."""
    return lam * x + (1 - lam) * x[perm]


def _numpy_rng(ctx: ClientContext) -> np.random.Generator:
    rng = ctx.scratch.get("numpy_rng")
    if rng is None:
        seed = int(torch.randint(0, 2**62, (), generator=ctx.generator))
        rng = ctx.scratch["numpy_rng"] = np.random.default_rng(seed)
    return rng


@register
class Mixup(Strategy):
    """Mixup (Zhang et al. 2018) as local training: lam ~ Beta(gamma, gamma), mixed inputs, mixed CE."""

    name = "mixup"
    Config = MixupConfig
    standard_local_training = False

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        gamma = self.config.gamma
        lam = float(_numpy_rng(ctx).beta(gamma, gamma)) if gamma > 0 else 1.0
        perm = torch.randperm(len(y), generator=ctx.generator).to(x.device)
        out = model(mixup_batch(x, perm, lam))
        return lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])


# ---------------------------------------------------------------------------------------------
# Stochastic Depth
def survival_probabilities(num_blocks: int, survival_last: float) -> list[float]:
    """Linear decay gamma_l = 1 - l/L (1 - gamma_L), l = 1..L (Huang et al. 2016; FedAlign Sec. 3.1)."""
    return [1 - (block / num_blocks) * (1 - survival_last) for block in range(1, num_blocks + 1)]


@register
class StochDepth(Strategy):
    """Stochastic Depth (Huang et al. 2016) as local training: residual blocks dropped at random.

    Block l survives with probability gamma_l (linear decay to gamma_L); a surviving residual branch
    is scaled by 1 / gamma_l during training (the "inverted" form), so that the trained weights
    are used as they are at evaluation: every analysis of the saved models evaluates the plain
    network, which is what Huang et al.'s test-time rule (branch scaled by gamma_l) computes, up to
    that re-parameterisation of the residual branches.
    """

    name = "stochdepth"
    Config = StochDepthConfig
    standard_local_training = False

    @classmethod
    def check_model(cls, model: str) -> None:
        require_model(model, "residual", "stochdepth", "residual")

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        probs = ctx.scratch.get("survival")
        if probs is None:
            probs = ctx.scratch["survival"] = survival_probabilities(len(model.blocks), self.config.survival_last)
        draws = torch.rand(len(probs), generator=ctx.generator).tolist()
        scales = [1.0 / p if u < p else 0.0 for u, p in zip(draws, probs, strict=True)]
        return F.cross_entropy(model.forward_residual_scaled(x, scales), y)


# ---------------------------------------------------------------------------------------------
# GradAug
@register
class GradAug(Strategy):
    """GradAug (Yang et al. 2020) as local training (FedAlign paper, eq. 2).

    CE of the full network plus mu * sum_i KL(softmax(full) || sub-network_i(T_i(x))): n sub-networks
    whose every hidden layer is sliced to a width (the smallest width and n - 1 widths drawn
    uniformly from [min_width, 1], largest first), each on the batch resized to a random scale.
    Each pass is back-propagated in turn, like the reference code, so memory stays at one pass.
    """

    name = "gradaug"
    Config = GradAugConfig
    standard_local_training = False

    @classmethod
    def check_model(cls, model: str) -> None:
        require_model(model, "width_sliceable", "gradaug", "width-sliceable")

    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        c = self.config
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        ce.backward()
        target = F.softmax(logits.detach(), dim=1)
        draws = torch.rand(c.num_subnets - 1, generator=ctx.generator).tolist()
        widths = sorted([c.min_width] + [c.min_width + u * (1 - c.min_width) for u in draws], reverse=True)
        total = ce.detach()
        size = x.shape[-1]
        for width in widths:
            scale = c.scales[int(torch.randint(len(c.scales), (), generator=ctx.generator))]
            side = max(1, round(scale * size))
            xs = x if side == size else F.interpolate(x, size=(side, side), mode="bilinear", align_corners=True)
            out = model.forward_width(xs, width)
            kl = c.mu * F.kl_div(F.log_softmax(out, dim=1), target, reduction="batchmean")
            kl.backward()
            total = total + kl.detach()
        return total


# ---------------------------------------------------------------------------------------------
# FedAlign
def transmitting_matrix(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """X = pool(h_in)^T h_out / (H W) per sample, [B, C_in, C_out] (Shang et al. 2021; FedAlign eqs. 6-7).

    The larger input map is adaptive-average-pooled to the output's spatial size first (FedAlign, App. A.2).
    """
    if h_in.shape[-2:] != h_out.shape[-2:]:
        h_in = F.adaptive_avg_pool2d(h_in, h_out.shape[-2:])
    a = h_in.flatten(2)  # [B, C_in, HW]
    b = h_out.flatten(2).transpose(1, 2)  # [B, HW, C_out]
    return torch.bmm(a, b) / a.shape[2]


def spectral_norm_power(matrix: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Per-sample spectral norm of [B, m, n] matrices: sqrt of the top eigenvalue of X X^T by power
    iteration from the all-ones vector (FedAlign code); differentiable, [B]."""
    k = torch.bmm(matrix, matrix.transpose(1, 2))
    v = torch.ones(k.shape[0], k.shape[1], 1, device=k.device, dtype=k.dtype)
    norm = torch.ones(k.shape[0], 1, 1, device=k.device, dtype=k.dtype)
    eps = torch.finfo(k.dtype).tiny * 1e8  # keeps the gradient finite for an all-zero matrix (a dead sample)
    for _ in range(iterations):
        m = torch.bmm(k, v)
        norm = (m.square().sum(dim=1, keepdim=True) + eps).sqrt()
        v = m / norm
    return norm.flatten().sqrt()


def lipschitz_estimate(h_in: torch.Tensor, h_out: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """FedAlign's Lipschitz estimate of a block: spectral norm of its transmitting matrix, per sample [B]."""
    return spectral_norm_power(transmitting_matrix(h_in, h_out), iterations)


@register
class FedAlign(Strategy):
    """FedAlign (Mendieta et al. 2022, Local Learning Matters): align the last block's Lipschitz constants.

    Loss CE + mu * (CE / L_lip) * L_lip with L_lip = MSE(K_S, K_F) between the Lipschitz estimates
    of the last block at full width (K_F, detached) and at width omega_s (K_S), the sub-block
    reusing the full network's (detached) block input; the ratio CE / L_lip is a constant (App. A.2).
    The last "block" is the whole last stage of a ResNet and `last_block` of cnn_small.
    """

    name = "fedalign"
    Config = FedAlignConfig
    standard_local_training = False

    @classmethod
    def check_model(cls, model: str) -> None:
        require_model(model, "width_sliceable", "fedalign", "width-sliceable")

    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        c = self.config
        h_in, h_out, logits = model.forward_last_block(x)
        ce = F.cross_entropy(logits, y)
        ce.backward()
        h_in, h_out = h_in.detach(), h_out.detach()
        sub_in, sub_out = model.last_block_width(h_in, c.width)
        k_s = lipschitz_estimate(sub_in, sub_out, c.power_iterations)
        k_f = lipschitz_estimate(h_in, h_out, c.power_iterations)
        lip = F.mse_loss(k_s, k_f)
        lip_value, ce_value = float(lip.detach()), float(ce.detach())
        if lip_value > 0 and math.isfinite(lip_value) and c.mu > 0:
            (c.mu * (ce_value / lip_value) * lip).backward()
            return ce.detach() + c.mu * ce_value
        return ce.detach()

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        if self.config.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.clip_grad_norm)


__all__ = [
    "FedAlign", "FedDyn", "FedProx", "GradAug", "Mixup", "Moon", "Scaffold", "ServerSGD", "StochDepth",
    "lipschitz_estimate", "mixup_batch", "moon_contrastive_loss", "spectral_norm_power", "survival_probabilities",
    "transmitting_matrix",
]
