"""Algorithms as small strategy classes over one engine (Flower-style hooks, FLSim server update).

A strategy has client-side hooks used by the engine's local SGD loop (`begin_local`,
`local_parameters`, `local_backward` -> `local_loss`, `adjust_gradients`, `end_local`) and one
server-side hook (`server_update`): aggregate the client deltas weighted by sample counts, treat
the mean delta as a pseudo-gradient and step a server optimiser. FedAvg, FedAvgM, FedAdam, FedYogi
and FedAdagrad differ only in that optimiser (`fedavg`); every other module of this package but `base` and `registry`
is one algorithm family that changes the clients' local training (SCAFFOLD and FedDyn with a server state besides),
except FedNova (`fednova`), whose clients train as FedAvg's and whose server step alone differs (normalised
averaging). Hyperparameters live in one frozen dataclass per algorithm, in the module of the same name in
`fedscape.fl.hparams`; `registry.make_strategy` builds a strategy by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedscape.fl.aggregate import mean_delta, sample_weights, weighted_mean
from fedscape.fl.hparams.base import ServerSGDConfig
from fedscape.fl.server_opt import ServerOptimizer, ServerSGD
from fedscape.models.loss import mean_loss


@dataclass
class ClientContext:
    """What a client's local training sees in one round."""

    round: int
    client_id: int
    global_params: torch.Tensor  # flat, on the training device; never modified
    x: torch.Tensor  # the client's inputs (a StoredImages where the dataset is stored as uint8: index it for floats)
    y: torch.Tensor
    generator: torch.Generator  # CPU generator of the client's batch order; strategies draw from it too
    lr: float = 0.0  # the local learning rate (SCAFFOLD's option-II control variate divides by it)
    momentum: float = 0.0  # the local SGD momentum
    nesterov: bool = False  # whether it is Nesterov momentum
    steps: int = 0  # local optimiser steps taken so far (counted by the engine)
    step_lrs: list[float] = field(default_factory=list)  # the lr of each local step of this round (its schedule)
    scratch: dict[str, Any] = field(default_factory=dict)  # per-client working state of the strategy


@dataclass(frozen=True)
class StackedBatch:
    """One vectorised step's batches as the trainer's loss evaluates them, for a strategy whose local objective runs
    the model its own way (FedAlign): the model and its parameter names (the order of the stacked parameters), the
    active clients' inputs x [K, B, ...] after augmentation, their targets y and loss mask [K, B] (0 for a padded
    row), `norm(update)`: the batch norms' state of a pass (`fedscape.models.layers.StackedNorm`: padded rows
    masked; the clients' running statistics moved by the pass where `update`), None for a model without batch
    norm, the round's global parameters (unstacked, in `names` order; MOON's reference model) and each active
    client's draws of the step (`Strategy.local_draws`; GradAug's sub-networks), empty for a strategy without any."""

    model: nn.Module
    names: list[str]
    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    norm: Callable[[bool], Any]
    global_params: list[torch.Tensor] = field(default_factory=list)
    draws: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class ClientResult:
    """A client's model after local training."""

    client_id: int
    num_samples: int
    params: torch.Tensor
    buffers: torch.Tensor
    train_loss: float
    num_steps: int = 0  # local optimiser steps taken
    # sum_j sum_{k >= j} lr_k m^(k - j) over the local steps (fedscape.fl.schedule.update_weight): the weight of
    # the local gradients in the update, FedNova's ||a_i||_1 times the lr (Wang et al. 2020)
    update_weight: float = 0.0


