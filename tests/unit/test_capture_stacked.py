"""Vectorised steps replayed from CUDA graphs (fedscape.fl.capture.StackedStepGraphs): the machinery on a CPU with a
stand-in graph maker (helpers.graphs.emulated_graph: the ops the step dispatched at capture, replayed on the tensors
it saw, as a graph replays its kernels on the addresses it captured), and on a card with torch's graphs."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers.graphs import emulated_graph
from helpers.synthetic import shard_data
from helpers.vectorized import model_of

from fedscape.fl import capture as capture_mod
from fedscape.fl.capture import StackedStepGraphs, StepKey
from fedscape.fl.engine import execution_of
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import VectorizedTrainer
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.resnets import ResNet

# Batch 8, 4 epochs: 24, 24, 20 and 8 steps (the last client's every other batch holds 1 sample). Steps 0-7 are
# 4 clients' (4 times full, 4 times padded), 8-19 three clients' full batches (12 times: the one shape met 8 times or
# more in the first round), 20-23 two clients' (4 times). The three shapes of 4 steps a round reach 8 in the second.
SIZES = [48, 48, 40, 9]
CFG = {"local_epochs": 4, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 3}
RECURRING = 12  # steps of the shape met most per round
SHAPES = {(3, 8, False): 12, (4, 8, False): 4, (4, 8, True): 4, (2, 8, False): 4}  # (active, width, padded): steps


stand_in = emulated_graph


def small_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), (4, 8), norm="batch")


def wider_resnet() -> ResNet:
    """Wide enough that FedAlign's width cuts its last stage's channels (slim_channels keeps multiples of 8)."""
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1), (16, 32), norm="batch")


MOON = {"mu": 1.0, "temperature": 0.5, "head": "projection"}


def moon_resnet():
    """small_resnet with MOON's classifier on its projection head."""
    return make_strategy("moon", MOON).prepare_model(small_resnet(), seed=0)


def rounds(model, cfg: TrainConfig, make_graph=None, algorithm: str = "fedprox", hparams=None, num_rounds: int = 2,
           fresh: bool = False, made: list | None = None, sizes: list[int] = SIZES):
    """`num_rounds` rounds of every client from the model, the server's update between them: (the trainer, every
    round's client results, the last global parameters). `fresh`: a new trainer every round (no state kept from one
    round to the next: the reference of the kept state's reuse). `made`: a list each trainer is appended to before it
    trains (so that a graph maker can reach the trainer whose steps it captures). `sizes`: the clients' samples."""
    data = shard_data(sizes)
    flat = FlatParams(model)
    params, buffers = flat.get(), flatten_buffers(model)
    strategy = make_strategy(algorithm, {"mu": 0.5} if hparams is None and algorithm == "fedprox" else hparams or {})
    strategy.setup(data.num_clients, params.numel(), params.device, model=model, seed=0)
    trainer = None
    results = []
    for r in range(1, num_rounds + 1):
        if trainer is None or fresh:
            trainer = VectorizedTrainer(model, data, strategy, cfg, make_graph=make_graph)
            if made is not None:
                made.append(trainer)
        results.append(trainer.train_round(params, buffers, list(range(data.num_clients)), r))
        params = strategy.server_update(params, results[-1])
        buffers = strategy.aggregate_buffers(results[-1]) if buffers.numel() else buffers
    return trainer, results, params


