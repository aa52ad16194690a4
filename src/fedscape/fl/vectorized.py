"""Vectorised local training: all participating clients of a round train at once.

Simulating M clients one after another leaves an accelerator (and most of a CPU's vector units)
idle: the models are small and the local batches are tiny. Here every client's parameters are
stacked along a leading client axis and one step of local SGD is taken for all still-active
clients together, with `torch.func.functional_call` under `torch.func.vmap` (batched matmuls and
grouped convolutions underneath), as in the ensembling recipe of `torch.func`. A model with its own
`forward_stacked` (cnn_small, convnet, lenet5, the ResNets) computes the same thing in a layout of its choosing:
grouped convolutions (channels-last on a CPU, channels-first on a GPU: `fedscape.models.layers.grouped_memory_format`),
with each ReLU before a max pool moved after it, which is about 1.4x faster than the vmapped forward on a CPU
(cnn_small, convnet).

`client_parallel: auto` vectorises wherever that is exact on CUDA, but on a CPU only models whose own
`forward_stacked` is not known to be slower there (not the ResNets: resnet20 0.7-0.9x of sequential speed) or
that declare `vmap_faster_on_cpu` (mlp): under vmap the CPU speed depends on the model (mlp 3-6x faster than
sequential training, resnet20 with group norm at 32x32 0.6-0.7x, char_lstm 0.4x), so elsewhere the sequential
reference is kept unless `vectorized` is asked for (`speed_blocker`).

Exactness with the sequential reference (`fedscape.fl.sequential.local_train`):

- every client's batch order (and augmentation draws) come from the same CPU generator,
  `client_generator(seed, round, client)` followed by `batch_order(...)`, so client m sees exactly
  the batches it sees sequentially;
- unequal shards: a client with fewer steps is simply inactive in the last steps. Clients are
  sorted by their step count so that the active ones are a prefix of the stack; a client's last,
  smaller batch of an epoch is padded, to the longest real batch of that step, with copies of its own
  first sample and a loss mask, and its loss is the mean over the real samples only (a padded row enters
  the masked sums as 0 x value: a non-finite value there could only be one the client trains on anyway);
- local work in epochs or steps, equal or not (system heterogeneity), is the same plan of batches
  (`fedscape.fl.local.local_plan`), and each step's learning rate (its schedule) is the same number,
  per client where clients differ in their step counts;
- the local optimiser is torch's SGD (momentum, Nesterov's or not, dampening 0, weight decay) or AdamW (bias-corrected,
  decoupled weight decay) written out for the stacked tensors and applied to the active prefix only, each parameter's
  decay its group's (none for those the model leaves undecayed: `fedscape.fl.sequential.decay_groups`).
  AdamW divides by sqrt(v) + eps, which magnifies the float rounding of near-zero gradients, so `auto`
  trains AdamW clients sequentially and only an explicit `vectorized` stacks them (equal to 1e-5 at
  a larger eps, and step for step torch's AdamW on the same gradients);
- the gradients a step applies come from the strategy's `local_gradients_vectorized` (plain
  cross-entropy by default) and `adjust_gradients_vectorized` (FedProx's elementwise prox term).
  FedSAM and FedASAM take every client's ascent e from the norm of its own gradient (over its own
  parameters, the padded samples excluded by the loss mask, zero for a zero gradient) and the
  gradient of its masked loss at w + e, on the same batch, as `FedSAM.local_backward` does one client
  at a time;
- an input-mixing objective (Mixup, Zhang et al. 2018) mixes each client's batch after its augmentation with the lam
  and permutation its sequential `local_loss` draws, from the same generator in the same order
  (`Strategy.input_mixing`; a padded row mixes with itself), and takes lam CE(y) + (1 - lam) CE(y[perm]) over the
  real rows;
- a random-depth objective (Stochastic Depth, Huang et al. 2016) scales each client's residual branches by the
  scales its sequential `local_loss` draws (`Strategy.residual_scales`, through the ResNets' `forward_stacked`); a
  branch at scale 0 adds exactly 0 and gets zero gradients, and its parameters, SGD momentum and running statistics
  are put back where the step found them (`torch.where`, exact), as the sequential step, which never runs the branch,
  leaves them (torch's SGD skips a parameter whose .grad is None); so are AdamW's moments, and its step counts are
  each parameter's and client's (`VectorizedTrainer._adam_steps`), as torch counts them;
- GradAug (Yang et al. 2020) runs the full pass of every stacked client, then each sub-network pass over the
  clients that drew the same input size, every client at its own width (`ResNet.forward_widths_stacked`: layers
  sliced to the most channels a client's width keeps, each client's past its own held at 0, so that a kept
  channel holds its sliced value and a cut one passes no gradient back; batch norms from each client's real rows,
  updating nothing), its KL term over the real rows, each pass back-propagated in turn; its widths and scales are
  drawn as sequentially (`Strategy.local_draws`), and such a step is never replayed from a graph;
- FedAlign (Mendieta et al. 2022) runs the model its own way on the step's batches (`loss.batch`, a `StackedBatch`):
  the full pass with the last stage's input and output, the last stage slimmed on that input (its batch norms over
  each client's real rows from batch statistics, updating nothing), each client's Lipschitz estimates over its real
  rows, its own CE / L_lip factor where L_lip is positive and finite (on the device, no host read), and its own
  gradient clipping; two backward passes, as sequentially, the term's gradients kept only for the clients it applies
  to (a non-finite L_lip would otherwise pass 0 x NaN back);
- a parameter the loss does not use (a layer defined but bypassed) gets no gradient (None), as its `.grad`
  stays None sequentially, and the step skips it as torch's optimisers do (no weight decay, momentum or
  update), unless the strategy's term gives it one (FedProx's prox term at mu > 0);
- batch norm (Ioffe & Szegedy 2015) in a model's `forward_stacked` (`stacks_batch_norm`: the ResNets)
  normalises each client with the mean and biased variance of its own real samples, the padded rows
  masked out (`models.layers.stacked_batch_norm`; torch's own batch norm over the grouped channels
  where a step has no padding), and moves that client's running statistics by the momentum towards
  its mean and unbiased variance; each client starts from the global statistics and returns its own
  (`ClientResult.buffers`), which the server averages (`Strategy.aggregate_buffers`). A client done
  with its steps leaves the stack, so its statistics stay as its last step left them, as in sequential
  training. Where a strategy evaluates the loss twice (FedSAM at w + e) only the first evaluation
  updates them, as `FedSAM.local_backward` restores those of w;
- a model with batch norm but no such stacked forward (under vmap padded rows would enter its
  statistics), a cumulative-average batch norm (momentum None) or any other floating buffer falls back
  to sequential training (`buffer_blocker`); so do algorithms whose local training has no stacked form
  (`Strategy.vectorized` is False), or whose stacked form does not cover this model or
  these settings (`Strategy.stacked_blocker`: MOON with its side head, say).

One vectorised round equals one sequential round within float rounding (tests/unit/test_vectorized.py
checks FedAvg, FedProx, FedNova, Mixup and the server-optimiser variants, AdamW, lr schedules and unequal local
work in float64, and in float32 to 1e-5 where float32 training is not chaotic (batches of two samples or more, below);
tests/unit/test_vectorized_sam.py
FedSAM and FedASAM, in float64 at a large ascent radius; tests/unit/test_vectorized_depth.py Stochastic Depth;
tests/unit/test_vectorized_fedalign.py FedAlign; tests/unit/test_vectorized_gradaug.py GradAug;
tests/unit/test_vectorized_moon.py MOON;
tests/unit/test_vectorized_drift.py SCAFFOLD and FedDyn;
tests/unit/test_vectorized_bn.py batch norm: parameters
and running statistics, a small ResNet in float32, resnet20 in float64; tests/unit/test_vectorized_unused.py a
bypassed layer under each vectorised local training). In float64 the two paths agree
to float64 rounding (1e-10 checked, ~1e-14 seen, also for resnet20 at 32x32; a deep batch-norm model's client
whose batch holds one sample departs by up to 1e-8, as sequential training does from a start moved by 1e-15, since
one sample's statistics amplify rounding): nothing is computed in float32
there, the loss included (`at_least_float32`). In float32 a deep model's clients drift further apart: after a
few steps a rounding difference of 1e-7 moves some ReLU input across 0, and from that step on the gradients
differ at 1e-4 to 1e-2 instead of 1e-6, and the difference grows; sequential float32 training departs from
float64 training by as much (benchmarks/README.md, resnet20). A batch-norm client's batch of one sample makes float32
training chaotic on either path even in a small model, its statistics amplifying rounding: one round of FedProx (mu
0.5, 4 epochs of batch 4, a ResNet of widths 4, 8, 8 on 8x8 inputs, clients of 1, 3, 7, 13, 9 and 4 samples) trained
sequentially in float32 departed from float64 training by 1.7e-2 on two CPU threads and 2e-6 on one, vectorised by
3.4e-6 and 2.8e-6; with no batch of one sample (2, 3, 7, 14, 10 and 4) every gap was ~3e-7. So the float32 equality
holds for batches of two samples or more. Clients are processed in chunks of
`TrainConfig.client_chunk_size` to bound memory. The precision (`TrainConfig.precision`: TF32, bf16 autocast) is
applied around the whole run by `fedscape.fl.engine.run_federated`, for this trainer as for the sequential one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedscape.core.names import unknown_name_error
from fedscape.data.federated import FederatedData
from fedscape.data.specs import AUGMENTATIONS, CROP_PADDING, SEQUENTIAL_AUGMENTATIONS
from fedscape.fl.capture import StackedStepGraphs, StepGraphMaker, StepKey
from fedscape.fl.local import client_generator, layer_seed, local_plan, round_work
from fedscape.fl.schedule import update_weight
from fedscape.fl.sequential import undecayed
from fedscape.fl.settings import CLIENT_PARALLEL, TrainConfig, strategy_ref, uncaptured_steps
from fedscape.fl.strategies.base import ClientResult, StackedBatch, Strategy
from fedscape.models.layers import StackedNorm, has_forward_stacked
from fedscape.models.loss import at_least_float32, masked_mean_loss, stacked_mean_loss

log = logging.getLogger("fedscape.train")

def vectorization_blocker(model: nn.Module, strategy: Strategy, optimizer: str = "sgd") -> str | None:
    """Why this model/algorithm pair (with the local `optimizer`) cannot be trained vectorised, or None when it can."""
    if not getattr(strategy, "vectorized", False):
        return f"algorithm {strategy.name!r} has no vectorised local training"
    reason = strategy.stacked_blocker(model, has_forward_stacked(model), optimizer)
    return reason if reason is not None else buffer_blocker(model)


def buffer_blocker(model: nn.Module, stacked_forward: bool = True) -> str | None:
    """Why the model's normalisation or buffers cannot be trained per client in a stacked forward, or None: it has
    no batch norm and no floating buffer, or its `forward_stacked` computes every batch norm per client
    (`stacks_batch_norm`: statistics of the client's real samples, its own running statistics) and the trainer
    uses it (`stacked_forward`; under vmap batch norm would take the padded rows into its statistics)."""
    stacks = stacked_forward and has_forward_stacked(model) and getattr(model, "stacks_batch_norm", False)
    for name, module in model.named_modules():
        # A chunk of clients draws its random numbers from one generator, seeded by its first client, where each
        # client trained alone draws from its own: their dropout masks would differ from sequential training's.
        if isinstance(module, nn.modules.dropout._DropoutNd | nn.AlphaDropout | nn.FeatureAlphaDropout):
            return (f"the model has dropout ({name}), whose masks a stacked step cannot draw from each client's own "
                    "random stream")
    statistics = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if not stacks:
            return (f"the model has batch norm ({name}) but no stacked forward that keeps each client's statistics "
                    "apart, and padded client batches would enter them (use another norm: group where the model has "
                    "it, or none; or client_parallel: sequential)")
        if module.track_running_stats and module.momentum is None:
            return (f"the model's batch norm {name} averages its statistics cumulatively (momentum None), which "
                    "needs a per-client batch count")
        statistics.update({f"{name}.running_mean", f"{name}.running_var"})
    for name, b in model.named_buffers():
        if b.is_floating_point() and name not in statistics:
            return f"the model has floating buffers ({name}) that would need per-client copies"
    return None


# Where `auto` vectorises every exact model/algorithm pair; elsewhere (the CPU) only the models measured faster
# vectorised there (the module docstring; benchmarks/README.md).
VMAP_DEVICE_TYPES = ("cuda",)


def speed_blocker(model: nn.Module, device_type: str) -> str | None:
    """Why `auto` trains this model's clients one by one on `device_type` although vectorising is exact, or None."""
    if device_type in VMAP_DEVICE_TYPES:
        return None
    if has_forward_stacked(model):
        if getattr(model, "stacked_faster_on_cpu", True):
            return None
        return (f"{type(model).__name__}'s forward_stacked is not known to train faster than one client after another "
                f"on a {device_type} device (on a CPU resnet20 0.7-0.9x of sequential speed)")
    if getattr(model, "vmap_faster_on_cpu", False):
        return None
    return (f"{type(model).__name__} has no forward_stacked and is not known to train faster under vmap on a "
            f"{device_type} device (on a CPU char_gpt 0.9x, char_lstm 0.4x of sequential speed)")


def resolve_client_parallel(model: nn.Module, strategy: Strategy, cfg: TrainConfig,
                            device_type: str | None = None) -> str:
    """'vectorized' or 'sequential' for `cfg.client_parallel`.

    'auto' vectorises whenever that is exact and, on a device other than CUDA, the model has its own
    `forward_stacked` not marked slower there (`stacked_faster_on_cpu`) or declares `vmap_faster_on_cpu`
    (`speed_blocker`), and the algorithm was not measured slower stacked on that device and model
    (`Strategy.stacked_speed_blocker`); `device_type`: where the clients
    train (None: the model's parameters' device). An explicit 'vectorized' that cannot be honoured is an
    error, raised before any training.
    """
    mode = cfg.client_parallel
    if mode not in CLIENT_PARALLEL:
        raise unknown_name_error("client_parallel mode", mode, CLIENT_PARALLEL)
    if mode == "sequential":
        return "sequential"
    reason = vectorization_blocker(model, strategy, cfg.optimizer)
    if reason is None and cfg.augment in SEQUENTIAL_AUGMENTATIONS:
        reason = (f"the dataset's augment {cfg.augment} crops every image to its own size before resizing, which "
                  "the stacked clients' batches do not take (sequential path only)")
    if reason is None and cfg.keep_optimizer_state:
        reason = "training.keep_optimizer_state keeps each client's momentum between rounds (sequential path only)"
    if reason is None and cfg.optimizer == "adamw":
        # Not a blocker: the stacked AdamW step is torch's, but Adam divides by sqrt(v) + eps, so the float
        # rounding in which stacked and sequential gradients differ (~1e-8) is magnified for weights whose
        # gradient is near 0: with eps 1e-8 client weights differ by up to ~1e-4 after a few epochs.
        note = ("AdamW magnifies the float rounding between vectorised and sequential gradients by 1 / (sqrt(v) + "
                "adamw_eps): client weights may differ by more than 1e-5 from sequential training")
        if mode == "auto":
            log.info("client training: sequential (%s; client_parallel: vectorized trains them at once anyway)", note)
            return "sequential"
        log.warning("client training: vectorized as asked, but %s", note)
    if reason is None:
        if device_type is None:
            device_type = next(model.parameters()).device.type
        slow = speed_blocker(model, device_type) or strategy.stacked_speed_blocker(model, device_type)
        if slow is not None and mode == "auto":
            log.info("client training: sequential (%s; client_parallel: vectorized trains them at once anyway)", slow)
            return "sequential"
        if slow is not None:
            log.info("client training: vectorized as asked, though %s", slow)
        return "vectorized"
    if mode == "vectorized":
        raise ValueError(f"training.client_parallel is 'vectorized' but {reason}; use 'auto' to fall back "
                         "to sequential client training where vectorising is not exact")
    log.info("client training: sequential (%s)", reason)
    return "sequential"


def unaliased(grads: tuple[torch.Tensor | None, ...]) -> list[torch.Tensor | None]:
    """The gradients with every tensor sharing memory with an earlier one replaced by a copy (None, a parameter
    without gradient, kept).

    Autograd may hand back one tensor for several parameters (the gradient of ``bias_ih + bias_hh`` is
    the same tensor for both); the in-place SGD updates below (weight decay, FedProx's term) would then
    add both parameters' terms to it.
    """
    seen: set[int] = set()
    out = []
    for g in grads:
        if g is None:
            out.append(g)
            continue
        ptr = g.untyped_storage().data_ptr()
        out.append(g.clone() if ptr in seen else g)
        seen.add(ptr)
    return out


def crop_flip_draws(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random numbers `data.augment_batch(x, 'crop_flip', generator)` draws for a batch of n.

    Same calls in the same order (row offsets, column offsets, flips), so that drawing them ahead of
    time leaves the generator exactly where the sequential path leaves it.
    """
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    return dy[:, 0], dx[:, 0], flip[:, 0]


def crop_flip_stacked(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """`data.augment_batch`'s pad-crop-flip on stacked batches x [K, B, C, H, W] with draws [K, B]."""
    k, b, c, h, w = x.shape
    device = x.device
    rows = dy.to(device).unsqueeze(-1) + torch.arange(h, device=device)  # [K, B, H] rows of the padded image
    cols = dx.to(device).unsqueeze(-1) + torch.arange(w, device=device)
    cols = torch.where(flip.to(device).unsqueeze(-1), cols.flip(-1), cols)
    padded = F.pad(x, (CROP_PADDING,) * 4)
    return padded[
        torch.arange(k, device=device).view(k, 1, 1, 1, 1),
        torch.arange(b, device=device).view(1, b, 1, 1, 1),
        torch.arange(c, device=device).view(1, 1, c, 1, 1),
        rows.view(k, b, 1, h, 1),
        cols.view(k, b, 1, 1, w),
    ]


@dataclass
class _ClientPlan:
    """A client's local training of one round, drawn ahead: its batches as indices into x_train."""

    client_id: int
    num_samples: int
    batches: list[torch.Tensor]  # CPU indices into data.x_train, one tensor per step
    draws: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None  # crop_flip draws per step
    lrs: list[float]  # the learning rate of each step
    mixes: list[tuple[float, torch.Tensor]] | None = None  # the strategy's input mixing per step (Mixup's lam, perm)
    scales: list[list[float]] | None = None  # its residual scales per step (Stochastic Depth's, one per block)
    extra: list | None = None  # the strategy's own draws per step (`Strategy.local_draws`: GradAug's sub-networks)


@dataclass(frozen=True)
class _StepLoss:
    """A step's loss function of stacked parameters, and the batches it evaluates (`Strategy.local_gradients_vectorized`
    may run the model its own way on them)."""

    loss: Callable[[list[torch.Tensor]], torch.Tensor]
    batch: StackedBatch

    def __call__(self, params: list[torch.Tensor]) -> torch.Tensor:
        return self.loss(params)


@dataclass
class _ChunkState:
    """What a chunk's stacked steps change, [K, *shape] per tensor, kept from round to round at the same addresses
    (those a captured step reads and writes; `fedscape.fl.capture.StackedStepGraphs`) and reset for every chunk."""

    stacked: list[torch.Tensor]  # the clients' parameters
    buffers: list[torch.Tensor]  # their running statistics
    momentum: list[torch.Tensor] | None  # SGD's momentum buffers
    moments: tuple[list[torch.Tensor], list[torch.Tensor]] | None  # AdamW's
    loss_sum: torch.Tensor  # [K] the clients' summed step losses
    global_flat: torch.Tensor  # the round's global parameters (FedProx's term reads them)
    global_views: list[torch.Tensor]
    # which residual branches each client's step runs, [steps, K, blocks] on the host; None without dropped branches
    branch_live: torch.Tensor | None = None

    def optimizer_state(self) -> list[torch.Tensor]:
        """SGD's momentum or AdamW's moments (zero at a chunk's start)."""
        return [*(self.momentum or []), *(t for group in (self.moments or ()) for t in group)]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a step writes."""
        return [*self.stacked, *self.buffers, *self.optimizer_state(), self.loss_sum]


class VectorizedTrainer:
    """Trains the sampled clients of a round together; `train_round` replaces M `local_train` calls.

    On CUDA a step shape met often enough (`fedscape.fl.capture.STACKED_CAPTURE_MIN_STEPS` steps in the chunks so
    far) is replayed from a CUDA graph where a check at capture finds the replay equal to the eager step
    (`training.capture`: auto, or cuda_graph to insist; eager never); `make_graph` replaces torch's graph maker (the
    CPU tests' stand-in).
    """

    def __init__(self, model: nn.Module, data: FederatedData, strategy: Strategy, cfg: TrainConfig,
                 stacked_forward: bool = True, make_graph: StepGraphMaker | None = None):
        if cfg.augment not in AUGMENTATIONS:
            raise unknown_name_error("augmentation", cfg.augment, AUGMENTATIONS)
        if cfg.augment in SEQUENTIAL_AUGMENTATIONS:
            raise ValueError(f"augmentation {cfg.augment} trains the clients one after another: set "
                             "training.client_parallel to sequential or auto")
        self.model, self.data, self.strategy, self.cfg = model, data, strategy, cfg
        self.device = next(model.parameters()).device
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in model.named_parameters()]
        self.numels = [math.prod(s) for s in self.shapes]
        # Each parameter's weight decay: none where the model leaves it undecayed, as local_train's optimiser
        # groups it (fedscape.fl.sequential.decay_groups)
        skip = undecayed(model)
        self.decays = [0.0 if name in skip else cfg.weight_decay for name in self.names]
        self.indices_cpu = [ix.cpu() for ix in data.client_indices]
        # The model's own grouped forward where it has one (cnn_small, convnet: grouped convolutions, about 1.4x
        # faster on a CPU), else functional_call under vmap.
        self.stacked_forward = stacked_forward and has_forward_stacked(model)
        self.batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        reason = buffer_blocker(model, self.stacked_forward)
        if reason is None:
            reason = strategy.stacked_blocker(model, self.stacked_forward, cfg.optimizer)
        if reason is not None:
            raise ValueError(f"cannot train this model vectorised: {reason}")
        self.buffer_names = [name for name, b in model.named_buffers() if b.is_floating_point()]
        self.buffer_shapes = [tuple(b.shape) for _, b in model.named_buffers() if b.is_floating_point()]
        self.buffer_numels = [math.prod(s) for s in self.buffer_shapes]
        # Each parameter's and statistic's residual block (None: outside every branch), where the strategy drops
        # branches: a client's dropped branch keeps them as its step found them.
        branch_of = getattr(model, "residual_branch_of", lambda name: None)
        self.param_branch = [branch_of(n) for n in self.names] if strategy.residual_scaled else []
        self.buffer_branch = [branch_of(n) for n in self.buffer_names] if strategy.residual_scaled else []
        self.num_blocks = len(model.blocks) if strategy.residual_scaled else 0
        self._states: dict[int, _ChunkState] = {}
        self.graphs = self._graphs(make_graph)
        self._rows_generation = strategy.stacked_generation  # that of the strategy's rows the graphs read

    def _graphs(self, make_graph: StepGraphMaker | None) -> StackedStepGraphs | None:
        """The captured steps where `cfg.capture` asks for them and they are possible: on CUDA (or with a stand-in
        graph maker), and not declared uncaptured (`fedscape.fl.settings.UNCAPTURED_STEPS`, which planning reads too:
        AdamW's step count changes every step, GradAug's passes follow host draws)."""
        cfg = self.cfg
        if cfg.capture == "eager" or (self.device.type != "cuda" and make_graph is None):
            return None
        reason = uncaptured_steps(strategy_ref(type(self.strategy)), self.strategy.name, "vectorized", cfg.optimizer)
        if reason is not None:
            if cfg.capture == "cuda_graph":
                raise ValueError(f"training.capture is 'cuda_graph' but {reason}; use 'auto' or 'eager'")
            return None
        return StackedStepGraphs(strict=cfg.capture == "cuda_graph", make_graph=make_graph)

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
              norm: StackedNorm | None, mix: tuple[torch.Tensor, torch.Tensor] | None,
              scales: torch.Tensor | None) -> torch.Tensor:
        """Every client's loss [K]: through the model's stacked forward where it has one, else one client's
        objective vmapped over the client axis. A method rather than a function stored on the trainer: a stored
        closure over its bound methods would be a reference cycle, and a trainer dropped without `close` would keep
        its captured graphs' memory until Python's next full collection."""
        if self.stacked_forward:
            return self._stacked_loss(params, x, y, mask, norm, mix, scales)
        if mix is None:
            return vmap(self._client_loss, in_dims=(0, 0, 0, 0), randomness="different")(params, x, y, mask)
        return vmap(self._client_mixed_loss, in_dims=(0, 0, 0, 0, 0, 0), randomness="different")(
            params, x, y, mask, *mix)

    # -- one client's objective, vmapped over the client axis ------------------------------------------
    def _client_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the real (unmasked) samples of one client's batch (over their counted positions
        for a sequence task, `fedscape.models.loss`)."""
        logits = functional_call(self.model, params, (x,))
        return masked_mean_loss(at_least_float32(logits), y, mask)

    def _client_mixed_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                           mask: torch.Tensor, weights: torch.Tensor, y_mixed: torch.Tensor) -> torch.Tensor:
        """`_client_loss` of an input-mixing objective: lam CE(y) + (1 - lam) CE(y_mixed) on the mixed batch x,
        `weights` = (lam, 1 - lam)."""
        logits = at_least_float32(functional_call(self.model, params, (x,)))
        return weights[0] * masked_mean_loss(logits, y, mask) + weights[1] * masked_mean_loss(logits, y_mixed, mask)

    def _stacked_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      mask: torch.Tensor, norm: StackedNorm | None,
                      mix: tuple[torch.Tensor, torch.Tensor] | None, scales: torch.Tensor | None) -> torch.Tensor:
        """`_client_loss` (or `_client_mixed_loss` where `mix` holds the clients' weights [K, 2] and mixed targets)
        of every client at once through the model's `forward_stacked`: [K] losses; `norm`: its batch norms' padding
        mask and running statistics (None for a model without batch norm); `scales`: each client's residual scales
        [K, blocks] (None: none)."""
        extra = {} if scales is None else {"scales": scales}
        if norm is None:
            logits = self.model.forward_stacked(params, x, **extra)
        else:
            logits = self.model.forward_stacked(params, x, norm=norm, **extra)
        if mix is None:
            return stacked_mean_loss(logits, y, mask)
        weights, y_mixed = mix
        return weights[:, 0] * stacked_mean_loss(logits, y, mask) + weights[:, 1] * stacked_mean_loss(logits, y_mixed,
                                                                                                      mask)

    def _step_loss(self, xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor, padded: bool,
                   running: dict[str, torch.Tensor] | None, mix: tuple[torch.Tensor, torch.Tensor] | None,
                   scales: torch.Tensor | None, global_views: list[torch.Tensor], draws: list | None = None,
                   single: bool = False) -> _StepLoss:
        """The K clients' losses [K] on this step's batches as a function of stacked parameters (a list in
        `named_parameters()` order), for `Strategy.local_gradients_vectorized`; `mix`: an input-mixing objective's
        weights [K, 2] and mixed targets, `scales`: the residual scales (`_stacked_loss`); None for the plain model and
        cross-entropy. Its `batch` is the step's `StackedBatch` (with `draws`: the active clients' `local_draws`).

        With batch norm, `padded` says whether any row of the step is padding (else torch's batch norm over the
        grouped channels is each client's) and `single` whether a client's batch holds one sample (`StackedNorm`), and
        the first evaluation alone updates the clients' `running` statistics: a strategy evaluating the loss again
        (FedSAM at w + e) keeps those of w, as its sequential `local_backward` restores them.
        """
        first = [True]

        def norm_state(update: bool) -> StackedNorm | None:
            if not self.batch_norm:
                return None
            state = StackedNorm(mb if padded else None, running if update and first[0] else None)
            state.single = single
            first[0] = first[0] and not update
            return state

        def loss(params: list[torch.Tensor]) -> torch.Tensor:
            return self._loss(dict(zip(self.names, params, strict=True)), xb, yb, mb, norm_state(True), mix, scales)

        return _StepLoss(loss, StackedBatch(self.model, self.names, xb, yb, mb, norm_state, global_views,
                                            draws or []))

    def plan(self, client_id: int, round_: int, work: int | None = None) -> _ClientPlan:
        """The client's batches (and augmentation draws) from its generator, as `local_train` draws them;
        `work`: its local epochs or steps this round (None: from `cfg.client_work`)."""
        cfg = self.cfg
        if work is None:
            work = cfg.client_work(round_, self.data.num_clients)[client_id]
        generator = client_generator(cfg.seed, round_, client_id)
        idx = self.indices_cpu[client_id]
        local = local_plan(cfg, len(idx), work, round_, generator)
        # Each step's draws in the sequential order: its augmentation's, then the strategy's own (Mixup's mixing,
        # Stochastic Depth's scales, GradAug's sub-networks: a strategy draws one of these).
        draws, mixes, scales, extra, scratch = [], [], [], [], {}
        for b in local.batches:
            if cfg.augment == "crop_flip":
                draws.append(crop_flip_draws(len(b), generator))
            mixes.append(self.strategy.input_mixing(len(b), generator, scratch))
            if self.num_blocks:
                scales.append(self.strategy.residual_scales(self.num_blocks, generator, scratch))
            extra.append(self.strategy.local_draws(len(b), generator, scratch))
        return _ClientPlan(client_id, len(idx), [idx[b] for b in local.batches],
                           draws if cfg.augment == "crop_flip" else None, local.lrs,
                           mixes if any(m is not None for m in mixes) else None,
                           scales if self.num_blocks else None,
                           extra if any(e is not None for e in extra) else None)

    def state_dict(self) -> dict:
        """Nothing is kept between rounds (every round starts fresh optimisers)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Drop the captured steps' graphs and the chunk states they replay into; the stacked path leaves the model as
        it was."""
        self.strategy.release_stacked()
        if self.graphs is not None:
            self.graphs.close()
        self._states.clear()

    @property
    def captured(self) -> bool:
        """Whether some step was replayed from a CUDA graph."""
        return self.graphs is not None and self.graphs.replays > 0

    def train_round(self, global_params: torch.Tensor, global_buffers: torch.Tensor, sampled: list[int],
                    round_: int) -> list[ClientResult]:
        """Local training of the `sampled` clients from `global_params` and `global_buffers` (the running statistics
        of batch norms, each client then keeping its own: `buffer_blocker`); results in `sampled` order."""
        work = round_work(self.cfg, round_, sampled, self.data.num_clients)
        plans = [self.plan(c, round_, w) for c, w in zip(sampled, work, strict=True)]
        # Longest first: the active clients of every step are then a prefix of the stack.
        order = sorted(range(len(plans)), key=lambda i: -len(plans[i].batches))
        chunk = self.cfg.client_chunk_size if self.cfg.client_chunk_size > 0 else len(order)
        results: list[ClientResult | None] = [None] * len(plans)
        if self.graphs is not None:
            self.graphs.begin_round()
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            torch.manual_seed(layer_seed(self.cfg.seed, round_, plans[part[0]].client_id))
            chunk_results = self._train_chunk(global_params, global_buffers, [plans[i] for i in part])
            for i, result in zip(part, chunk_results, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _train_chunk(self, global_params: torch.Tensor, global_buffers: torch.Tensor,
                     plans: list[_ClientPlan]) -> list[ClientResult]:
        cfg, device = self.cfg, self.device
        k0, batch = len(plans), cfg.batch_size
        steps = [len(p.batches) for p in plans]  # non-increasing
        num_steps = steps[0]
        active = [sum(1 for s in steps if s > t) for t in range(num_steps)]
        # Pad each step only to its longest real batch (not to the batch size): when every active client's
        # batch is partial (shards smaller than the batch size) the padded slots would be wasted work.
        width = [max(len(p.batches[t]) for p in plans[: active[t]]) for t in range(num_steps)]
        padded = [any(len(p.batches[t]) < width[t] for p in plans[: active[t]]) for t in range(num_steps)]

        # Padded index and mask tensors [steps, clients, batch], built on the CPU, moved once. A client's padded rows
        # are copies of its own batch's first sample, never another client's: the loss and the batch norms drop them
        # as 0 x value, which is NaN for a non-finite value, so a padded row must hold only data the client trains on
        # anyway (a finite value enters those sums as exactly 0: which sample fills the row changes no result).
        index = torch.zeros(num_steps, k0, batch, dtype=torch.long)
        mask = torch.zeros(num_steps, k0, batch)
        aug = None
        if cfg.augment == "crop_flip":
            aug = torch.zeros(3, num_steps, k0, batch, dtype=torch.long)
        for j, p in enumerate(plans):
            for t, b in enumerate(p.batches):
                index[t, j, : len(b)] = b
                index[t, j, len(b) :] = b[0]
                mask[t, j, : len(b)] = 1.0
                if aug is not None:
                    dy, dx, flip = p.draws[t]
                    aug[0, t, j, : len(b)], aug[1, t, j, : len(b)], aug[2, t, j, : len(b)] = dy, dx, flip.long()
        index, mask = index.to(device), mask.to(device)
        if aug is not None:
            aug = aug.to(device)
        mix_weights, mix_perm = self._mixing(plans, num_steps, batch, global_params.dtype)
        scales = live = None
        if self.num_blocks:  # [steps, clients, blocks]; an inactive client's ones are never read
            scales = torch.ones(num_steps, k0, self.num_blocks, dtype=torch.float64)
            for j, p in enumerate(plans):
                if p.batches:
                    scales[: len(p.batches), j] = torch.tensor(p.scales, dtype=torch.float64)
            live = scales != 0  # on the host: which branches each client's step runs, for AdamW's step counts
            scales = scales.to(device=device, dtype=global_params.dtype)

        st = self._chunk_state(k0, global_params, global_buffers)
        st.branch_live = live
        self.strategy.begin_stacked([p.client_id for p in plans], global_params)
        # Each step's lr: one number when the active clients share it (always under a constant lr), else one
        # per client (a schedule over local steps with unequal step counts), shaped to scale stacked tensors.
        step_lr: list[float | torch.Tensor] = []
        for t in range(num_steps):
            lrs = [p.lrs[t] for p in plans[: active[t]]]
            step_lr.append(lrs[0] if all(v == lrs[0] for v in lrs) else
                           torch.tensor(lrs, device=device, dtype=global_params.dtype))  # a float64 model's lr too
        # Whether a step holds a client's batch of one sample, for a model with batch norm: where a layer's input is
        # 1x1 that is one value per channel, which torch's batch norm refuses in training, and so does
        # `stacked_batch_norm` (`StackedNorm.single`: from these host batch sizes, no sync). Such a step is a shape of
        # its own: its graph is captured only where its step passed that check, so no replay skips it.
        single = [self.batch_norm and any(len(p.batches[t]) == 1 for p in plans[: active[t]])
                  for t in range(num_steps)]
        # A step's shape: what its graph depends on (None: a per-client lr, which steps eagerly).
        keys = [StepKey(k0, active[t], width[t], padded[t], step_lr[t], single[t]) if isinstance(step_lr[t], float)
                else None for t in range(num_steps)]
        if self.graphs is not None:
            if self._rows_generation != self.strategy.stacked_generation:
                # The strategy's stacked rows were freed since the graphs were captured (its `setup` for a new run,
                # this trainer kept): their replays would read the old rows' addresses.
                self.graphs.drop(lambda key: True)
                self._rows_generation = self.strategy.stacked_generation
            self.graphs.plan(keys)

        x_train, y_train = self.data.x_train, self.data.y_train
        for t in range(num_steps):
            k, w = active[t], width[t]
            idx = index[t, :k, :w]
            inputs = (x_train[idx], y_train[idx], mask[t, :k, :w], None if aug is None else aug[:, t, :k, :w],
                      None if mix_weights is None else mix_weights[t, :k],
                      None if mix_perm is None else mix_perm[t, :k, :w], None if scales is None else scales[t, :k])
            if self.graphs is not None and keys[t] is not None and self.graphs.run(
                    keys[t], inputs, lambda static, t=t: lambda: self._step(st, t, padded[t], step_lr[t], *static,
                                                                 single=single[t]),
                    st.tensors()):
                continue
            # The strategy's own draws (host values; a strategy drawing them never replays a graph: `_graphs`). The
            # step's active clients have a step t, so each holds its draws where the strategy draws any.
            draws = [p.extra[t] for p in plans[:k]] if plans[0].extra is not None else None
            self._step(st, t, padded[t], step_lr[t], *inputs, draws=draws, single=single[t])

        flat = torch.cat([s.reshape(k0, -1) for s in st.stacked], dim=1)
        losses_mean = (st.loss_sum.cpu() / torch.tensor(steps, dtype=torch.float32).clamp_min(1)).tolist()
        if st.buffers:
            buffers = torch.cat([b.reshape(k0, -1) for b in st.buffers], dim=1)
            client_buffers = [buffers[j].clone() for j in range(k0)]
        else:
            client_buffers = [torch.zeros(0, device=flat.device)] * k0  # no floating buffers, as flatten_buffers gives
        sgd_momentum = 0.0 if cfg.optimizer == "adamw" else cfg.momentum
        results = [ClientResult(p.client_id, p.num_samples, flat[j].clone(), client_buffers[j], losses_mean[j],
                                len(p.batches), update_weight(p.lrs, sgd_momentum, cfg.nesterov))
                   for j, p in enumerate(plans)]
        self.strategy.end_stacked(results)
        if self.graphs is None:  # no replay reads the chunk's stacked rows at their addresses: free them
            self.strategy.release_stacked()
        return results

    def _mixing(self, plans: list[_ClientPlan], num_steps: int, batch: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """The chunk's input mixing (`Strategy.input_mixing`) on the device: weights (lam, 1 - lam) [steps, clients,
        2] in the model's dtype, each from the float64 lam as the sequential loss's Python floats are, and
        permutations [steps, clients, batch] within each client's real rows (a padded row mixes with itself); (None,
        None) for a strategy that does not mix."""
        if all(p.mixes is None for p in plans):
            return None, None
        weights = torch.zeros(num_steps, len(plans), 2, dtype=torch.float64)
        perm = torch.arange(batch).repeat(num_steps, len(plans), 1)
        for j, p in enumerate(plans):
            for t, (lam, order) in enumerate(p.mixes or ()):  # None: a client without steps
                weights[t, j, 0], weights[t, j, 1] = lam, 1 - lam
                perm[t, j, : len(order)] = order
        return weights.to(device=self.device, dtype=dtype), perm.to(self.device)

    def _chunk_state(self, k0: int, global_params: torch.Tensor, global_buffers: torch.Tensor) -> _ChunkState:
        """The state of a chunk of k0 clients, all starting at the global model and statistics, zero momentum and
        loss sums; where steps are captured, kept per chunk size so that its tensors keep their addresses from round to
        round."""
        st = self._states.get(k0)
        if st is not None and (st.global_flat.dtype, st.global_flat.device) != (global_params.dtype,
                                                                                global_params.device):
            st = None  # a new state: the graphs of the old one would replay into it
            if self.graphs is not None:
                self.graphs.drop(lambda key: key[0] == k0)
        buffer_views = [v.view(s) for v, s in zip(global_buffers.split(self.buffer_numels), self.buffer_shapes,
                                                  strict=True)] if self.buffer_names else []
        if st is None:
            stacked = [global_params.new_empty((k0, *s)) for s in self.shapes]
            adamw = self.cfg.optimizer == "adamw"
            global_flat = torch.empty_like(global_params)
            st = _ChunkState(
                stacked=stacked,
                buffers=[g.new_empty((k0, *g.shape)) for g in buffer_views],
                momentum=[torch.empty_like(t) for t in stacked] if self.cfg.momentum and not adamw else None,
                moments=([torch.empty_like(t) for t in stacked], [torch.empty_like(t) for t in stacked])
                if adamw else None,
                loss_sum=torch.empty(k0, device=self.device, dtype=global_params.dtype),  # float64 runs: float64
                global_flat=global_flat,
                global_views=[v.view(s) for v, s in zip(global_flat.split(self.numels), self.shapes, strict=True)])
            if self.graphs is not None:  # kept only where graphs replay into it (else freed with the chunk, as before)
                self._states[k0] = st
        with torch.no_grad():
            st.global_flat.copy_(global_params)
            for s, g in zip(st.stacked, st.global_views, strict=True):
                s.copy_(g.unsqueeze(0).expand_as(s))
            for b, g in zip(st.buffers, buffer_views, strict=True):  # an inactive client's statistics stay put
                b.copy_(g.unsqueeze(0).expand_as(b))
            for t in [*st.optimizer_state(), st.loss_sum]:
                t.zero_()
        return st

    def _step(self, st: _ChunkState, t: int, padded: bool, lr: float | torch.Tensor, xb: torch.Tensor,
              yb: torch.Tensor, mb: torch.Tensor, aug: torch.Tensor | None, mix_weights: torch.Tensor | None,
              mix_perm: torch.Tensor | None, scales: torch.Tensor | None, draws: list | None = None,
              single: bool = False) -> None:
        """Step t of the active clients (the first xb.shape[0] of the chunk) on their batches: the strategy's
        gradients, then SGD's or AdamW's update, in place on `st`; `scales` [K, blocks]: the residual scales, a
        client's dropped branch (scale 0) keeping its parameters, momentum and statistics; `draws`: the active
        clients' `Strategy.local_draws` of the step; `single`: whether a client's batch holds one sample."""
        k = xb.shape[0]
        params = [s[:k].detach().requires_grad_(True) for s in st.stacked]
        if aug is not None:
            xb = crop_flip_stacked(xb, aug[0], aug[1], aug[2].bool())
        mix = None
        if mix_perm is not None:  # Mixup: lam x + (1 - lam) x[perm] per client, after the augmentation
            rows = torch.arange(k, device=xb.device).unsqueeze(1)
            shape = (k, *([1] * (xb.dim() - 1)))
            xb = mix_weights[:, 0].view(shape) * xb + mix_weights[:, 1].view(shape) * xb[rows, mix_perm]
            mix = (mix_weights, yb[rows, mix_perm])
        running = dict(zip(self.buffer_names, (b[:k] for b in st.buffers), strict=True))
        # Where branches drop: what a client's dropped branch must keep (its sequential step never runs the branch,
        # so torch's SGD skips its parameters, whose .grad stays None). Kept for every branch, whatever the draws,
        # so that a captured step needs no host decision.
        kept_buffers = [(b, live, b.clone())
                        for b, live in self._branch_views(st.buffers, self.buffer_branch, scales, k)]
        gradients, adjust = self.strategy.local_gradients_vectorized, self.strategy.adjust_gradients_vectorized
        losses, grads = gradients(params, self._step_loss(xb, yb, mb, padded, running, mix, scales,
                                                          st.global_views, draws, single))  # FedSAM: w + e
        grads = unaliased(tuple(grads))
        with torch.no_grad():
            for b, live, before in kept_buffers:
                b.copy_(torch.where(live, b, before))
            kept = [(p, live, p.clone()) for p, live in self._branch_views(st.stacked, self.param_branch, scales, k)]
            for state in [st.momentum, *(st.moments or ())]:  # SGD's momentum, AdamW's moments: not stepped either
                if state is not None:
                    kept += [(m, live, m.clone())
                             for m, live in self._branch_views(state, self.param_branch, scales, k)]
            self._sgd_update(st, k, params, grads, losses, lr, t, adjust)
            for v, live, before in kept:
                v.copy_(torch.where(live, v, before))

    def _branch_views(self, tensors: list[torch.Tensor], branch: list[int | None], scales: torch.Tensor | None,
                      k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(the active clients' view of each tensor in a residual branch, whether each client's branch runs this step,
        shaped to broadcast); none without scales."""
        if scales is None:
            return []
        live = scales != 0
        return [(tensor[:k], live[:, block].view(k, *([1] * (tensor.dim() - 1))))
                for tensor, block in zip(tensors, branch, strict=True) if block is not None]

    def _sgd_update(self, st: _ChunkState, k: int, params: list[torch.Tensor], grads: list[torch.Tensor | None],
                    losses: torch.Tensor, lr: float | torch.Tensor, t: int,
                    adjust: Callable[[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]], None]
                    ) -> None:
        """The strategy's gradient hook, then SGD's or AdamW's update of the active clients, and their losses."""
        cfg = self.cfg
        adjust(params, st.global_views, grads)  # e.g. FedProx's mu (w - w_global)
        # A parameter without gradient (None: the loss does not use it) is skipped, as torch's optimisers
        # skip one whose .grad is None: no weight decay, momentum or step.
        used = [i for i, g in enumerate(grads) if g is not None]
        grads = [grads[i] for i in used]
        current = [st.stacked[i][:k] for i in used]
        if st.moments is not None:
            self._adamw_step(current, grads, [st.moments[0][i][:k] for i in used],
                             [st.moments[1][i][:k] for i in used], lr, [self._adam_steps(st, i, t, k) for i in used],
                             [self.decays[i] for i in used])
            st.loss_sum[:k] += losses.detach()
            return
        # torch.optim.SGD (dampening 0, Nesterov's where cfg.nesterov) on the active prefix of the stack.
        decayed = [j for j, i in enumerate(used) if self.decays[i]]
        if decayed:
            torch._foreach_add_([grads[j] for j in decayed], [current[j] for j in decayed], alpha=cfg.weight_decay)
        if st.momentum is not None:
            bufs = [st.momentum[i][:k] for i in used]
            torch._foreach_mul_(bufs, cfg.momentum)  # zero at the first step: buf = grad
            torch._foreach_add_(bufs, grads)
            # Nesterov (torch's form): step along g + m b instead of b
            grads = torch._foreach_add(grads, bufs, alpha=cfg.momentum) if cfg.nesterov else bufs
        if isinstance(lr, float):
            torch._foreach_add_(current, grads, alpha=-lr)
        else:
            for c, g in zip(current, grads, strict=True):
                c.sub_(g * lr.view(-1, *([1] * (g.dim() - 1))))
        st.loss_sum[:k] += losses.detach()

    def _adam_steps(self, st: _ChunkState, i: int, t: int, k: int) -> torch.Tensor:
        """AdamW's step count of parameter tensor `i` for each of the first `k` clients after step `t`: torch counts
        each parameter's own steps, so a parameter in a residual branch counts the steps that ran its branch (a client's
        dropped branch, Stochastic Depth's, skips them), any other t + 1."""
        branch = self.param_branch[i] if self.param_branch else None
        if branch is None or st.branch_live is None:
            return torch.full((k,), float(t + 1), dtype=torch.float64)
        return st.branch_live[: t + 1, :k, branch].sum(dim=0, dtype=torch.float64)

    def _adamw_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                    exp_avg_sq: list[torch.Tensor], lr: float | torch.Tensor, steps: list[torch.Tensor],
                    decays: list[float]) -> None:
        """torch.optim.AdamW's step (Loshchilov & Hutter 2019; bias-corrected moments, decoupled weight decay) on
        stacked client tensors, in place; `lr` one number or one per client; `steps` each tensor's step count per
        client (from 1; a client whose count this step did not raise is put back by the caller), its bias
        corrections from Python floats as torch's; `decays` each tensor's weight decay (its group's)."""
        cfg = self.cfg
        beta1, beta2 = cfg.adamw_beta1, cfg.adamw_beta2
        for p, g, m, v, counts, decay in zip(params, grads, exp_avg, exp_avg_sq, steps, decays, strict=True):
            shape = (-1, *([1] * (p.dim() - 1)))
            scale = lr if isinstance(lr, float) else lr.view(shape)
            if decay:
                p.mul_(1 - scale * decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            values = [max(c, 1.0) for c in counts.tolist()]  # a count of 0 (a branch not yet run) is never kept
            if all(c == values[0] for c in values):
                correction1, correction2 = 1 - beta1**values[0], 1 - beta2**values[0]
                denom = (v.sqrt() / math.sqrt(correction2)).add_(cfg.adamw_eps)
                if isinstance(lr, float):
                    p.addcdiv_(m, denom, value=-lr / correction1)
                else:
                    p.sub_(m / denom * (scale / correction1))
                continue
            # clients at other counts (a dropped branch's): each its own corrections
            root2 = torch.tensor([math.sqrt(1 - beta2**c) for c in values], dtype=p.dtype, device=p.device)
            lrs = [lr] * len(values) if isinstance(lr, float) else lr.tolist()
            size = torch.tensor([a / (1 - beta1**c) for a, c in zip(lrs, values, strict=True)], dtype=p.dtype,
                                device=p.device)
            denom = (v.sqrt() / root2.view(shape)).add_(cfg.adamw_eps)
            p.sub_(m / denom * size.view(shape))