def param_views(vector: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    """Views of a flat vector shaped like the model's parameters, in `parameters()` order."""
    views, offset = [], 0
    for p in model.parameters():
        n = p.numel()
        views.append(vector[offset : offset + n].view_as(p))
        offset += n
    if offset != vector.numel():
        raise ValueError(f"flat vector has {vector.numel()} entries but the model has {offset} parameters")
    return views


def stacked_gradients(losses: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """The gradients of the stacked clients' summed `losses` [K] at `params`, None for a tensor the loss does not
    use (a bypassed layer), whose `.grad` stays None in sequential training, so that the optimiser skips it (no
    weight decay, momentum or step) there as here."""
    return list(torch.autograd.grad(losses.sum(), params, allow_unused=True))


def slimmed_stack_blocker(name: str, model: nn.Module, stacked_forward: bool, method: str, what: str) -> str | None:
    """Why algorithm `name`, which slims each stacked client's layers (`what`) through the model's own `method`, cannot
    train `model` stacked (through its own `forward_stacked` where `stacked_forward`, else under vmap): only the
    ResNets' stacked forward slims (every norm of theirs: `models.layers.sliced_stacked_norm`). None: it can."""
    if not (stacked_forward and hasattr(model, method)):
        return (f"algorithm {name!r} {what}, which only the ResNets' own stacked forward does ({type(model).__name__}"
                f"{'' if stacked_forward else ' under vmap'})")
    return None


class ClientStore:
    """Per-client flat vectors (control variates, previous local models) kept on the CPU.

    Clients that never took part read `default` (zeros when None); the state is a plain dict of
    tensors so that it survives the engine's per-round progress files.
    """

    def __init__(self, num_params: int, default: torch.Tensor | None = None):
        self.num_params = num_params
        self.default = default
        self.values: dict[int, torch.Tensor] = {}

    def get(self, client_id: int, device: torch.device | str) -> torch.Tensor:
        value = self.values.get(client_id)
        if value is None:
            value = self.default if self.default is not None else torch.zeros(self.num_params)
        return value.to(device)

    def set(self, client_id: int, value: torch.Tensor) -> None:
        self.values[client_id] = value.detach().to("cpu", copy=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        ids = sorted(self.values)
        state = {"ids": torch.tensor(ids, dtype=torch.long)}
        state["values"] = torch.stack([self.values[i] for i in ids]) if ids else torch.zeros(0, self.num_params)
        if self.default is not None:
            state["default"] = self.default
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "default" in state:
            self.default = state["default"].cpu()
        self.values = {int(i): v.cpu() for i, v in zip(state["ids"].tolist(), state["values"], strict=True)}

    def mean(self, num_clients: int) -> torch.Tensor:
        """(1/N) sum over all N clients, the absent ones at their default."""
        base = self.default if self.default is not None else torch.zeros(self.num_params)
        total = base.double() * (num_clients - len(self.values))
        for v in self.values.values():
            total = total + v.double()
        return (total / num_clients).float()


# The hooks through which a strategy changes a client's training: those the sequential trainer calls, and those
# the vectorised trainer calls instead on a stacked step.
CLIENT_HOOKS = ("begin_local", "local_parameters", "local_backward", "local_loss", "adjust_gradients", "end_local")
STACKED_HOOKS = ("input_mixing", "residual_scales", "local_draws", "local_gradients_vectorized",
                 "adjust_gradients_vectorized", "begin_stacked", "end_stacked")


class Strategy:
    """The base of every algorithm, and FedAvg's behaviour (McMahan et al. 2017): local SGD on cross-entropy,
    sample-weighted model averaging fed to a server optimiser."""
    # True when local training is plain SGD on cross-entropy (only the server step differs), so a
    # batched/vectorised client path may train these clients without calling the client hooks.
    standard_local_training: ClassVar[bool] = True
    # Whether fedscape.fl.vectorized may train all clients of a round at once (stacked parameters
    # under vmap; `input_mixing`, `residual_scales`, `local_gradients_vectorized` and `adjust_gradients_vectorized`
    # are its only client hooks, `stacked_blocker` the models they do not cover). FedAvg: yes. A subclass is
    # False unless it declares `vectorized` itself, or it only changes the server step (standard local training
    # and no client hook of its own), in which case it inherits its parent's value.
    vectorized: ClassVar[bool] = True
    # Which of its local steps CUDA graphs never replay (fedscape.fl.capture) is declared torch-free, for planning
    # too, by its algorithm's spec (`AlgorithmSpec.uncaptured`, gathered in fedscape.fl.settings.UNCAPTURED_STEPS
    # under the class's `strategy_ref`): a strategy whose sequential objective runs the model its own way (its
    # `local_backward` or `local_loss`) is named there unless its passes are plain `model(x)` passes, each
    # back-propagated before the next (FedSAM), and tests/unit/test_capture_planning.py checks every registered
    # strategy's steps against it.
    # Whether local training scales each residual branch per step (`residual_scales`), so that the stacked step
    # keeps each client's dropped branches as its step found them.
    residual_scaled: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "vectorized" not in cls.__dict__:
            if not cls.standard_local_training or any(h in cls.__dict__ for h in CLIENT_HOOKS):
                cls.vectorized = False

    @classmethod
    def local_step_is_fedavgs(cls) -> bool:
        """Whether a client trains exactly as FedAvg's does, step for step, so that only the server step differs
        (FedAvgM, FedAdam, FedNova): standard local training, and no client hook, stacked-step hook or model change
        of its own or inherited (FedASAM inherits FedSAM's)."""
        hooks = (*CLIENT_HOOKS, *STACKED_HOOKS, "prepare_model")
        return cls.standard_local_training and all(getattr(cls, h) is getattr(Strategy, h) for h in hooks)

    def __init__(self, config: Any = None, name: str = "fedavg"):
        # config: the algorithm's hyperparameter dataclass (fedscape.fl.hparams); FedAvg's by default
        self.config = ServerSGDConfig() if config is None else config
        self.name = name
        self._stacked_stores: dict[str, dict[int, list[torch.Tensor]]] = {}  # `stacked_rows`
        self.stacked_generation = 0  # counts `release_stacked`: a graph replaying older rows' addresses is stale
        self._param_shapes: list[tuple[int, ...]] | None = None  # the model's given to `setup`, for `stacked_rows`
        self.server_opt = self.make_server_optimizer()

    # -- set-up and state -------------------------------------------------------------------
    def make_server_optimizer(self) -> ServerOptimizer:
        return ServerSGD(self.config.server_lr, self.config.server_momentum)

    def setup(self, num_clients: int, num_params: int, device: torch.device, model: nn.Module | None = None,
              seed: int = 0, client_sizes: Sequence[int] | None = None) -> None:
        """Allocate per-run state (control variates, previous models) before the first round.

        `model` holds the initial weights; `seed` is the run seed (for the strategy's own random
        initialisations); `client_sizes`: the N clients' sample counts (None: equal), which weight a server state
        kept over all clients (`share_divisor`). A resumed run calls setup and then `load_state_dict`.
        """
        self.num_clients, self.num_params, self.device = num_clients, num_params, device
        if client_sizes is not None and (len(client_sizes) != num_clients or min(client_sizes, default=1) < 1):
            raise ValueError(f"need {num_clients} client sizes >= 1, got {list(client_sizes)}")
        self.client_sizes = None if client_sizes is None else tuple(int(n) for n in client_sizes)
        self._param_shapes = None if model is None else [tuple(p.shape) for p in model.parameters()]
        self.release_stacked()

    def share_divisor(self, client_id: int) -> float:
        """1 / p_i, p_i = n_i / n the client's share of all N clients' samples (N with equal or unknown sizes): a
        server state over all clients (SCAFFOLD's c, FedDyn's h) adds p_i times a client's change, so that it stays
        the mean weighted as the models are (by samples), and the run minimises sum_i p_i f_i as FedAvg's does (the
        papers' plain mean over clients is this objective where the shards are equal). A divisor, not a factor:
        with equal sizes it is N exactly, so those runs compute as they did with a plain mean."""
        if self.client_sizes is None:
            return float(self.num_clients)
        return sum(self.client_sizes) / self.client_sizes[client_id]

    def prepare_model(self, model: nn.Module, seed: int = 0) -> nn.Module:
        """The model this algorithm trains from the initial `model` (which it may take over): `model` itself, but
        for an algorithm whose `config.model_options()` change it (MOON's classifier on its projection head),
        built with `seed` (the run seed). Called before `setup`, and again on resuming."""
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"server_opt": self.server_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_opt.load_state_dict(state.get("server_opt", {}))

    # -- client side --------------------------------------------------------------------------
    def begin_local(self, model: nn.Module, ctx: ClientContext) -> None:
        """Called once per client and round with the global model loaded, before the first step."""

    def local_parameters(self, ctx: ClientContext) -> list[torch.Tensor]:
        """Extra tensors the local optimiser trains along with the model (MOON's projection head)."""
        return []

    def local_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        """Accumulate the gradients of the local objective on one batch; returns its (detached) value.

        The default back-propagates `local_loss`; methods with several passes per batch (GradAug,
        FedAlign) override this to back-propagate each pass in turn, as their reference code does.
        """
        loss = self.local_loss(model, x, y, ctx)
        loss.backward()
        return loss.detach()

    def local_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        """The local objective on one batch; FedAvg minimises the plain cross-entropy."""
        return mean_loss(model(x), y)

    def adjust_gradients(self, model: nn.Module, ctx: ClientContext) -> None:
        """Change gradients after backward, before the local optimiser step (SCAFFOLD's correction)."""

    def input_mixing(self, n: int, generator: torch.Generator, scratch: dict[str, Any]
                     ) -> tuple[float, torch.Tensor] | None:
        """The vectorised path's draws of an input-mixing objective for one step's batch of n: (lam, a CPU
        permutation of the batch), each client's batch then mixed as lam x + (1 - lam) x[perm] and its loss as
        lam CE(y) + (1 - lam) CE(y[perm]) (Mixup); drawn from the client's `generator` (with `scratch`, its working
        state of the round) in the order its `local_loss` draws them, after the step's augmentation. None: no
        mixing (nothing drawn)."""
        return None

    def residual_scales(self, num_blocks: int, generator: torch.Generator, scratch: dict[str, Any]
                        ) -> list[float] | None:
        """The vectorised path's draws of a random-depth objective for one step: each residual block's scale (0 drops
        its branch; Stochastic Depth), drawn from the client's `generator` (with `scratch`) in the order its
        `local_loss` draws them, after the step's augmentation. None: every branch as it is (nothing drawn).
        A strategy that returns scales declares `residual_scaled`."""
        return None

    def local_draws(self, n: int, generator: torch.Generator, scratch: dict[str, Any]) -> Any:
        """The vectorised path's draws of an objective that draws its own per step (GradAug's sub-networks' widths
        and input sizes), for a step's batch of n: drawn from the client's `generator` (with `scratch`) in the order
        its `local_backward` draws them, after the step's augmentation, and handed to `local_gradients_vectorized`
        as `loss.batch.draws`, one per active client. None: nothing drawn. Host values that change every step: a
        strategy that draws them (`draws_per_step`) has its stacked steps declared uncaptured
        (fedscape.fl.settings.UNCAPTURED_STEPS)."""
        return None

    @classmethod
    def draws_per_step(cls) -> bool:
        """Whether the strategy has its own `local_draws` (host draws every stacked step, which no CUDA graph
        replays: `UNCAPTURED_STEPS` must name its stacked steps, tests/unit/test_capture_planning.py checks)."""
        return cls.local_draws is not Strategy.local_draws

    def stacked_blocker(self, model: nn.Module, stacked_forward: bool = True, optimizer: str = "sgd") -> str | None:
        """Why this algorithm's local training has no vectorised form for `model` (trained through its own
        `forward_stacked` where `stacked_forward`, else under vmap) and the local `optimizer`, or None: every model
        its declaration (`vectorized`) covers."""
        return None

    def stacked_speed_blocker(self, model: nn.Module, device_type: str) -> str | None:
        """Why `client_parallel: auto` trains this algorithm's clients on `model` one after another on a
        `device_type` device although its vectorised form is exact there: measured slower (benchmarks/README.md),
        or None. The model's own measurements (`speed_blocker`) come first; this is what the algorithm adds."""
        return None

    def local_gradients_vectorized(self, params: list[torch.Tensor],
                                   loss: Callable[[list[torch.Tensor]], torch.Tensor]
                                   ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """`local_backward` of the vectorised path: (the K losses, the gradients to apply) for stacked clients.

        `params` are the K active clients' parameters [K, *shape] (leaves that require grad, in
        `named_parameters()` order); `loss(tensors)` is every client's mean cross-entropy [K] on its batch of
        this step (padded samples excluded) at any stacked parameters of those shapes, so a strategy may
        evaluate it more than once (FedSAM: at w and at w + e); `loss.batch` is the step's `StackedBatch`, for an
        objective that runs the model its own way. The default: the gradients at `params`, None for a tensor the
        loss does not use (`stacked_gradients`).
        """
        losses = loss(params)
        return losses.detach(), stacked_gradients(losses, params)

    def adjust_gradients_vectorized(self, params: list[torch.Tensor], global_params: list[torch.Tensor],
                                    grads: list[torch.Tensor | None]) -> None:
        """`adjust_gradients` of the vectorised path, in place on stacked client tensors [K, *shape].

        `params` and `grads` hold the K active clients of a step, `global_params` the round's global
        model (unstacked), all in `named_parameters()` order; nothing for FedAvg. A None in `grads` is a
        parameter without gradient, which the optimiser skips unless the hook puts a tensor there, as
        `adjust_gradients` may give a parameter whose `.grad` is None one.
        """

    def begin_stacked(self, client_ids: list[int], global_params: torch.Tensor) -> None:
        """`begin_local` of the vectorised path: called before a chunk's stacked steps with its clients in the
        stack's order and the round's global parameters (flat). A step's active clients are the first K."""

    def end_stacked(self, results: list[ClientResult]) -> None:
        """`end_local` of the vectorised path: called after a chunk's steps with its clients' results."""

    def stacked_rows(self, name: str, rows: torch.Tensor) -> list[torch.Tensor]:
        """`rows` [K, P] (one flat vector per stacked client: previous models, control variates) as [K, *shape]
        tensors per parameter of the model given to `setup`, copied into tensors kept per (name, K) until
        `release_stacked`, so that a captured stacked step reads each chunk's own at the addresses it captured (new
        tensors where the rows' dtype or device changed: the trainer then drops that chunk size's graphs too)."""
        if self._param_shapes is None:
            raise ValueError(f"algorithm {self.name!r} stacks per-client state only for the model given to setup")
        k0, shapes = rows.shape[0], self._param_shapes
        cache = self._stacked_stores.setdefault(name, {})
        store = cache.get(k0)
        if store is None or (store[0].dtype, store[0].device) != (rows.dtype, rows.device):
            store = cache[k0] = [rows.new_empty((k0, *shape)) for shape in shapes]
        with torch.no_grad():
            for tensor, values in zip(store, rows.split([math.prod(s) for s in shapes], dim=1), strict=True):
                tensor.copy_(values.view_as(tensor))
        return store

    def release_stacked(self) -> None:
        """Free the tensors of `stacked_rows`: the vectorised trainer calls it after each chunk where no step
        replays from a graph, and when it closes; `setup` too, so that a trainer kept for a new run drops the graphs
        that read the old rows (`stacked_generation`)."""
        self._stacked_stores.clear()
        self.stacked_generation += 1

    def end_local(self, model: nn.Module, ctx: ClientContext, params: torch.Tensor) -> None:
        """Called after the client's last step with its final flat parameters (update client state)."""

    # -- server side --------------------------------------------------------------------------
    def server_update(self, global_params: torch.Tensor, results: list[ClientResult]) -> torch.Tensor:
        """New global parameters from the client results (weighted mean delta -> server optimiser), read from the
        results' own rows (no stack of all of them: `fedscape.fl.aggregate.client_rows`)."""
        weights = sample_weights([r.num_samples for r in results])
        delta = mean_delta(global_params, [r.params for r in results], weights)
        return self.server_opt.step(global_params, -delta)

    def aggregate_buffers(self, results: list[ClientResult]) -> torch.Tensor:
        """Floating buffers (batch-norm statistics) are averaged with the same sample weights."""
        weights = sample_weights([r.num_samples for r in results])
        return weighted_mean([r.buffers for r in results], weights)