def same(a, b) -> bool:
    return all(torch.equal(x.params, y.params) and torch.equal(x.buffers, y.buffers) and x.train_loss == y.train_loss
               for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


@pytest.mark.parametrize(("make", "train", "algorithm", "hparams"), [
    (lambda: model_of("cnn_small"), {}, "fedprox", None),
    (lambda: model_of("cnn_small"), {"augment": "crop_flip", "nesterov": True}, "fedprox", None),
    (small_resnet, {}, "fedprox", None),  # batch norm: padded steps and each client's running statistics
    # each step's lam and permutation: inputs of the replay
    (small_resnet, {"augment": "crop_flip"}, "mixup", {"gamma": 0.4}),
    # each step's residual scales too, and the dropped branches kept
    (small_resnet, {}, "stochdepth", {"survival_last": 0.5}),
    # the slimmed pass, each client's factor and clipping, without a host read
    (wider_resnet, {}, "fedalign", {"mu": 0.5, "width": 0.5, "clip_grad_norm": 1.0}),
    (moon_resnet, {}, "moon", MOON),  # the references' passes at the global and the clients' previous parameters
    (lambda: model_of("cnn_small"), {}, "scaffold", None),  # each client's correction, read from the chunk's store
    (lambda: model_of("cnn_small"), {}, "feddyn", None),
    # two passes a step (at the weights, then at the ascent), each client's ascent scaled without a host read
    (small_resnet, {}, "fedsam", {"rho": 0.05}),
    # the perturbation scaled by |w| + eta on every tensor, or on the weights alone
    (small_resnet, {}, "fedasam", {"rho": 0.5, "eta": 0.2, "adaptive_tensors": "all"}),
    (small_resnet, {}, "fedasam", {"rho": 0.5, "eta": 0.2, "adaptive_tensors": "weights"}),
], ids=["cnn_small", "crop_flip-nesterov", "batch-norm", "batch-norm-mixup", "batch-norm-stochdepth",
        "batch-norm-fedalign", "batch-norm-moon", "scaffold", "feddyn", "batch-norm-fedsam", "batch-norm-fedasam-all",
        "batch-norm-fedasam-weights"])
def test_replayed_steps_equal_eager_ones_bit_for_bit_over_rounds(make, train, algorithm, hparams):
    # Prepare
    cfg = TrainConfig(**{**CFG, **train})

    # Execute: eager steps (no graph maker on a CPU) by a new trainer every round, then steps of recurring shapes
    # replayed from the stand-in by one trainer for both rounds
    eager_trainer, eager, _ = rounds(make(), cfg, fresh=True, algorithm=algorithm, hparams=hparams)
    trainer, replayed, _ = rounds(make(), cfg, make_graph=stand_in, algorithm=algorithm, hparams=hparams)

    # Assert: the same clients in both rounds (the second round's replays run on the state and inputs of the first
    # round's captures); the shape met 12 times in the first round was captured then, the three met 4 times a round
    # in the second, and every step of a captured shape replayed (the capturing one too)
    assert eager_trainer.graphs is None and not eager_trainer.captured
    assert same(eager, replayed)
    assert {key[1:4] for key in trainer.graphs.graphs} == set(SHAPES)
    assert trainer.captured and trainer.graphs.replays == RECURRING + sum(SHAPES.values())
    assert execution_of(trainer) == "vectorized, captured" and execution_of(eager_trainer) == "vectorized"


def resnet_to_1x1() -> ResNet:
    """A batch-norm ResNet whose last stage's input is 1x1 (8x8 halved three times)."""
    torch.manual_seed(0)
    return ResNet(10, 1, (1, 1, 1, 1), (4, 4, 8, 8), norm="batch")


@pytest.mark.parametrize(("make", "algorithm", "hparams"), [
    (resnet_to_1x1, "fedavg", {}),
    (lambda: make_strategy("moon", MOON).prepare_model(resnet_to_1x1(), seed=0), "moon", MOON),
], ids=["batch-norm", "moon-projection"])
def test_padded_steps_at_a_1x1_batch_norm_are_captured(make, algorithm, hparams):
    # Prepare: batch 4 on clients of 6 and 7 samples: every step holds 4 clients, each other one padded (2 or 3 real
    # rows), so that the padded steps' masked batch norm at the 1x1 stage must know without a host read that no
    # client holds one sample (`StackedNorm.single`, through MOON's projection head's backbone too)
    cfg = TrainConfig(**{**CFG, "batch_size": 4, "capture": "cuda_graph"})

    # Execute: two rounds, so that both shapes (4 steps a round each) are planned 8 times and captured
    trainer, _, _ = rounds(make(), cfg, make_graph=stand_in, algorithm=algorithm, hparams=hparams, sizes=[6, 6, 7, 7])

    # Assert: the padded shape was captured too (its capture made no host sync), and replayed
    assert trainer.graphs.refused == set()
    assert {key[1:4] for key in trainer.graphs.graphs} == {(4, 4, False), (4, 3, True)}
    assert trainer.graphs.replays > 0


def test_a_replay_that_differs_from_the_eager_step_is_refused(caplog):
    # Prepare: a graph maker whose replay moves every parameter a little after the step
    made = []

    def wrong(step):
        def replay():
            step()
            with torch.no_grad():
                for t in next(iter(made[-1]._states.values())).stacked:
                    t.add_(1e-3)
        return replay

    cfg = TrainConfig(**CFG)
    _, eager, _ = rounds(model_of("cnn_small"), cfg)

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedscape.train"):
        trainer, refused, _ = rounds(model_of("cnn_small"), cfg, make_graph=wrong, made=made)

    # Assert: the check measured the difference, kept no graph, and the steps ran eagerly (the same results)
    assert same(eager, refused)
    assert trainer.graphs.graphs == {} and {k[1:4] for k in trainer.graphs.refused} == set(SHAPES)
    assert not trainer.captured
    for difference, spread in trainer.graphs.difference.values():
        assert spread == 0 and difference == pytest.approx(1e-3, rel=1e-2)
    assert "differs from the eager one" in caplog.text


def test_cuda_graph_mode_insists_on_an_exact_replay():
    # Prepare: a replay that computes nothing
    cfg = TrainConfig(**{**CFG, "capture": "cuda_graph"})

    # Execute and Assert
    with pytest.raises(RuntimeError, match="'cuda_graph' but the replayed stacked step differs"):
        rounds(model_of("cnn_small"), cfg, make_graph=lambda step: (lambda: None))


@pytest.mark.parametrize("strict", [False, True])
def test_a_capture_that_fails_steps_eagerly_or_is_an_error_where_insisted_on(strict, caplog):
    # Prepare: a graph maker that fails, as capturing a step that syncs with the host does
    def failing(step):
        raise RuntimeError("operation not permitted when stream is capturing")

    cfg = TrainConfig(**{**CFG, "capture": "cuda_graph" if strict else "auto"})

    # Execute and Assert
    if strict:
        with pytest.raises(RuntimeError, match="capturing a stacked step failed: operation not permitted"):
            rounds(model_of("cnn_small"), cfg, make_graph=failing)
        return
    _, eager, _ = rounds(model_of("cnn_small"), TrainConfig(**CFG))
    with caplog.at_level(logging.WARNING, logger="fedscape.train"):
        trainer, results, _ = rounds(model_of("cnn_small"), cfg, make_graph=failing)
    assert same(eager, results) and not trainer.captured
    assert "capturing failed: operation not permitted" in caplog.text


@pytest.mark.parametrize(("train", "error"), [
    ({"capture": "eager"}, None),
    ({"optimizer": "adamw", "client_parallel": "vectorized"}, None),
    ({"optimizer": "adamw", "client_parallel": "vectorized", "capture": "cuda_graph"}, "stacked AdamW step"),
], ids=["eager", "adamw", "adamw-insisted"])
def test_what_is_never_captured(train, error):
    # Prepare
    cfg = TrainConfig(**{**CFG, **train})

    # Execute and Assert: no graphs (AdamW's bias correction changes with every step), or a clear error
    if error:
        with pytest.raises(ValueError, match=error):
            rounds(model_of("cnn_small"), cfg, make_graph=stand_in, num_rounds=1)
        return
    trainer, _, _ = rounds(model_of("cnn_small"), cfg, make_graph=stand_in, num_rounds=1)
    assert trainer.graphs is None


@pytest.mark.parametrize(("num_rounds", "captured"), [(1, set()), (2, {(3, 8, False)})])
def test_a_shape_is_captured_once_the_rounds_so_far_planned_it_often_enough(monkeypatch, num_rounds, captured):
    # Prepare: a threshold above one round's count of the most frequent shape, below two rounds'
    monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", RECURRING + 1)

    # Execute
    trainer, _, _ = rounds(model_of("cnn_small"), TrainConfig(**CFG), make_graph=stand_in, num_rounds=num_rounds)

    # Assert
    assert {key[1:4] for key in trainer.graphs.graphs} == captured and trainer.captured == bool(captured)


def test_graphs_stop_at_their_budget(monkeypatch):
    # Prepare: room for no graph
    monkeypatch.setattr(capture_mod, "STACKED_MAX_GRAPHS", 0)

    # Execute
    trainer, _, _ = rounds(model_of("cnn_small"), TrainConfig(**CFG), make_graph=stand_in, num_rounds=1)

    # Assert
    assert trainer.graphs.graphs == {} and not trainer.captured


# -- an lr schedule: what past rounds leave is released ----------------------------------------------------------------

def key_of(lr: float, active: int = 1) -> StepKey:
    return StepKey(1, active, 8, False, lr, False)


def drive(graphs: StackedStepGraphs, plan: list[list[list[StepKey]]]) -> torch.Tensor:
    """Each round's chunks of `plan` through `graphs`, every step replayed where `graphs` can, else eager: a step adds
    its lr (an input) to one state tensor; that tensor at the end."""
    state = torch.zeros(1, dtype=torch.float64)
    for chunks in plan:
        graphs.begin_round()
        for keys in chunks:
            graphs.plan(keys)
            for key in keys:
                def step_of(static):
                    return lambda: state.add_(static[0])

                inputs = (torch.tensor([key.lr], dtype=torch.float64),)
                if not graphs.run(key, inputs, step_of, [state]):
                    step_of(inputs)()
    return state


@pytest.mark.parametrize(("plan", "kept", "evictions"), [
    # a past round's lr: its graph is released for the new round's, the least recently replayed first
    ([[[key_of(0.1), key_of(0.2)]], [[key_of(0.3)]]], {key_of(0.2), key_of(0.3)}, 1),
    ([[[key_of(0.1), key_of(0.2), key_of(0.1)]], [[key_of(0.3)]]], {key_of(0.1), key_of(0.3)}, 1),
    # an lr an earlier chunk of the round took: kept, the new shape steps eagerly
    ([[[key_of(0.1), key_of(0.2)], [key_of(0.3)]]], {key_of(0.1), key_of(0.2)}, 0),
    # one lr (no schedule): nothing is released, as before the budget took anything back
    ([[[key_of(0.1, 1), key_of(0.1, 2)]], [[key_of(0.1, 3), key_of(0.1, 1)]]], {key_of(0.1, 1), key_of(0.1, 2)}, 0),
], ids=["past-round", "least-recently-replayed", "this-round", "constant-lr"])
def test_a_full_budget_releases_a_graph_only_of_an_lr_the_round_does_not_take(monkeypatch, plan, kept, evictions):
    # Prepare: room for two graphs, every shape captured when first planned
    monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", 1)
    monkeypatch.setattr(capture_mod, "STACKED_MAX_GRAPHS", 2)
    graphs = StackedStepGraphs(make_graph=stand_in)

    # Execute
    state = drive(graphs, plan)

    # Assert: the graphs kept, those released with their check's measures, and the steps computed as eager ones
    assert set(graphs.graphs) == kept and set(graphs.difference) == kept and graphs.evictions == evictions
    eager = torch.zeros(1, dtype=torch.float64)
    for key in (k for chunks in plan for keys in chunks for k in keys):
        eager.add_(key.lr)
    assert torch.equal(state, eager)


def test_a_refused_capture_releases_no_graph_and_an_lr_that_cycles_is_not_checked_again(monkeypatch):
    # Prepare: room for one graph, every shape captured when first planned; the maker refuses the shapes of lr 0.2
    # (its replay adds nothing), whose lr comes back every other round (an SWA cycle)
    monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", 1)
    monkeypatch.setattr(capture_mod, "STACKED_MAX_GRAPHS", 1)
    made = []

    def maker(step):
        made.append(step)
        return step if len(made) == 1 else (lambda: None)  # the first (lr 0.1) kept, every later one refused

    graphs = StackedStepGraphs(make_graph=maker)
    plan = [[[key_of(0.1)]], [[key_of(0.2)]], [[key_of(0.1)]], [[key_of(0.2)]], [[key_of(0.1)]]]

    # Execute
    state = drive(graphs, plan)

    # Assert: lr 0.1's graph is kept through the refusal (it would have been released for lr 0.2's), lr 0.2 is
    # checked once, and every step computed as an eager one
    assert set(graphs.graphs) == {key_of(0.1)} and graphs.evictions == 0
    assert len(made) == 2 and graphs.refused == {key_of(0.2)}
    eager = torch.zeros(1, dtype=torch.float64)
    for lr in (0.1, 0.2, 0.1, 0.2, 0.1):
        eager.add_(lr)
    assert torch.equal(state, eager)


@pytest.mark.parametrize("end_recording", [lambda device, pool: None, None], ids=["device-call", "no-call"])
def test_after_a_failed_capture_torchs_graphs_capture_into_a_fresh_pool(monkeypatch, end_recording):
    # Prepare: torch's graph maker (no stand-in given) whose capture into its pool fails once, as a step that syncs
    # with the host fails, then captures (its replay the eager step); pool handles counted as torch's are. Whether or
    # not torch has the call that ends the device allocator's recording, the host allocator's stays (torch 2.11)
    monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", 1)
    monkeypatch.setattr(capture_mod, "END_POOL_RECORDING", end_recording)
    handles = iter(range(1, 10))
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, next(handles)))
    seen = []

    def cuda_graph(step, pool):
        seen.append(pool)
        if len(seen) == 1:
            raise RuntimeError("operation not permitted when stream is capturing")
        return step

    monkeypatch.setattr(capture_mod, "cuda_graph", cuda_graph)
    graphs = StackedStepGraphs()

    # Execute: two shapes, the first one's capture failing
    state = drive(graphs, [[[key_of(0.1), key_of(0.2)]]])

    # Assert: the second shape captured into a fresh pool, not the one the failure left recording; the first refused
    assert seen == [(0, 1), (0, 2)]
    assert graphs.refused == {key_of(0.1)} and set(graphs.graphs) == {key_of(0.2)}
    assert torch.equal(state, torch.tensor([0.1], dtype=torch.float64).add_(0.2))


