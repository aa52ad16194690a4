"""FedNova (Wang et al. 2020): clients' updates are normalised by their local work before averaging."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedscape.fl.aggregate import mean_delta, sample_weights
from fedscape.fl.strategies.base import ClientResult, Strategy


def normalized_delta(global_params: torch.Tensor, client_params: torch.Tensor | Sequence[torch.Tensor],
                     weights: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """tau_eff sum_i p_i (y_i - x) / ||a_i||_1 with tau_eff = sum_i p_i ||a_i||_1 (Wang et al. 2020, eq. 6-7 with
    their default tau_eff): the mean of the clients' per-unit-of-work updates, scaled back to the mean work.

    `norms` are the clients' ||a_i||_1 in any common unit (here times the lr: `ClientResult.update_weight`).
    With equal norms it is FedAvg's weighted mean delta; a client without local steps (norm 0) adds nothing.
    `client_params`: [M, P], or the M clients' rows [P], summed a block of columns at a time as FedAvg's are.
    """
    weights = weights.to(torch.float64)
    norms = norms.to(torch.float64)
    if (norms < 0).any():
        raise ValueError(f"local-work norms must be non-negative, got {norms.tolist()}")
    tau_eff = (weights * norms).sum()
    scale = torch.where(norms > 0, weights * tau_eff / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return mean_delta(global_params, client_params, scale)  # sum_i scale_i (y_i - x), in float64


class FedNova(Strategy):
    """FedNova (Wang et al. 2020, Tackling the Objective Inconsistency Problem in Heterogeneous Federated
    Optimization): normalised averaging of client updates over unequal local work.

    Client i's update y_i - x after tau_i local steps of SGD with momentum rho is -lr G_i a_i with
    a_i[k] = (1 - rho^(tau_i - k)) / (1 - rho), so ||a_i||_1 = [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho)
    (tau_i for plain SGD; `fedscape.fl.schedule.update_weight` gives lr ||a_i||_1, also under an lr schedule).
    The server averages the normalised updates and rescales them by tau_eff = sum_i p_i ||a_i||_1, so that a
    client doing more steps no longer pulls the model towards its own objective. Local training is plain
    (vectorisable) SGD; only the server step differs from FedAvg, which it equals under equal local work.
    With AdamW at the clients the norms count lr-weighted steps (the paper treats SGD variants only).
    """

    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        weights = sample_weights([r.num_samples for r in results])
        norms = torch.tensor([r.update_weight for r in results], dtype=torch.float64)
        delta = normalized_delta(global_params, [r.params for r in results], weights, norms)
        return self.server_opt.step(global_params, -delta)
