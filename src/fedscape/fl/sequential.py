"""Sequential client training: one client after another, with every hook of the strategy.

The reference every faster path is checked against (fedscape.fl.vectorized).
"""

from __future__ import annotations

import torch

from fedscape.data.datasets import augment_batch
from fedscape.data.federated import FederatedData
from fedscape.fl.local import batch_order, client_generator, layer_seed
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import ClientContext, ClientResult, Strategy
from fedscape.models.params import FlatParams, flatten_buffers, load_buffers


def local_train(
    model: torch.nn.Module,
    flat: FlatParams,
    global_params: torch.Tensor,
    global_buffers: torch.Tensor,
    data: FederatedData,
    client_id: int,
    round_: int,
    strategy: Strategy,
    cfg: TrainConfig,
) -> ClientResult:
    """One client's local SGD from the global model, with the strategy's local objective."""
    flat.set(global_params)
    if global_buffers.numel():
        load_buffers(model, global_buffers)
    model.train()
    device = global_params.device
    generator = client_generator(cfg.seed, round_, client_id)
    torch.manual_seed(layer_seed(cfg.seed, round_, client_id))
    idx = data.client_indices[client_id]
    x, y = data.x_train[idx], data.y_train[idx]
    ctx = ClientContext(round_, client_id, global_params, x, y, generator, lr=cfg.lr, momentum=cfg.momentum)
    strategy.begin_local(model, ctx)
    opt = torch.optim.SGD([*model.parameters(), *strategy.local_parameters(ctx)], lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    total, steps = torch.zeros((), device=device), 0
    for b in batch_order(len(idx), cfg.batch_size, cfg.local_epochs, generator):
        b = b.to(device)
        xb = augment_batch(x[b], cfg.augment, generator)
        opt.zero_grad(set_to_none=True)
        loss = strategy.local_backward(model, xb, y[b], ctx)  # back-propagates the local objective
        strategy.adjust_gradients(model, ctx)
        opt.step()
        ctx.steps += 1
        total += loss.detach()
        steps += 1
    params = flat.get()
    strategy.end_local(model, ctx, params)
    return ClientResult(client_id, len(idx), params, flatten_buffers(model), float(total) / max(steps, 1))


class SequentialTrainer:
    """Trains the sampled clients of a round one after another on one model (bound to `flat`)."""

    def __init__(self, model: torch.nn.Module, flat: FlatParams, data: FederatedData, strategy: Strategy,
                 cfg: TrainConfig):
        self.model, self.flat, self.data, self.strategy, self.cfg = model, flat, data, strategy, cfg

    def train_round(self, global_params: torch.Tensor, global_buffers: torch.Tensor, sampled: list[int],
                    round_: int) -> list[ClientResult]:
        """Local training of the `sampled` clients; results in `sampled` order."""
        return [local_train(self.model, self.flat, global_params, global_buffers, self.data, c, round_, self.strategy,
                            self.cfg) for c in sampled]
