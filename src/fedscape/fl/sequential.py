"""Sequential client training: one client after another, with every hook of the strategy.

The reference every faster path is checked against (fedscape.fl.vectorized).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedscape.data.datasets import augmented_batch, host_to_device, take_rows
from fedscape.data.federated import FederatedData
from fedscape.fl.capture import CapturedForward, make_capture
from fedscape.fl.local import client_generator, layer_seed, local_plan, round_work
from fedscape.fl.schedule import update_weight
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import ClientContext, ClientResult, ClientStore, Strategy, param_views
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
    momentum: torch.Tensor | None = None,
    work: int | None = None,
    capture: CapturedForward | None = None,
) -> tuple[ClientResult, torch.Tensor]:
    """One client's local training (SGD or AdamW, `cfg.optimizer`) from the global model, with the strategy's
    local objective.

    `momentum`: the client's kept optimiser state to start from (None: a fresh optimiser): its flat SGD momentum
    buffer, or with AdamW its moments and step count (`adamw_state`). `work`: its local epochs or steps this
    round (None: from `cfg.client_work`). `capture`: the model's forward and backward replayed from CUDA graphs
    (fedscape.fl.capture), captured and checked on the first full batch; None: eager. Returns the result and that
    state after the last step (zeros where a parameter got no gradient).
    """
    flat.set(global_params)
    if global_buffers.numel():
        load_buffers(model, global_buffers)
    model.train()
    device = global_params.device
    generator = client_generator(cfg.seed, round_, client_id)
    torch.manual_seed(layer_seed(cfg.seed, round_, client_id))
    idx = data.client_indices[client_id]
    x, y = take_rows(data.x_train, idx), data.y_train[idx]  # a shard stored as uint8 stays uint8
    if work is None:
        work = cfg.client_work(round_, data.num_clients)[client_id]
    plan = local_plan(cfg, len(idx), work, round_, generator)
    sgd_momentum = cfg.momentum if cfg.optimizer == "sgd" else 0.0
    ctx = ClientContext(round_, client_id, global_params, x, y, generator, lr=cfg.lr, momentum=sgd_momentum,
                        nesterov=cfg.nesterov, step_lrs=plan.lrs)
    strategy.begin_local(model, ctx)
    opt = local_optimizer(decay_groups(model, strategy.local_parameters(ctx)), cfg)
    if momentum is not None and cfg.optimizer == "adamw":
        load_adamw_state(opt, model, momentum.to(device))
    elif momentum is not None and cfg.momentum:
        for p, buf in zip(model.parameters(), param_views(momentum.to(device), model), strict=True):
            opt.state[p]["momentum_buffer"] = buf.clone()
    total, steps = torch.zeros((), device=device, dtype=global_params.dtype), 0  # a float64 model's loss too
    # The round's batch indices reach the device in one copy, not one per step (`host_to_device`).
    sizes = [len(b) for b in plan.batches]
    batches = host_to_device(torch.cat(plan.batches), device).split(sizes) if sizes else ()
    for b, lr in zip(batches, plan.lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        xb = augmented_batch(x, b, cfg.augment, generator)
        opt.zero_grad(set_to_none=True)
        if capture is not None:
            capture.prepare(xb, y[b])
        loss = strategy.local_backward(model, xb, y[b], ctx)  # back-propagates the local objective
        strategy.adjust_gradients(model, ctx)
        opt.step()
        ctx.steps += 1
        total += loss.detach()
        steps += 1
    params = flat.get()
    strategy.end_local(model, ctx, params)
    if cfg.optimizer == "adamw":
        momentum_out = adamw_state(opt, model)
    else:
        buffers = [opt.state[p].get("momentum_buffer") for p in model.parameters()]
        momentum_out = torch.cat([(torch.zeros_like(p) if b is None else b).reshape(-1)
                                  for p, b in zip(model.parameters(), buffers, strict=True)]).detach()
    result = ClientResult(client_id, len(idx), params, flatten_buffers(model), float(total) / max(steps, 1),
                          steps, update_weight(plan.lrs, sgd_momentum, cfg.nesterov))
    return result, momentum_out


def undecayed(model: torch.nn.Module) -> frozenset[str]:
    """The names of `model`'s parameters that weight decay leaves alone: those its modules name in their
    `no_weight_decay()` (char_gpt's, `fedscape.models.specs.NO_DECAY_MODELS`), under a wrapper too (MOON's
    projection head); none for every other model."""
    return frozenset(f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
                     if hasattr(module, "no_weight_decay") for name in module.no_weight_decay())


def decay_groups(model: torch.nn.Module, extra: Sequence[torch.Tensor] = ()) -> list[dict]:
    """The parameter groups of an optimiser of `model` and a strategy's `extra` tensors (MOON's projection head,
    decayed): one group, and a second of weight decay 0 with the parameters the model leaves undecayed
    (`undecayed`), as its reference code groups them for every optimiser."""
    skip = undecayed(model)
    named = list(model.named_parameters())
    groups = [{"params": [*(p for name, p in named if name not in skip), *extra]}]
    if skip:
        groups.append({"params": [p for name, p in named if name in skip], "weight_decay": 0.0})
    return groups


def local_optimizer(params: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The clients' local optimiser of `cfg.optimizer` over the parameter groups `params` (`decay_groups`): torch's
    SGD (momentum, Nesterov's where `cfg.nesterov`, coupled weight decay) or AdamW
    (Loshchilov & Hutter 2019: decoupled weight decay)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adamw_beta1, cfg.adamw_beta2), eps=cfg.adamw_eps,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


def adamw_state_size(model: torch.nn.Module) -> int:
    """The entries of `adamw_state`: both moments of every parameter, and each parameter tensor's step count."""
    params = list(model.parameters())
    return 2 * sum(p.numel() for p in params) + len(params)


