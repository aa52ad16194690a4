"""MOON's reference models (the round's global model, each client's previous local model) in eval mode with their
own batch-norm statistics, as MOON's code (Li et al. 2021, github.com/QinbinLi/MOON main.py) runs them, beside the
default train mode of the FedAlign code (Mendieta et al. 2022, methods/moon.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers.configs import DEFAULT, SCHEMA
from helpers.resume import killed_after_round
from helpers.tiny import tiny_data

from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.fl.engine import run_federated
from fedscape.fl.hparams.moon import MoonConfig
from fedscape.fl.hparams.registry import algorithm_config
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.base import ClientContext
from fedscape.fl.strategies.moon import moon_contrastive_loss
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import resolve_client_parallel
from fedscape.models.params import flatten_params, load_buffers, load_params
from fedscape.models.registry import build_model
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread

HEADS = [{}, {"head": "projection"}]  # side (the default) and the classifier on the head
# the default config's run grid (not its experiments and analyses, which name its algorithm labels)
GRID_KEYS = ("datasets", "models", "model_options", "inits", "alphas", "num_clients", "participation", "seeds",
             "partition", "training")


def moon_config(**moon) -> dict:
    """The default config's grid with one algorithm label: MOON with `moon`'s hyperparameters."""
    config_ = copy.deepcopy({k: v for k, v in DEFAULT.items() if k in GRID_KEYS})
    config_["algorithms"] = {"moon": {"name": "moon", **moon}}
    return config_


def model_of(norm: str | None = None, seed: int = 0) -> torch.nn.Module:
    """cnn_small on 8x8 images: no batch norm (and no dropout) by default, batch norm after each conv with
    norm="batch" (the cheapest batch-norm model of the registry)."""
    torch.manual_seed(seed)
    return build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, **({"norm": norm} if norm else {}))


def config(**train) -> TrainConfig:
    """4 clients, half of them sampled per round: some clients train twice, some once, some never."""
    base = {"rounds": 3, "local_epochs": 1, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "seed": 1,
            "participation": 0.5, "client_parallel": "sequential"}
    return TrainConfig(**{**base, **train})


def moon_run(norm: str | None, hparams: dict, cfg: TrainConfig, seed: int = 0, **progress):
    """(MOON's run, its strategy) from cnn_small's initial weights of `seed`."""
    moon = make_strategy("moon", {"mu": 2.0, **hparams})
    return run_federated(moon.prepare_model(model_of(norm, seed), cfg.seed), tiny_data(4, 160), moon, cfg,
                         **progress), moon


# -- the hyperparameter -----------------------------------------------------------------------------------
def test_the_default_is_train_mode_and_a_bad_mode_is_refused_with_the_valid_ones():
    # Execute / Assert: train (the baseline) by default; eval as MOON's code; anything else named with the choices
    assert MoonConfig().reference_mode == "train"
    assert algorithm_config("moon", {"reference_mode": "eval"}).reference_mode == "eval"
    with pytest.raises(ValueError, match=r"reference_mode: expected one of train, eval \(e.g. its default 'train'\), "
                                         r"got 'evaluation'"):
        algorithm_config("moon", {"reference_mode": "evaluation"})
    with pytest.raises(ValueError, match="unknown MOON reference mode 'evl'. Did you mean 'eval'"):
        MoonConfig(reference_mode="evl")


@pytest.mark.parametrize(("hparams", "expected"), [({}, None), ({"reference_mode": "train"}, "train"),
                                                   ({"reference_mode": "eval"}, "eval")])
def test_the_train_job_carries_the_mode_only_where_the_config_spells_it(hparams, expected):
    # Prepare: the default config's grid, its first run trained by MOON
    config_ = check_config(moon_config(**hparams), SCHEMA)
    run = build_runs(config_)[0]

    # Execute
    settings = train_settings(config_, run)

    # Assert: a config without it plans the settings MOON's finished jobs have (no new key: nothing reruns)
    assert settings["hyperparameters"].get("reference_mode") == expected
    assert ("reference_mode" in settings["hyperparameters"]) == bool(hparams)


# -- what eval mode computes ------------------------------------------------------------------------------
@pytest.mark.parametrize("hparams", HEADS)
def test_without_batch_norm_eval_mode_trains_exactly_as_train_mode(hparams):
    # Prepare: cnn_small without batch norm or dropout: the modes compute the same function
    cfg = config(save_clients_at=(3,))

    # Execute
    train, _ = moon_run(None, hparams, cfg)
    evaluated, moon = moon_run(None, {**hparams, "reference_mode": "eval"}, cfg)

    # Assert: bit for bit, every round's global model and the last round's clients
    assert torch.equal(evaluated.params, train.params)
    assert torch.equal(evaluated.clients[3].params, train.clients[3].params)
    assert [r["test_loss"] for r in evaluated.rows] == [r["test_loss"] for r in train.rows]
    assert moon.prev_buffers.num_params == 0  # no floating buffers to keep


@pytest.mark.parametrize("hparams", HEADS)
def test_with_batch_norm_eval_mode_departs_from_train_mode(hparams):
    # Execute
    train, _ = moon_run("batch", hparams, config(rounds=2))
    evaluated, _ = moon_run("batch", {**hparams, "reference_mode": "eval"}, config(rounds=2))

    # Assert: the same start; apart after round 2, the first whose references differ (in round 1 both are the
    # initial model, which leaves the contrastive term's gradient zero up to rounding: 3e-8 apart). Measured: the
    # modes' round-2 models 0.010 (side) and 0.030 (projection) apart, round 2's update 0.07 and 0.06 at most
    assert torch.equal(evaluated.params[0], train.params[0])
    assert not torch.allclose(evaluated.params[2], train.params[2], rtol=0, atol=1e-3)


@pytest.mark.parametrize(("mode", "training"), [("train", True), ("eval", False)])
@pytest.mark.parametrize("hparams", HEADS)
def test_the_references_keep_the_local_model_s_mode_in_train_mode_and_are_in_eval_mode_otherwise(hparams, mode,
                                                                                                 training):
    # Prepare: a batch-norm model in train mode, as local training has it
    moon = make_strategy("moon", {**hparams, "reference_mode": mode})
    model = moon.prepare_model(model_of("batch"))
    moon.setup(4, sum(p.numel() for p in model.parameters()), torch.device("cpu"), model=model)
    x = torch.zeros(2, 1, 8, 8)
    ctx = ClientContext(1, 0, flatten_params(model), x, torch.zeros(2, dtype=torch.long), torch.Generator())

    # Execute
    moon.begin_local(model.train(), ctx)

    # Assert: every module of both references in the local model's mode, resp. in eval mode; requires_grad off
    for ref in (moon._global_model, moon._prev_model):
        assert {m.training for m in ref.modules()} == {training}
        assert not any(p.requires_grad for p in ref.parameters())
    assert (moon.prev_buffers is None) == training  # the clients' buffers are kept in eval mode only


def last_trained(result, client: int) -> int | None:
    """The last round whose saved clients include `client` (None: it never trained)."""
    rounds = [r for r, c in sorted(result.clients.items()) if client in c.client_ids.tolist()]
    return rounds[-1] if rounds else None


def reference(model: torch.nn.Module, params: torch.Tensor, buffers: torch.Tensor) -> torch.nn.Module:
    """A copy of `model` with `params` and `buffers`, in eval mode (MOON's code: .eval(), requires_grad False)."""
    ref = copy.deepcopy(model)
    load_params(ref, params)
    load_buffers(ref, buffers)
    return ref.eval().requires_grad_(False)


@torch.no_grad()
def hand_built_loss(moon, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, client: int,
                    glob: tuple[torch.Tensor, torch.Tensor], prev: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """MOON's local loss (mu 2, temperature 0.5) of `model` (in train mode) on (x, y), written out with references
    built here: the global model `glob` and the client's previous one `prev` (each (params, buffers)) in eval mode;
    with the side head, the round's global head and the client's previous one, from the strategy."""
    g, p = reference(model, *glob), reference(model, *prev)
    if moon.projection:  # the model's features are the head's output
        z, z_g, z_p = model.forward_features(x), g.forward_features(x), p.forward_features(x)
        logits = model.classifier(z)
    else:
        h, h_g, h_p = (copy.deepcopy(moon.head) for _ in range(3))
        load_params(h, moon.head_global)
        load_params(h_g, moon.head_global)
        load_params(h_p, moon.prev_heads.get(client, "cpu"))
        features = model.forward_features(x)
        z, z_g, z_p = h(features), h_g(g.forward_features(x)), h_p(p.forward_features(x))
        logits = model.classifier(features)
    return F.cross_entropy(logits, y) + 2.0 * moon_contrastive_loss(z, z_g, z_p, 0.5)


@pytest.mark.parametrize("hparams", HEADS)
def test_each_previous_reference_normalises_with_its_client_s_own_statistics(hparams):
    # Prepare: 2 rounds in eval mode with every round's clients saved; then the third round's local loss on a batch
    # for a client that trained and one that did not
    cfg = config(rounds=2, save_clients_at=(1, 2))
    result, moon = moon_run("batch", {**hparams, "reference_mode": "eval"}, cfg)
    model = moon.prepare_model(model_of("batch"), cfg.seed)
    glob = (result.params[-1], result.buffers[-1])
    data = tiny_data(4, 160)
    trained = {c: last_trained(result, c) for c in range(4)}
    assert {r is None for r in trained.values()} == {True, False}  # both kinds of client are there
    for client, round_ in trained.items():
        if round_ is None:  # the initial model, buffers included
            prev = (result.params[0], result.buffers[0])
        else:  # the client's model at the end of its last local training, buffers included
            clients = result.clients[round_]
            i = clients.client_ids.tolist().index(client)
            prev = (clients.params[i], clients.buffers[i])
        assert torch.equal(moon.prev_buffers.get(client, "cpu"), prev[1])
        idx = data.client_indices[client][:8]
        x, y = data.x_train[idx], data.y_train[idx]
        load_params(model, glob[0])
        load_buffers(model, glob[1])
        ctx = ClientContext(3, client, glob[0], x, y, torch.Generator())

        # Execute
        moon.begin_local(model.train(), ctx)
        with torch.no_grad():
            loss = moon.local_loss(model, x, y, ctx)

        # Assert: the loss written out with hand-built references (the same operations on the same inputs); the
        # global buffers in a trained client's previous model give another loss
        assert torch.equal(loss, hand_built_loss(moon, model, x, y, client, glob, prev))
        if round_ is not None:
            other = hand_built_loss(moon, model, x, y, client, glob, (prev[0], glob[1]))
            assert not torch.allclose(other, loss, rtol=1e-4, atol=0)


# -- resume and the vectorised path -----------------------------------------------------------------------
@pytest.mark.parametrize("hparams", HEADS)
def test_eval_mode_resumes_bit_identically(tmp_path, monkeypatch, hparams):
    # Prepare: batch norm, half of the clients per round, killed after round 2 of 4
    cfg = config(rounds=4)
    hparams = {**hparams, "reference_mode": "eval"}
    reference_run, _ = moon_run("batch", hparams, cfg)
    killed_after_round(monkeypatch, 2, lambda: moon_run("batch", hparams, cfg, progress_dir=tmp_path,
                                                        progress_key="k"))
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["strategy"]["prev_buffers"]["ids"].numel() > 0  # the clients' buffers are in the saved state

    # Execute: another model's weights to start from, overwritten by the saved state
    resumed, _ = moon_run("batch", hparams, cfg, seed=5, progress_dir=tmp_path, progress_key="k")

    # Assert
    assert torch.equal(resumed.params, reference_run.params)
    assert torch.equal(resumed.buffers, reference_run.buffers)


@pytest.mark.parametrize("hparams", HEADS)
def test_train_mode_s_saved_state_keeps_its_keys(hparams):
    # Execute
    _, moon = moon_run("batch", hparams, config(rounds=1))

    # Assert: nothing more to keep in train mode (its progress files as before)
    expected = {"server_opt", "prev"} | ({"head_global", "prev_heads"} if not hparams else set())
    assert set(moon.state_dict()) == expected and moon.prev_buffers is None


@pytest.mark.parametrize("client_parallel", ["vectorized", "auto"])
def test_eval_mode_trains_sequentially_and_an_explicit_vectorized_is_refused(client_parallel):
    # Prepare: MOON's stacked step has no eval-mode references (their per-client running statistics), so that mode
    # trains one client after another even with the projection head, on the ResNets
    config_ = moon_config(reference_mode="eval", head="projection")
    config_["training"]["client_parallel"] = client_parallel
    moon = make_strategy("moon", {"reference_mode": "eval", "head": "projection"})

    # Execute / Assert: refused at planning; auto trains one client after another
    if client_parallel == "vectorized":
        with pytest.raises(ConfigError, match="training.client_parallel: vectorized trains stacked clients' batches, "
                                              "but algorithm moon .moon. needs reference_mode train"):
            check_config(config_, SCHEMA)
        with pytest.raises(ValueError, match="algorithm 'moon'"):
            resolve_client_parallel(model_of("batch"), moon, TrainConfig(client_parallel="vectorized"))
        return
    check_config(config_, SCHEMA)
    assert resolve_client_parallel(model_of("batch"), moon, TrainConfig(), device_type="cuda") == "sequential"


def moon_eval_run_on(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rounds of MOON in eval mode with batch norm on `device`: the last global parameters and buffers (CPU)."""
    cfg = config(rounds=2, precision="fp32")
    moon = make_strategy("moon", {"mu": 2.0, "reference_mode": "eval"})
    model = moon.prepare_model(model_of("batch"), cfg.seed).to(device)
    data = tiny_data(4, 160)
    data = type(data)(data.x_train.to(device), data.y_train.to(device), [ix.to(device) for ix in data.client_indices],
                      data.x_test.to(device), data.y_test.to(device))
    result = run_federated(model, data, moon, cfg)
    return result.params[-1].cpu(), result.buffers[-1].cpu()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_eval_mode_with_batch_norm_trains_on_a_gpu_as_on_the_cpu(float64_default):
    # Prepare and Execute: in float64, where the card's kernels differ from the CPU's by their summation order only
    cpu, gpu = moon_eval_run_on("cpu"), moon_eval_run_on("cuda")

    # Assert: the global model and its running statistics (the per-client previous statistics went into it)
    assert (cpu[0] - gpu[0]).abs().max().item() <= 1e-9
    assert ((cpu[1] - gpu[1]).abs() / (1 + cpu[1].abs())).max().item() <= 1e-9
