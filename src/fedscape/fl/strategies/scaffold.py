"""SCAFFOLD (Karimireddy et al. 2020): control variates correct the clients' drift."""

from __future__ import annotations

import torch
from torch import nn

from fedscape.fl.schedule import update_weight
from fedscape.fl.strategies.base import ClientContext, ClientResult, ClientStore, Strategy, param_views


class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al. 2020): control variates correct client drift; option-II update.

    Server control variate c and client control variates c_i start at zero. Each local step uses
    the gradient g + c - c_i; afterwards c_i+ = c_i - c + (x - y_i) / (K lr) (option II, K local
    steps; with client momentum m or an lr schedule, K lr is replaced by `update_weight` of the steps'
    lrs, lr effective_steps(K, m) under a constant lr, so that the quotient stays an average gradient),
    and the server sets c <- c + sum_{i in S} p_i (c_i+ - c_i), p_i = n_i / n the client's share of all N clients'
    samples (`share_divisor`), so that c stays the mean of all N clients' c_i weighted as the model step weights
    their deltas (by samples, times the global lr `server_lr`, 1 in the paper's experiments). The paper's plain
    (1/N) is this on equal shards; with it beside sample-weighted deltas, a run on unequal shards converged to the
    minimum of the plain mean of the clients' losses, not FedAvg's sample-weighted one.

    Vectorised: each stacked client's correction c - c_i is added to its gradients (`adjust_gradients_vectorized`),
    the chunk's corrections stacked once per chunk (`begin_stacked`), and each client's update weight taken from its
    result (`end_stacked`, the sequential `end_local`'s); its c_i+ is computed by the server step, as sequentially.
    """

    standard_local_training = False
    vectorized = True  # the correction is elementwise: any model FedAvg stacks

    def setup(self, num_clients, num_params, device, model=None, seed=0, client_sizes=None) -> None:
        super().setup(num_clients, num_params, device, model, seed, client_sizes)
        self.c = torch.zeros(num_params, device=device)
        self.c_clients = ClientStore(num_params)
        # The update weight of each client of the round whose c_i moves (one that took steps at a positive lr), set
        # by its end hook; `server_update` computes its c_i+
        self._weights: dict[int, float] = {}

    def state_dict(self):
        return {**super().state_dict(), "c": self.c, "c_clients": self.c_clients.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.c = state["c"].to(self.device)
        self.c_clients.load_state_dict(state["c_clients"])

    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        c_i = self.c_clients.get(ctx.client_id, ctx.global_params.device)
        ctx.scratch["correction"] = param_views(self.c.to(c_i.device) - c_i, model)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        for p, corr in zip(model.parameters(), ctx.scratch["correction"], strict=True):
            if p.grad is not None:
                p.grad.add_(corr)

    def end_local(self, model: nn.Module, ctx: ClientContext, params: torch.Tensor) -> None:
        if ctx.steps == 0 or ctx.lr <= 0:
            return
        # K lr for plain SGD at a constant lr
        self._weights[ctx.client_id] = update_weight(ctx.step_lrs[: ctx.steps], ctx.momentum, ctx.nesterov)

    def begin_stacked(self, client_ids: list[int], global_params: torch.Tensor) -> None:
        device = global_params.device
        c_clients = torch.stack([self.c_clients.get(c, device) for c in client_ids])
        corrections = (self.c.to(device) - c_clients).to(global_params.dtype)  # as `begin_local`: c - c_i
        self._corrections = self.stacked_rows("corrections", corrections)

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor | None]) -> None:
        """g + c - c_i for every stacked client (a parameter without gradient keeps none, as `adjust_gradients`)."""
        k = params[0].shape[0]
        for i, correction in enumerate(self._corrections):
            if grads[i] is not None:
                grads[i] = grads[i] + correction[:k]

    def end_stacked(self, results: list[ClientResult]) -> None:
        """`end_local` of each client of the chunk, from its result (its update weight the sequential `end_local`'s)."""
        for r in results:
            if r.num_steps > 0 and r.update_weight > 0:
                self._weights[r.client_id] = r.update_weight
        self._corrections = None  # the chunk's rows: freed with `release_stacked` unless a captured step reads them

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        # Each moved client's c_i+ from its result, and c <- c + p_i (c_i+ - c_i), one client at a time in the results'
        # order, here rather than in the end hooks: kept from there, the clients' c_i+ - c_i were M model-sized
        # vectors on the training device until this step, and a sum advanced there would round otherwise, as the
        # vectorised trainer calls them in its stack's order (longest first). c_i is still the one the client trained
        # with (set here alone), and c the round's, which it subtracted.
        c = self.c
        for r in results:
            weight = self._weights.pop(r.client_id, None)
            if weight is None:
                continue
            c_i = self.c_clients.get(r.client_id, global_params.device)
            c_new = c_i - c.to(c_i.device) + (global_params - r.params) / weight
            self.c = self.c + (c_new - c_i).to(c.device) / self.share_divisor(r.client_id)
            self.c_clients.set(r.client_id, c_new)
        self._weights.clear()
        return super().server_update(global_params, results)
