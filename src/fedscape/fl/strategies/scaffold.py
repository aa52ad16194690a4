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
    the chunk's corrections stacked once per chunk (`begin_stacked`), and each client's c_i+ computed from its result
    (`end_stacked`, its `update_weight` the sequential `end_local`'s).
    """

    standard_local_training = False
    vectorized = True  # the correction is elementwise: any model FedAvg stacks

    def setup(self, num_clients, num_params, device, model=None, seed=0, client_sizes=None) -> None:
        super().setup(num_clients, num_params, device, model, seed, client_sizes)
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
        # K lr for plain SGD at a constant lr
        weight = update_weight(ctx.step_lrs[: ctx.steps], ctx.momentum, ctx.nesterov)
        c_new = c_i - self.c.to(c_i.device) + (ctx.global_params - params) / weight
        self._delta_c[ctx.client_id] = (c_new - c_i).to(self.c.device)
        self.c_clients.set(ctx.client_id, c_new)

    def begin_stacked(self, client_ids: list[int], global_params: torch.Tensor) -> None:
        device = global_params.device
        c_clients = torch.stack([self.c_clients.get(c, device) for c in client_ids])
        corrections = (self.c.to(device) - c_clients).to(global_params.dtype)  # as `begin_local`: c - c_i
        self._corrections = self.stacked_rows("corrections", corrections)
        self._stacked_global = global_params

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor | None]) -> None:
        """g + c - c_i for every stacked client (a parameter without gradient keeps none, as `adjust_gradients`)."""
        k = params[0].shape[0]
        for i, correction in enumerate(self._corrections):
            if grads[i] is not None:
                grads[i] = grads[i] + correction[:k]

    def end_stacked(self, results: list[ClientResult]) -> None:
        """`end_local` of each client of the chunk, from its result: c_i+ = c_i - c + (x - y_i) / its update weight."""
        for r in results:
            if r.num_steps == 0 or r.update_weight <= 0:
                continue
            c_i = self.c_clients.get(r.client_id, r.params.device)
            c_new = c_i - self.c.to(c_i.device) + (self._stacked_global - r.params) / r.update_weight
            self._delta_c[r.client_id] = (c_new - c_i).to(self.c.device)
            self.c_clients.set(r.client_id, c_new)

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        for r in results:
            if r.client_id in self._delta_c:
                self.c = self.c + self._delta_c[r.client_id] / self.share_divisor(r.client_id)
        self._delta_c.clear()
        return super().server_update(global_params, results)
