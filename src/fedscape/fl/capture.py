"""Captured local steps replayed from CUDA graphs: a sequential client's forward and backward passes
(`CapturedForward`), and a vectorised chunk's recurring whole stacked steps (`StackedStepGraphs`, below).

Why: at the papers' batch sizes (16-32 CIFAR images) a resnet20 step on a GPU is bound by launching its few hundred
kernels, not by their arithmetic (an H100 took 8 ms for a plain-torch step, ../shared/gpu). A CUDA graph launches
the captured kernels in one call (`torch.cuda.make_graphed_callables`: one graph for the module's forward, one for
its backward, behind one autograd node). For a sequential client the loss, the strategy's gradient hooks and the
optimiser step stay eager: they are a few kernels, and keeping torch's own optimiser keeps its arithmetic. A stacked
step is captured whole (forward, backward, the strategy's gradient change and the update), one graph per step shape
once that shape is planned `STACKED_CAPTURE_MIN_STEPS` times, padded steps included; the rest of this docstring is
about the sequential capture, `StackedStepGraphs` says how the stacked one is checked.

Exactness: a replay runs the kernels the eager pass launched while it was captured, on the same parameters and
buffers, so it computes what the eager step computes. That is checked, not assumed: `CapturedForward.prepare`
runs one pass eagerly, `EAGER_REPEATS` more eagerly and one replayed, each from the same state, and keeps the graphs
only where the replay's loss, gradients and buffers (batch-norm statistics) equal the first eager pass's bit for
bit, or, where the eager passes differ among themselves (cuDNN's benchmark mode may pick a kernel that sums with
atomics, which the eager step has too), differ from it by at most `SPREAD_SLACK` times the most the repeats do.
The slack is there because the replay and a repeat are two draws of the same rounding noise: compared with one
repeat alone, the replay of an exact graph would be refused about every other time. A wrong replay (stale inputs,
a missed buffer) differs by the size of the numbers themselves, orders of magnitude past it. Random numbers drawn
in training (dropout) replay as the eager pass draws them: a CUDA graph takes the generator's offset at each replay
and advances it as the eager kernels would (torch's graph-safe RNG), and the check restores the random state before
each pass. Only a sequential client's full batches of the capture's shape replay; the last, smaller batch of a pass
runs eagerly.

`training.capture` (fedscape.fl.settings.CAPTURE_MODES): auto captures where it is exact, eager never, cuda_graph
insists. The steps never captured (an algorithm's own sequential objective, GradAug's stacked step, the stacked AdamW
step) are declared in fedscape.fl.settings.UNCAPTURED_STEPS, which planning reads too: it refuses cuda_graph for such a
run before any job, and the checks here and in the vectorised trainer say the same in a job.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from fedscape.core.manifest import note
from fedscape.fl.settings import TrainConfig, strategy_ref, uncaptured_steps
from fedscape.fl.strategies.base import Strategy
from fedscape.models.loss import mean_loss

log = logging.getLogger("fedscape.train")

# The graph maker: torch's, or a stand-in with its signature in the CPU tests of the machinery around it.
GraphMaker = Callable[..., nn.Module]

# The eager passes after the first that measure its run-to-run spread, and how far past that spread a replay may
# differ from the first eager pass (module docstring). A deterministic pass has spread 0: its replay must be exact.
EAGER_REPEATS = 2
SPREAD_SLACK = 4.0


def capture_blocker(model: nn.Module, strategy: Strategy, device_type: str) -> str | None:
    """Why the sequential local steps of `strategy` on `model` cannot be captured on `device_type`; None where they can
    (the check at capture decides the rest). Which strategies' steps are never captured is declared once, for planning
    too, in `fedscape.fl.settings.UNCAPTURED_STEPS`."""
    if device_type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device_type}"
    if reason := uncaptured_steps(strategy_ref(type(strategy)), strategy.name, "sequential"):
        return reason
    if any(b.requires_grad for b in model.buffers()):
        return "the model has a buffer that requires grad"
    return None


def resolve_capture(model: nn.Module, strategy: Strategy, cfg: TrainConfig, device_type: str) -> bool:
    """Whether the sequential client steps try capturing (`cfg.capture`). An explicit cuda_graph that cannot be
    honoured is an error, raised before any training."""
    if cfg.capture == "eager":  # TrainConfig has checked the mode against CAPTURE_MODES
        return False
    reason = capture_blocker(model, strategy, device_type)
    if reason is None:
        return True
    if cfg.capture == "cuda_graph":
        raise ValueError(f"training.capture is 'cuda_graph' but {reason}; use 'auto' to take eager steps where "
                         "capturing is not possible")
    if device_type == "cuda":  # on a CPU eager steps are all there is: nothing to say in every job's log
        log.info("local steps: eager (%s)", reason)
        note(local_steps={"captured": False, "why": reason})
    return False


def replay_check(replayed: list[torch.Tensor | None], eager: list[torch.Tensor | None],
                 repeats: list[list[torch.Tensor | None]]) -> tuple[float, float, bool]:
    """(the replay's largest difference from the first eager pass, the eager repeats' own, whether the replay is
    exact): equal bit for bit, or within SPREAD_SLACK times the repeats' spread (module docstring). A pass with NaN in
    it measures no spread (inf), against which any replay would pass: refused."""
    difference = _max_difference(replayed, eager)
    spread = max(_max_difference(again, eager) for again in repeats)
    return difference, spread, math.isfinite(spread) and difference <= SPREAD_SLACK * spread


def _max_difference(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float:
    """The largest absolute difference between matching tensors (inf where one is missing or not finite)."""
    worst = 0.0
    for u, v in zip(a, b, strict=True):
        if u is None or v is None:
            if u is not v:
                return float("inf")
            continue
        if u.shape != v.shape:
            return float("inf")
        if u.numel():
            diff = (u.double() - v.double()).abs().max()
            worst = max(worst, float(diff) if torch.isfinite(diff) else (0.0 if torch.equal(u, v) else float("inf")))
    return worst


# torch's private call that ends the device allocator's recording into a graph memory pool
# (`recover_from_failed_capture`), named _cuda_endAllocateCurrentStreamToPool before torch 2.8 (same arguments: the
# device index and the pool); None in a torch without either.
END_POOL_RECORDING = (getattr(torch._C, "_cuda_endAllocateToPool", None)
                      or getattr(torch._C, "_cuda_endAllocateCurrentStreamToPool", None))
# torch's private call that drops one capture's reference to a graph memory pool (the device index and the pool), which
# a graph's reset makes only for a capture that ended: `recover_from_failed_capture`. None in a torch without it.
RELEASE_POOL = getattr(torch._C, "_cuda_releasePool", None)


def recover_from_failed_capture(device: torch.device, pool) -> None:
    """Put right what a failed CUDA graph capture on `device` into the graph memory pool `pool` (None: one not known)
    leaves behind in torch, so that later captures and eager random draws work. Both capture paths call it once the
    stream that was current is current again; it raises nothing (the caller's error path goes on). Nothing on a CPU
    (a stand-in graph maker's failure, in the tests).

    torch's CUDAGraph::capture_end (torch 2.11) raises at cudaStreamEndCapture before it tells the caching allocator
    and the pinned host allocator that the capture stopped allocating to its pool: the pool stays "recording" in both,
    and while the device allocator believes a capture is under way it defers freeing blocks used on several streams.
    `END_POOL_RECORDING` ends the device allocator's recording (a torch that ended it itself answers "not currently
    recording", which is ignored). No call reaches the host allocator's, so a later capture into that pool raises
    "already recording to mempool_id" (measured on an H200 with torch 2.11): a failed capture's pool takes no further
    capture, and its callers capture into a fresh one (`StackedStepGraphs._cuda_graph`; `CapturedForward` captures
    nothing after a failure). The failed capture's reference to the pool, which torch's reset drops only for a capture
    that ended, is dropped here (`RELEASE_POOL`) where this ended the recording, so that what it allocated is freed
    once no kept graph holds the pool (each holds its own reference): a capture that fails every round, under an lr
    that moves every round, would otherwise keep a pool of its step's memory each time. Where torch had ended the
    recording itself it is left alone: such a torch (newer than 2.11) drops that reference itself.

    torch 2.11's CUDA generator keeps one "capturing" flag, which capture_begin sets and only a capture that ended
    clears: after a failed capture every eager draw from the default CUDA generator (dropout, torch.rand) raises
    "Offset increment outside graph capture". One throwaway capture that succeeds clears it (harmless on 2.14, which
    tracks it per capture); where that fails too, it is logged."""
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if pool is not None and END_POOL_RECORDING is not None:
        try:
            END_POOL_RECORDING(index, pool)
        except Exception as exc:  # (not recording: the capture failed before it began, or ended after all)
            if "not currently recording" not in str(exc):
                log.warning("after a failed CUDA graph capture, ending its pool's recording failed too (%s): later "
                            "captures into that pool may fail", exc)
        else:
            if RELEASE_POOL is not None:
                try:
                    RELEASE_POOL(index, pool)
                except Exception as exc:
                    log.warning("after a failed CUDA graph capture, releasing its memory pool failed too (%s): its "
                                "memory stays reserved", exc)
    try:
        with torch.cuda.device(index):
            scratch = torch.zeros(1, device=device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                scratch.add_(0)
    except Exception as exc:
        log.warning("after a failed CUDA graph capture, a capture to reset torch's CUDA random state failed too "
                    "(%s): eager random draws on the card may fail", exc)


class CapturedForward:
    """The model's training forward of full batches (and the backward behind it), replayed from CUDA graphs once
    `prepare` has captured and checked them; the model's own forward for every other call.

    Installed on the model for the trainer's lifetime: the forward is an attribute of the module instance that sends
    a call to the graphs only in training mode, with gradients enabled, on a tensor of the captured shape, dtype and
    device. Evaluation (eval mode) and batch-norm recomputation (no gradients) take the eager forward.
    """

    def __init__(self, model: nn.Module, batch_size: int, strict: bool = False,
                 make_graphed: GraphMaker | None = None):
        self.model, self.batch_size, self.strict = model, batch_size, strict
        # torch's maker captures into a pool of ours, which a failed capture leaves recording: the recovery ends it
        # (`recover_from_failed_capture`). A stand-in maker has none.
        self.pool = torch.cuda.graph_pool_handle() if make_graphed is None else None
        self.make_graphed = make_graphed if make_graphed is not None else functools.partial(
            torch.cuda.make_graphed_callables, pool=self.pool)
        self.state = "pending"  # pending -> on (graphs installed) | off (eager for good)
        self.replays = 0  # passes served by the graphs (a replayed forward, and its backward)
        self.refusals = 0  # 1 once the check or torch refused the capture (it is not tried again)
        self.difference = None  # what the check at capture measured: (replay vs eager, eager vs eager)
        self._graphed: Callable | None = None
        self._key: tuple | None = None

    @property
    def on(self) -> bool:
        return self.state == "on"

    def _dispatch(self, x, *args, **kwargs):
        if (self._graphed is not None and not args and not kwargs and self.model.training and torch.is_grad_enabled()
                and isinstance(x, torch.Tensor) and (x.shape, x.dtype, x.device) == self._key):
            self.replays += 1
            return self._graphed(x)
        return type(self.model).forward(self.model, x, *args, **kwargs)

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Capture on the first full batch (x, y) and check the replay against the eager pass; nothing otherwise.

        Called at a step's start (gradients cleared): the parameters, buffers, gradients and random state are as
        they were on return, so the step that follows computes what it would have without the capture."""
        if self.state != "pending" or len(x) != self.batch_size or not self.model.training:
            return
        model = self.model
        params, buffers = list(model.parameters()), list(model.buffers())
        saved = [b.detach().clone() for b in buffers]
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
        stream = torch.cuda.current_stream(x.device) if x.device.type == "cuda" else None

        def restore() -> None:
            with torch.no_grad():
                for b, v in zip(buffers, saved, strict=True):
                    b.copy_(v)
            for p in params:
                p.grad = None
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, x.device)

        def one_pass() -> list[torch.Tensor | None]:
            restore()
            loss = mean_loss(model(x), y)
            loss.backward()
            return [loss.detach().clone(), *(None if p.grad is None else p.grad.detach().clone() for p in params),
                    *(b.detach().clone() for b in buffers)]

        try:
            eager, repeats = one_pass(), [one_pass() for _ in range(EAGER_REPEATS)]
            restore()
            # The maker's warm-up and capture passes move batch-norm statistics: restored before the replay.
            self.make_graphed(model, (x.detach().clone(),), allow_unused_input=True)
            self._graphed = model.__dict__.pop("forward")
            self._key = (x.shape, x.dtype, x.device)
            model.forward = self._dispatch
            replayed = one_pass()
            self.replays = 0
        except Exception as exc:  # a model whose forward syncs with the host, or anything else capture refuses
            if stream is not None:  # a failed capture may leave its stream current (`cuda_graph`) and its warm-up
                torch.cuda.set_stream(stream)  # running there: the restore below must not race it
                torch.cuda.synchronize(x.device)
            # (before `restore`, which then gives the step the random state it started from)
            recover_from_failed_capture(x.device, self.pool)
            self._uninstall()
            restore()
            # (the check's replayed pass, counted by `_dispatch` before it raised, served no step)
            self.state, self.refusals, self.replays = "off", 1, 0
            if self.strict:
                raise RuntimeError(f"training.capture is 'cuda_graph' but capturing the model failed: {exc}") from exc
            log.warning("local steps: eager (capturing the model failed: %s)", exc)
            note(local_steps={"captured": False, "why": f"capturing the model failed: {exc}"})
            return
        restore()
        # (A pass with NaN in it, a client diverged before its first full batch, is refused: its steps stay eager.)
        difference, spread, exact = replay_check(replayed, eager, repeats)
        self.difference = (difference, spread)
        # The job's record says how its steps ran, with what the check measured.
        note(local_steps={"captured": exact, "batch_size": self.batch_size,
                          "difference_from_eager": difference, "eager_spread": spread})
        if exact:
            self.state = "on"
            log.info("local steps: forward and backward of batches of %d replayed from CUDA graphs (checked at "
                     "capture: largest difference from the eager pass %.3g, the eager pass's own %.3g)",
                     self.batch_size, difference, spread)
            return
        self._uninstall()
        self.state, self.refusals = "off", 1
        message = (f"the replayed pass differs from the eager one by up to {difference:.3g} (the eager pass from "
                   f"itself by {spread:.3g}; {SPREAD_SLACK:g} times that is allowed)")
        if self.strict:
            raise RuntimeError(f"training.capture is 'cuda_graph' but {message}; use 'auto' or 'eager'")
        log.warning("local steps: eager (%s)", message)

    def summary(self) -> dict:
        """What the capture did, for the run's meta.json (`fedscape.fl.engine.capture_of`): `graphs`, 1 where the
        forward and backward of full batches were captured and kept by the check, else 0; `replays`, the training
        passes they served (an algorithm of two passes a step, FedSAM's, replays both); `refusals`, 1 where the check
        or torch refused the capture (0 with `graphs` 0: no full batch came)."""
        return {"graphs": int(self.on), "replays": self.replays, "refusals": self.refusals}

    def _uninstall(self) -> None:
        self.model.__dict__.pop("forward", None)
        self._graphed, self._key = None, None

    def close(self) -> None:
        """Give the model its own forward back (the graphs' memory goes with them)."""
        self._uninstall()
        if self.state == "on":
            self.state = "off"


def make_capture(model: nn.Module, strategy: Strategy, cfg: TrainConfig, device_type: str,
                 make_graphed: GraphMaker | None = None) -> CapturedForward | None:
    """The captured forward of a sequential trainer where `cfg.capture` asks for one and it is possible; None for
    eager steps."""
    if not resolve_capture(model, strategy, cfg, device_type):
        return None
    return CapturedForward(model, cfg.batch_size, strict=cfg.capture == "cuda_graph", make_graphed=make_graphed)


# -- stacked steps (fedscape.fl.vectorized) ---------------------------------------------------------------------------
# A step shape is captured once the chunks planned so far (this round's and the earlier rounds') hold this many steps
# of it: the papers' shards make hundreds of steps of one shape a round, and a shape met once a round repays its
# capture (about seven steps' work) after a few rounds, since its graph serves every later round. At most this many
# graphs are kept per trainer: they share one memory pool for their steps' activations, and each keeps a copy of its
# step's batch (its input tensors). Where the budget is spent, a graph whose lr no step planned this round takes is
# released for a new one (`StackedStepGraphs.run`).
STACKED_CAPTURE_MIN_STEPS = 8
STACKED_MAX_GRAPHS = 64
# A refused shape is not checked again while its lr was taken in one of this many rounds before: an lr that cycles
# over rounds (an SWA cycle's) comes back within them, and each check costs about seven steps' work.
REFUSAL_ROUNDS = 8
# Eager runs of the step on a side stream before its capture: cuDNN's and the autograd engine's first-call work.
CAPTURE_WARMUP = 2

# A graph maker for a whole step: takes the step (a function of no arguments that reads its inputs from, and writes
# its results to, fixed tensors) and gives a function that replays it. `cuda_graph` on a card; in the CPU tests of the
# machinery, a stand-in.
StepGraphMaker = Callable[[Callable[[], None]], Callable[[], None]]


def cuda_graph(step: Callable[[], None], pool=None) -> Callable[[], None]:
    """`step` captured in a CUDA graph (after `CAPTURE_WARMUP` eager runs on a side stream, as torch's whole-network
    capture recipe does): its replay. The warm-up runs change what the step writes: the caller restores it, on the
    stream that was current, where this raises too."""
    current = torch.cuda.current_stream()
    stream = torch.cuda.Stream()
    stream.wait_stream(current)
    try:
        with torch.cuda.stream(stream):
            for _ in range(CAPTURE_WARMUP):
                step()
    finally:  # (a warm-up run that raised may have left kernels queued there)
        current.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()  # (a pool the recovery knows)
    try:
        with torch.cuda.graph(graph, pool=pool):
            step()
    except BaseException:
        # torch.cuda.graph's __exit__ (torch 2.14) ends the capture before it gives the stream back, and ending a
        # failed capture raises: its capture stream would stay current for the rest of the process, where tensors
        # the caching allocator handed out on this stream are used unordered with it. Given back first, then the
        # recovery captures on a stream of its own.
        torch.cuda.set_stream(current)
        recover_from_failed_capture(current.device, pool)
        raise
    return graph.replay


class StepKey(NamedTuple):
    """A stacked step's shape: what its graph depends on (the step's Python values, fixed at capture)."""
    clients: int  # the chunk's
    active: int  # clients with a step here: a prefix of the chunk
    width: int  # the longest of their batches
    padded: bool  # whether some batch is shorter
    lr: float  # the active clients' (one lr: a step of a lr per client is never captured)
    single: bool  # whether some batch holds one sample, for a model with batch norm


class StackedStepGraphs:
    """The vectorised trainer's stacked steps replayed from CUDA graphs, one graph per step shape.

    Why: a stacked step of resnet20 over 10 clients launches about 500 kernels, and on an H200 took 14 ms of which its
    kernels ran 3.7 (benchmarks/README.md): the launches, not the card, bound it. A graph of the whole step (forward,
    backward, the strategy's gradient change and the SGD update) launches them in one call. The step reads its
    batches from input tensors of its own (copied in before each replay) and the clients' parameters, momentum,
    running statistics and loss sums from the trainer's chunk state, which stays at the same addresses from round to
    round, so one capture serves every later step of its shape (`StepKey`).

    Under an lr schedule each step of a round takes its own lr (`fedscape.fl.schedule.step_lrs`), so a shape recurs
    only where its lr does: over local steps, every round (a client's k-th of K steps takes the same lr each round),
    so such shapes are captured once planned STACKED_CAPTURE_MIN_STEPS times (in the eighth round, with one chunk a
    round and one step of each in it); over rounds, never after its round, and each chunk holds
    one step of it, so no step of a warming or decaying lr is captured (`_repays`). What past rounds leave is
    released, so that a long run neither stops capturing nor grows on the host: `begin_round` forgets the counts and
    refusals of the shapes whose lr the round before took at no step, and a full budget releases the least recently
    replayed graph of an lr that no chunk planned so far in the round takes (`run`). Not simply the least recently
    replayed graph: where more shapes recur than the budget holds (more steps of their own lr than
    STACKED_MAX_GRAPHS in a chunk, under a schedule over local steps) each capture would release a graph that is due
    again, and every step would be captured anew; a graph of an lr this round takes stays, so the budget holds the
    first shapes to recur, as it does under a constant lr, where nothing is ever released.

    Exactness is checked at capture, as `CapturedForward.prepare` checks a sequential pass: from the same state the
    step runs once eagerly, `EAGER_REPEATS` more times eagerly, then once replayed, and the graph is kept only where
    the replay's results (every tensor of the state) equal the first eager run's bit for bit, or differ by at most
    `SPREAD_SLACK` times the most the repeats do. The state is restored after each run; the step then replays.
    """

    def __init__(self, strict: bool = False, make_graph: StepGraphMaker | None = None):
        self.strict = strict
        self.make_graph = make_graph  # None: torch's (`_cuda_graph`)
        # the memory pool torch's graphs of this trainer share; a stand-in maker has none
        self.pool = torch.cuda.graph_pool_handle() if make_graph is None else None
        # shape -> (replay, its input tensors), the least recently replayed first
        self.graphs: dict[StepKey, tuple[Callable[[], None], tuple]] = {}
        self.refused: set[StepKey] = set()  # shapes whose check refused the replay: they step eagerly
        self.planned: Counter = Counter()  # steps of each shape in the chunks planned so far
        self.steps = 0  # the steps of the chunks planned so far: each replayed or taken eagerly
        self.replays = 0
        self.captures = 0  # graphs captured and kept by their check
        self.refusals = 0  # captures refused (by the check, or by torch)
        self.evictions = 0  # graphs released for another shape's
        # what the check of each shape kept or refused measured: (replay, eager spread)
        self.difference: dict[StepKey, tuple[float, float]] = {}
        self._lrs: set[float] = set()  # the lrs of the steps planned in this round
        self._recent: deque[set[float]] = deque(maxlen=REFUSAL_ROUNDS)  # those of the last rounds, the latest last
        self._pending: Counter = Counter()  # the steps of each shape in the chunk being run, from the next one on

    def begin_round(self) -> None:
        """Before a round's chunks are planned: forget the counts of the shapes whose lr the round that ended took at
        no step (the rounds of a schedule over rounds: their lrs do not come back), and the refusals of those whose lr
        none of the last REFUSAL_ROUNDS rounds took."""
        ended, self._lrs = self._lrs, set()
        self._recent.append(ended)
        for key in [k for k in self.planned if k.lr not in ended]:
            del self.planned[key]
        self._forget([k for k in self.refused if not any(k.lr in lrs for lrs in self._recent)])

    def plan(self, keys: list[StepKey | None]) -> None:
        """Count a chunk's step shapes (None: a step that is never captured) before its steps run."""
        self.steps += len(keys)
        self.planned.update(key for key in keys if key is not None)
        self._lrs.update(key.lr for key in keys if key is not None)
        self._pending = Counter(key for key in keys if key is not None)

    def run(self, key: StepKey, inputs: tuple, step_of: Callable[[tuple], Callable[[], None]],
            state: list[torch.Tensor]) -> bool:
        """Replay the graph of `key` on `inputs` and say True; False where the caller must take the step eagerly (no
        graph, and the shape planned fewer than STACKED_CAPTURE_MIN_STEPS times so far or no room for its graph; or
        its check refused it). `step_of(inputs)`: the step reading those input tensors; `state`: every tensor it
        changes."""
        if key in self.refused:
            return False
        left = self._pending[key]  # this chunk's steps of the shape, this one included
        self._pending[key] -= 1
        entry = self.graphs.pop(key, None)  # (put back last: the most recently replayed)
        if entry is None:
            if self.planned[key] < STACKED_CAPTURE_MIN_STEPS or not self._repays(key, left):
                return False
            fits, stale = self._room()
            if not fits:
                return False
            static = tuple(None if x is None else x.clone() for x in inputs)
            entry = self._capture(key, step_of(static), static, state)
            if entry is None:
                self.refused.add(key)
                self.refusals += 1
                return False
            self.captures += 1
            if stale is not None:  # released once the new graph is kept: a refused capture costs no kept graph
                self._forget([stale])
                self.evictions += 1
        self.graphs[key] = entry
        replay, static = entry
        for s, x in zip(static, inputs, strict=True):
            if s is not None:
                s.copy_(x)
        replay()
        self.replays += 1
        return True

    def summary(self) -> dict:
        """What the capture did, for the run's meta.json (`fedscape.fl.engine.capture_of`): the graphs captured and kept
        by their check, the steps replayed from them and those taken eagerly (a shape planned too few times so far, a
        capture that would not repay, a full budget, a refused shape, a step of an lr per client), the graphs released
        for another shape's and the captures refused."""
        return {"graphs": self.captures, "replays": self.replays, "eager_steps": self.steps - self.replays,
                "evictions": self.evictions, "refusals": self.refusals}

    def _repays(self, key: StepKey, left: int) -> bool:
        """Whether a capture of `key` now is likely to repay its cost (about seven steps' work): where its lr was
        taken in the round before, it recurs in later rounds (a constant lr, a schedule over local steps); where not
        (the first round, or a round of a schedule over rounds, whose lrs do not come back), only where its own chunk
        still holds `STACKED_CAPTURE_MIN_STEPS` of its steps, this one included: the later chunks of the round are
        not planned yet, and a shape planned once a chunk (a schedule over rounds) would be captured for a few replays
        at most, each round, slower than its steps taken eagerly."""
        return bool(self._recent) and key.lr in self._recent[-1] or left >= STACKED_CAPTURE_MIN_STEPS

    def _room(self) -> tuple[bool, StepKey | None]:
        """Whether a new graph fits, and the graph to release for it: none within the budget; else the least recently
        replayed graph of an lr that no step planned this round takes (released with its input tensors; the memory
        its step used stays in the pool the next capture takes from). Never a graph this round may replay (the class
        docstring says why)."""
        if len(self.graphs) < STACKED_MAX_GRAPHS:
            return True, None
        stale = next((key for key in self.graphs if key.lr not in self._lrs), None)
        return stale is not None, stale

    def _forget(self, keys: list[StepKey]) -> None:
        """Drop the graphs, refusals and check measures of `keys` (not their counts)."""
        for key in keys:
            self.graphs.pop(key, None)
            self.refused.discard(key)
            self.difference.pop(key, None)

    def _cuda_graph(self, step: Callable[[], None]) -> Callable[[], None]:
        """`cuda_graph` into the trainer's pool. A failed capture leaves its pool recording in torch's host
        allocator, which no call of torch's ends (`recover_from_failed_capture`), so the later captures take a fresh
        pool; the old one lives on while a graph kept in it does."""
        try:
            return cuda_graph(step, self.pool)
        except Exception:
            self.pool = torch.cuda.graph_pool_handle()
            raise

    def _capture(self, key: StepKey, step: Callable[[], None], static: tuple, state: list[torch.Tensor]
                 ) -> tuple[Callable[[], None], tuple] | None:
        saved = [t.clone() for t in state]

        def restore() -> None:
            with torch.no_grad():
                for t, v in zip(state, saved, strict=True):
                    t.copy_(v)

        def one_run(run: Callable[[], None]) -> list[torch.Tensor]:
            run()
            out = [t.clone() for t in state]
            restore()
            return out

        try:
            eager = one_run(step)
        except Exception:  # the step itself fails eagerly (a batch norm of one value per channel): its own error
            restore()
            raise
        try:
            repeats = [one_run(step) for _ in range(EAGER_REPEATS)]
            replay = self._cuda_graph(step) if self.make_graph is None else self.make_graph(step)
            restore()
            replayed = one_run(replay)
        except Exception as exc:  # a step that syncs with the host, or anything else capture refuses
            restore()
            if self.strict:
                raise RuntimeError("training.capture is 'cuda_graph' but capturing a stacked step failed: "
                                   f"{exc}") from exc
            log.warning("stacked steps of shape %s: eager (capturing failed: %s)", key, exc)
            return None
        difference, spread, exact = replay_check(replayed, eager, repeats)
        self.difference[key] = (difference, spread)
        if exact:
            log.info("stacked steps of shape %s replayed from a CUDA graph (checked at capture: largest difference "
                     "from the eager step %.3g, the eager step's own %.3g)", key, difference, spread)
            return replay, static
        message = (f"the replayed stacked step differs from the eager one by up to {difference:.3g} (the eager step "
                   f"from itself by {spread:.3g})")
        if self.strict:
            raise RuntimeError(f"training.capture is 'cuda_graph' but {message}; use 'auto' or 'eager'")
        log.warning("stacked steps of shape %s: eager (%s)", key, message)
        return None

    def drop(self, which: Callable[[StepKey], bool]) -> None:
        """Forget the shapes `which` selects (their graphs, refusals, check measures and counts): the state they
        replay into is replaced."""
        for key in [k for k in self.planned if which(k)]:
            del self.planned[key]
        self._forget([k for k in {*self.graphs, *self.refused, *self.difference} if which(k)])

    def close(self) -> None:
        """Drop the graphs (and with them their memory)."""
        self.graphs.clear()