# Four clients of 16 samples, batch 8, one epoch: 2 steps each, at the same lrs, so that a step's lr is one number
EQUAL = [16, 16, 16, 16]
STEPS = 2


@pytest.mark.parametrize(("schedule", "replays", "evictions"), [
    # one lr: one shape (both steps), captured in the first chunk, replayed by all 8 steps of every round
    ({}, 3 * 8, 0),
    # over local steps: each round's two lrs are the last round's, captured from the second round on (in the first,
    # a chunk holds one step of each, too few to repay a capture before the round's lrs are known to recur)
    ({"lr_schedule": "cosine", "lr_schedule_over": "local_steps"}, 8 + 8, 0),
    # over rounds: every step's lr is new and its chunk holds one step of it: never captured (a few replays in the
    # round's later chunks at most, slower than eager steps)
    ({"lr_schedule": "cosine", "lr_schedule_over": "rounds"}, 0, 0),
], ids=["constant", "over-local-steps", "over-rounds"])
def test_an_lr_schedule_captures_the_shapes_that_recur(monkeypatch, schedule, replays, evictions):
    # Prepare: a chunk per client (a shape is planned once a chunk), captured once planned twice, room for one
    # round's two graphs
    monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", 2)
    monkeypatch.setattr(capture_mod, "STACKED_MAX_GRAPHS", STEPS)
    cfg = TrainConfig(**{**CFG, "local_epochs": 1, "rounds": 3, "client_chunk_size": 1, **schedule})

    # Execute
    _, eager, _ = rounds(model_of("cnn_small"), cfg, num_rounds=3, sizes=EQUAL)
    trainer, replayed, _ = rounds(model_of("cnn_small"), cfg, make_graph=stand_in, num_rounds=3, sizes=EQUAL)

    # Assert: the shapes that recur replayed, the same clients as eager steps
    assert trainer.graphs.replays == replays and trainer.graphs.evictions == evictions
    assert same(eager, replayed)