def adamw_state(opt: torch.optim.Optimizer, model: torch.nn.Module) -> torch.Tensor:
    """AdamW's state of the model's parameters as one flat vector [exp_avg, exp_avg_sq, steps] (`adamw_state_size`;
    zeros for a parameter without state). torch counts each parameter's steps: one that got no gradient in a step
    (a residual branch Stochastic Depth dropped) was not stepped, and its bias correction (1 - beta^t) is its own."""
    parts, steps = [[], []], []
    for p in model.parameters():
        state = opt.state.get(p, {})
        for i, key in enumerate(("exp_avg", "exp_avg_sq")):
            parts[i].append((state[key] if key in state else torch.zeros_like(p)).reshape(-1))
        steps.append(float(state["step"]) if "step" in state else 0.0)
    device = next(model.parameters()).device
    return torch.cat([*parts[0], *parts[1], torch.tensor(steps, device=device, dtype=parts[0][0].dtype)]).detach()


def load_adamw_state(opt: torch.optim.Optimizer, model: torch.nn.Module, state: torch.Tensor) -> None:
    """Restore `adamw_state` into a fresh AdamW of the model's parameters: each parameter that has taken a step gets
    its moments and its step count."""
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    steps = state[2 * n:].tolist()
    for p, m, v, step in zip(params, param_views(state[:n], model), param_views(state[n : 2 * n], model), steps,
                             strict=True):
        if step > 0:
            opt.state[p] = {"step": torch.tensor(step), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}


def per_tensor_steps(state: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """A kept AdamW state as `adamw_state` lays it out. One kept by a run before each parameter had its own step count
    (2P + 1 entries: the largest) gives every parameter that count, as its loading did then, so the run resumes as it
    ran."""
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    if len(state) == 2 * n + 1:
        return torch.cat([state[:2 * n], state[2 * n:].expand(len(params))])
    return state


class SequentialTrainer:
    """Trains the sampled clients of a round one after another on one model (bound to `flat`).

    With `cfg.keep_optimizer_state` it keeps each client's optimiser state between rounds (SGD's momentum
    buffer, or AdamW's moments and step count; on the CPU, in `state_dict` so that a resumed run continues
    with it).
    """

    def __init__(self, model: torch.nn.Module, flat: FlatParams, data: FederatedData, strategy: Strategy,
                 cfg: TrainConfig):
        self.model, self.flat, self.data, self.strategy, self.cfg = model, flat, data, strategy, cfg
        size = adamw_state_size(model) if cfg.optimizer == "adamw" else flat.vector.numel()
        self.momentum = ClientStore(size) if cfg.keep_optimizer_state else None
        self.capture = make_capture(model, strategy, cfg, flat.vector.device.type)

    def train_round(self, global_params: torch.Tensor, global_buffers: torch.Tensor, sampled: list[int],
                    round_: int) -> list[ClientResult]:
        """Local training of the `sampled` clients; results in `sampled` order."""
        results = []
        work = round_work(self.cfg, round_, sampled, self.data.num_clients)
        for c, amount in zip(sampled, work, strict=True):
            kept = None
            if self.momentum is not None and c in self.momentum.values:
                kept = self.momentum.get(c, global_params.device)
            result, momentum = local_train(self.model, self.flat, global_params, global_buffers, self.data, c, round_,
                                           self.strategy, self.cfg, kept, amount, self.capture)
            if self.momentum is not None:
                self.momentum.set(c, momentum)
            results.append(result)
        return results

    def state_dict(self) -> dict:
        """The kept momentum buffers (empty without `keep_optimizer_state`)."""
        return {} if self.momentum is None else {"momentum": self.momentum.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.momentum is not None and "momentum" in state:
            self.momentum.load_state_dict(state["momentum"])
            if self.cfg.optimizer == "adamw":
                self.momentum.values = {c: per_tensor_steps(v, self.model) for c, v in self.momentum.values.items()}

    def close(self) -> None:
        """Give the model its own forward back, where the steps were captured."""
        if self.capture is not None:
            self.capture.close()
