"""FedDyn (Acar et al. 2021): dynamic regularisation aligns local and global stationary points."""

from __future__ import annotations

import torch
from torch import nn

from fedscape.fl.aggregate import sample_weights, weighted_mean
from fedscape.fl.strategies.base import ClientContext, ClientResult, ClientStore, Strategy, param_views


class FedDyn(Strategy):
    """FedDyn (Acar et al. 2021): dynamic regularisation that aligns local and global stationary points.

    Client k minimises L_k(w) - <g_k, w> + alpha/2 ||w - w_global||^2, then g_k <- g_k -
    alpha (w_k - w_global) (g_k starts at 0). The server keeps h <- h - alpha sum_{k in S} p_k
    (w_k - w_global), p_k = n_k / n the client's share of all N clients' samples (`share_divisor`), and sets
    w = mean_k w_k - h / alpha (the mean weighted by sample counts, as everywhere in fedscape). Equal shards give the
    paper's plain means (1/N, 1/|S|); its plain h beside sample-weighted models would make a run on unequal shards
    converge to the minimum of the plain mean of the clients' losses, not FedAvg's sample-weighted one.

    Vectorised: each stacked client's gradients get its own alpha (w - w_global) - g_k
    (`adjust_gradients_vectorized`), the chunk's g_k stacked once per chunk (`begin_stacked`), and each g_k
    updated from its result (`end_stacked`).
    """

    standard_local_training = False
    vectorized = True  # the regulariser's gradient is elementwise: any model FedAvg stacks

    def setup(self, num_clients, num_params, device, model=None, seed=0, client_sizes=None) -> None:
        super().setup(num_clients, num_params, device, model, seed, client_sizes)
        self.h = torch.zeros(num_params, device=device)
        self.grads = ClientStore(num_params)

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

    def begin_stacked(self, client_ids: list[int], global_params: torch.Tensor) -> None:
        g = torch.stack([self.grads.get(c, global_params.device) for c in client_ids]).to(global_params.dtype)
        self._g_stack = self.stacked_rows("g_k", g)
        self._stacked_global = global_params

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor | None]) -> None:
        """`adjust_gradients` of every stacked client: + alpha (w - w_global) - g_k, a parameter without gradient
        getting that term alone."""
        alpha, k = self.config.alpha, params[0].shape[0]
        for i, (p, w_g, g_k) in enumerate(zip(params, global_params, self._g_stack, strict=True)):
            extra = alpha * (p.detach() - w_g) - g_k[:k]
            grads[i] = extra if grads[i] is None else grads[i].add_(extra)

    def end_stacked(self, results: list[ClientResult]) -> None:
        """`end_local` of each client of the chunk, from its result."""
        for r in results:
            delta = r.params - self._stacked_global
            self.grads.set(r.client_id, self.grads.get(r.client_id, r.params.device) - self.config.alpha * delta)
        self._g_stack = None  # the chunk's rows: freed with `release_stacked` unless a captured step reads them

    def end_local(self, model: nn.Module, ctx: ClientContext, params: torch.Tensor) -> None:
        self.grads.set(ctx.client_id, ctx.scratch["g_k"] - self.config.alpha * (params - ctx.global_params))

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        alpha = self.config.alpha
        # Each client's w_k - w again from its result and the round's global model (those its end hook subtracted),
        # not kept from the end hooks: M model-sized deltas held on the training device until this step
        for r in results:
            delta = r.params - global_params
            self.h = self.h - alpha * delta.to(self.h.device) / self.share_divisor(r.client_id)
        weights = sample_weights([r.num_samples for r in results])
        mean = weighted_mean([r.params for r in results], weights)
        target = mean - self.h / alpha
        return self.server_opt.step(global_params, global_params - target)