@pytest.mark.parametrize("make_graph", [stand_in, lambda step: (lambda: None)], ids=["captured", "refused"])
@pytest.mark.parametrize("over", ["rounds", "local_steps"])
def test_the_counts_of_an_lr_schedule_stay_bounded(monkeypatch, over, make_graph):
    # Prepare: one chunk a round, every shape captured (or refused) when first planned
    monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", 1)
    cfg = TrainConfig(**{**CFG, "local_epochs": 1, "rounds": 12, "lr_schedule": "cosine", "lr_schedule_over": over})

    # Execute: twelve rounds of a cosine schedule
    _, eager, _ = rounds(model_of("cnn_small"), cfg, num_rounds=12, sizes=EQUAL)
    trainer, results, _ = rounds(model_of("cnn_small"), cfg, make_graph=make_graph, num_rounds=12, sizes=EQUAL)

    # Assert: over rounds the counts hold the last two rounds' shapes (each round's lrs are new) and the refusals those
    # of the last REFUSAL_ROUNDS rounds and this one, over local steps one round's (the same lrs every round; the
    # graphs stay within their budget, released as it needs room); the same clients as eager steps
    graphs = trainer.graphs
    bound = 2 * STEPS if over == "rounds" else STEPS
    assert len(graphs.planned) == bound
    assert len(graphs.refused) <= ((capture_mod.REFUSAL_ROUNDS + 1) * STEPS if over == "rounds" else STEPS)
    assert set(graphs.difference) == set(graphs.graphs) | graphs.refused
    assert same(eager, results)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("make", "algorithm", "hparams"), [
    (lambda: model_of("cnn_small"), "fedprox", {"mu": 0.5}),
    (small_resnet, "fedprox", {"mu": 0.5}),
    (small_resnet, "mixup", {"gamma": 0.4}),
    (small_resnet, "stochdepth", {"survival_last": 0.5}),
    (wider_resnet, "fedalign", {"mu": 0.5, "width": 0.5, "clip_grad_norm": 1.0}),  # no host read in its step
    (moon_resnet, "moon", MOON),
    (small_resnet, "scaffold", {}),
    (small_resnet, "feddyn", {}),
    (small_resnet, "fedsam", {"rho": 0.05}),
    (small_resnet, "fedasam", {"rho": 0.5, "eta": 0.2, "adaptive_tensors": "all"}),
    (small_resnet, "fedasam", {"rho": 0.5, "eta": 0.2, "adaptive_tensors": "weights"}),
], ids=["cnn_small", "batch-norm", "mixup", "stochdepth", "fedalign", "moon", "scaffold", "feddyn", "fedsam",
        "fedasam-all", "fedasam-weights"])
def test_on_a_gpu_captured_stacked_steps_equal_eager_ones(make, algorithm, hparams, float64_default):
    # Prepare: in float64 on the card (cuDNN's float64 kernels: the check's spread is 0 or rounding)
    def on_gpu(capture: str):
        model = make().cuda()
        data = shard_data(SIZES)
        data = type(data)(data.x_train.cuda(), data.y_train.cuda(), [ix.cuda() for ix in data.client_indices],
                          data.x_test.cuda(), data.y_test.cuda())
        flat = FlatParams(model)
        params, buffers = flat.get(), flatten_buffers(model).cuda()
        strategy = make_strategy(algorithm, hparams)
        strategy.setup(data.num_clients, params.numel(), params.device, model=model, seed=0)
        trainer = VectorizedTrainer(model, data, strategy, TrainConfig(**{**CFG, "capture": capture}))
        out = []
        for r in (1, 2):
            out.append(trainer.train_round(params, buffers, list(range(data.num_clients)), r))
            params = strategy.server_update(params, out[-1])
        return trainer, out

    # Execute
    eager_trainer, eager = on_gpu("eager")
    trainer, captured = on_gpu("cuda_graph")

    # Assert: the graphs replayed, and the clients equal the eager ones to float64 rounding
    assert trainer.captured and eager_trainer.graphs is None
    for ra, rb in zip(eager, captured, strict=True):
        for a, b in zip(ra, rb, strict=True):
            assert (a.params - b.params).abs().max().item() <= 1e-10
            assert a.buffers.numel() == 0 or (a.buffers - b.buffers).abs().max().item() <= 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sync", [False, True], ids=["captured", "host-read"])
def test_on_a_gpu_a_capture_gives_the_current_stream_back(sync):
    # Prepare: a step that reads a value on the host while it is captured (not permitted: the capture fails), or not
    state = torch.zeros(4, device="cuda")

    def step():
        state.add_(1.0)
        if sync and torch.cuda.is_current_stream_capturing():
            state.sum().item()

    before = torch.cuda.current_stream()

    # Execute
    if sync:
        with pytest.raises(RuntimeError):
            capture_mod.cuda_graph(step)
    else:
        capture_mod.cuda_graph(step)()

    # Assert: the stream current before is current again (torch's graph context leaves its capture stream current
    # where ending the failed capture raises), after the warm-up's two runs (and the replay's)
    assert torch.cuda.current_stream() == before
    assert torch.equal(state.cpu(), torch.full((4,), 2.0 if sync else 3.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sync", [True, False], ids=["host-read", "captured"])
def test_on_a_gpu_a_failed_capture_leaves_later_captures_and_random_draws_working(sync):
    # Prepare: a step that reads a value on the host while it is captured (the capture fails), or not, and one that
    # does not, each captured into a pool of its own (torch 2.11 leaves a failed capture's pool recording in its host
    # allocator, where nothing ends it)
    state = torch.zeros(4, device="cuda")

    def first():
        state.add_(1.0)
        if sync and torch.cuda.is_current_stream_capturing():
            state.sum().item()

    def second():
        state.mul_(2.0)

    # Execute: the first capture, the second and its replay, then an eager draw from the CUDA generator (torch 2.11
    # refused it after a failed capture until a capture succeeded)
    if sync:
        with pytest.raises(RuntimeError):
            capture_mod.cuda_graph(first, torch.cuda.graph_pool_handle())
    else:
        capture_mod.cuda_graph(first, torch.cuda.graph_pool_handle())
    replay = capture_mod.cuda_graph(second, torch.cuda.graph_pool_handle())
    state.fill_(1.0)
    replay()
    drawn = torch.rand(1, device="cuda")

    # Assert: the second step captured, and its replay computes it
    assert torch.equal(state.cpu(), torch.full((4,), 2.0))
    assert 0.0 <= drawn.item() < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_a_trainers_later_shapes_capture_after_one_failed(monkeypatch):
    # Prepare: torch's graphs of one trainer, every shape captured when first planned; the steps of lr 0.1 read a
    # value on the host while they are captured (their capture fails), those of 0.2 and 0.3 do not
    monkeypatch.setattr(capture_mod, "STACKED_CAPTURE_MIN_STEPS", 1)
    graphs = StackedStepGraphs()
    state = torch.zeros(1, dtype=torch.float64, device="cuda")
    plan = [key_of(0.1), key_of(0.2), key_of(0.3), key_of(0.2), key_of(0.3)]

    def steps_of(key):
        def step_of(static):
            def step():
                state.add_(static[0])
                if key.lr == 0.1 and torch.cuda.is_current_stream_capturing():
                    state.sum().item()
            return step
        return step_of

    # Execute: the shapes' steps, replayed where a graph was kept, else eager
    graphs.begin_round()
    graphs.plan(plan)
    for key in plan:
        step_of = steps_of(key)
        inputs = (torch.tensor([key.lr], dtype=torch.float64, device="cuda"),)
        if not graphs.run(key, inputs, step_of, [state]):
            step_of(inputs)()
    drawn = torch.rand(1, device="cuda")

    # Assert: lr 0.1's shape refused, the later shapes captured (into a fresh pool) and replayed, every
    # step computed as an eager one; eager random draws work
    assert graphs.refused == {key_of(0.1)} and set(graphs.graphs) == {key_of(0.2), key_of(0.3)}
    assert graphs.replays == 4 and graphs.refusals == 1
    assert state.item() == pytest.approx(0.1 + 0.2 + 0.3 + 0.2 + 0.3, abs=1e-12)
    assert 0.0 <= drawn.item() < 1.0


def test_chunk_states_are_kept_only_where_graphs_replay_into_them_and_go_with_the_trainer():
    # Prepare and Execute: an eager trainer (no graphs on a CPU) and one with graphs, both closed after their rounds
    eager, _, _ = rounds(model_of("cnn_small"), TrainConfig(**CFG))
    captured, _, _ = rounds(model_of("cnn_small"), TrainConfig(**CFG), make_graph=stand_in)
    kept = set(captured._states)
    eager.close()
    captured.close()

    # Assert: the eager trainer frees each chunk's state with the chunk, as before graphs; the other keeps one per
    # chunk size (4 clients here) until it is closed
    assert eager._states == {} and kept == {4} and captured._states == {}


def test_dropping_shapes_forgets_their_graphs_refusals_checks_and_counts():
    # Prepare: a trainer whose graphs captured the recurring shape
    trainer, _, _ = rounds(model_of("cnn_small"), TrainConfig(**CFG), make_graph=stand_in, num_rounds=1)
    graphs = trainer.graphs
    graphs.refused.add((9, 1, 8, False, 0.05))
    assert graphs.graphs and graphs.planned and graphs.difference

    # Execute
    graphs.drop(lambda key: key[0] == 4)

    # Assert: the chunk size's shapes are gone, the other chunk size's refusal stays
    assert graphs.graphs == {} and graphs.difference == {} and not any(k[0] == 4 for k in graphs.planned)
    assert graphs.refused == {(9, 1, 8, False, 0.05)}


@pytest.mark.parametrize("algorithm", ["scaffold", "fedprox"])
def test_a_trainer_kept_for_a_new_run_replays_no_graph_of_the_old_runs_rows(algorithm):
    # Prepare: a run of two rounds with one trainer, then its strategy set up for a new run from the same start (as
    # `run_federated` does with a trainer passed in), against a new strategy and trainer
    cfg = TrainConfig(**CFG)
    model = model_of("cnn_small")
    trainer, _, _ = rounds(model, cfg, make_graph=stand_in, algorithm=algorithm)
    _, reference, _ = rounds(model_of("cnn_small"), cfg, make_graph=stand_in, algorithm=algorithm)
    strategy, data = trainer.strategy, trainer.data
    params, buffers = FlatParams(model).get(), flatten_buffers(model)

    # Execute: the new run's two rounds on the kept trainer
    strategy.setup(data.num_clients, params.numel(), params.device, model=model, seed=0)
    again = []
    for r in (1, 2):
        again.append(trainer.train_round(params, buffers, list(range(data.num_clients)), r))
        params = strategy.server_update(params, again[-1])

    # Assert: the new run equals a fresh one bit for bit (SCAFFOLD's replays read the new run's control variates,
    # not the old run's rows), and its recurring shapes were captured anew
    assert same(again, reference)
    assert trainer.captured and trainer.graphs.graphs
