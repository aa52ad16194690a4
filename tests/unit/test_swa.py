"""Server-side SWA (Caldarola et al. 2022; Izmailov et al. 2018): the cyclical lr, the running mean of the
global models, its reduction to the plain run, vectorised training and resume."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers.resume import killed_after_round
from helpers.tiny import tiny_data, tiny_model

from fedscape.core.config import ConfigError, load_schema
from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import build_runs
from fedscape.fl.engine import make_trainer, run_federated
from fedscape.fl.settings import CODE_VERSION, ROUNDS_COLUMNS, TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.swa import (
    SWA_BN_COLUMN,
    SWA_METRICS,
    SWAConfig,
    SWAModel,
    check_swa,
    partial_cycle_warning,
    swa_config,
)
from fedscape.models.checkpoint import load_trajectory
from fedscape.models.params import FlatParams, flatten_params
from fedscape.outputs.tables import concat_tables
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.tables import rounds_columns, swa_bn_models
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config, config_warnings
from fedscape.report.summary import final_table_job
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
METRICS = ("round", "train_loss", "train_acc", "test_loss", "test_acc", "status")


def cfg_of(**kw) -> TrainConfig:
    return TrainConfig(**{"rounds": 6, "local_epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.5, "seed": 3,
                          "client_parallel": "sequential", **kw})


# -- the schedule ---------------------------------------------------------------------------------------------
def test_cyclical_lr_matches_hand_computation():
    # Prepare: start 3, cycles of 4 rounds from lr_max down to 0.01 lr_max, 10 rounds
    swa = SWAConfig(start_round=3, cycle=4, lr_ratio=0.01)

    # Execute
    factors = [swa.lr_factor(t, 10) for t in range(1, 11)]
    ends = [t for t in range(1, 11) if swa.averages_after(t, 10)]

    # Assert: j/c = 1/4, 2/4, 3/4, 1 in rounds 3..6 and 7..10: (1 - j/c) + (j/c) 0.01
    hand = [1.0, 1.0, 0.7525, 0.505, 0.2575, 0.01, 0.7525, 0.505, 0.2575, 0.01]
    assert factors == pytest.approx(hand, abs=1e-15)
    assert ends == [6, 10]


@pytest.mark.parametrize(("rounds", "start"), [(20, 16), (100, 76), (4, 4), (1, 1)])
def test_default_start_is_the_last_quarter(rounds, start):
    assert SWAConfig().start(rounds) == start


def test_cycle_of_one_averages_every_round_at_the_low_rate():
    swa = SWAConfig(start_round=2, cycle=1, lr_ratio=0.1)

    assert [swa.lr_factor(t, 4) for t in range(1, 5)] == [1.0, 0.1, 0.1, 0.1]
    assert [swa.averages_after(t, 4) for t in range(1, 5)] == [False, True, True, True]


# -- the running mean -------------------------------------------------------------------------------------------
def test_running_mean_of_three_known_models_is_their_average():
    # Prepare: three global models (parameters and batch-norm statistics) whose running mean is exact in float32
    models = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 4.0, 0.5]), torch.tensor([6.0, 1.0, 2.0])]
    buffers = [torch.tensor([1.0, 0.5]), torch.tensor([4.0, 0.5]), torch.tensor([1.0, 2.0])]
    swa = SWAModel()

    # Execute
    for r, w, b in zip((4, 6, 8), models, buffers, strict=True):
        swa.update(r, w, b)

    # Assert: (1 + 2 + 6) / 3 = 3, (-2 + 4 + 1) / 3 = 1, (0.5 + 0.5 + 2) / 3 = 1; the statistics alike:
    # (1 + 4 + 1) / 3 = 2, (0.5 + 0.5 + 2) / 3 = 1
    assert torch.equal(swa.params, torch.tensor([3.0, 1.0, 1.0]))
    assert torch.equal(swa.buffers, torch.tensor([2.0, 1.0]))
    assert swa.count == 3 and swa.rounds == [4, 6, 8]
    assert torch.equal(models[0], torch.tensor([1.0, -2.0, 0.5]))  # inputs untouched


def test_swa_model_of_a_run_is_the_mean_of_its_cycle_end_global_models():
    # Prepare: lr_ratio 1 leaves the lr alone, so the global models are the plain run's
    data, cfg = tiny_data(), cfg_of(rounds=6)
    plain = run_federated(tiny_model(), data, make_strategy("fedavg"), cfg)

    # Execute: cycles of 2 rounds from round 1: SWA takes the global models of rounds 2, 4 and 6
    result = run_federated(tiny_model(), data, make_strategy("fedavg"), cfg,
                           swa=SWAConfig(start_round=1, cycle=2, lr_ratio=1.0))

    # Assert
    assert torch.equal(result.params, plain.params)
    hand = (plain.params[2].double() + plain.params[4].double() + plain.params[6].double()) / 3
    assert torch.allclose(result.swa["params"].double(), hand, atol=1e-6)
    assert result.swa["count"] == 3 and result.swa["rounds"] == [2, 4, 6]
    assert [r["swa_models"] for r in result.rows] == [0, 0, 1, 1, 2, 2, 3]
    assert math.isnan(result.rows[1]["swa_test_acc"]) and not math.isnan(result.rows[2]["swa_test_acc"])
    assert result.rows[3]["swa_test_acc"] == result.rows[2]["swa_test_acc"]  # unchanged between cycle ends


# -- reduction to the plain run ----------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["fedavg", "fedsam"])
@pytest.mark.parametrize("scheduled", ["client", "server"])
def test_swa_starting_after_the_last_round_is_exactly_the_plain_run(algorithm, scheduled):
    # Prepare
    data, cfg = tiny_data(), cfg_of(rounds=4)
    plain = run_federated(tiny_model(), data, make_strategy(algorithm), cfg)

    # Execute
    result = run_federated(tiny_model(), data, make_strategy(algorithm), cfg,
                           swa=SWAConfig(start_round=5, cycle=2, scheduled_lr=scheduled))

    # Assert
    assert torch.equal(result.params, plain.params)
    assert [{k: r[k] for k in METRICS} for r in result.rows] == [{k: r[k] for k in METRICS} for r in plain.rows]
    assert result.swa is None and all(r["swa_models"] == 0 for r in result.rows)
    assert all(math.isnan(r["swa_test_acc"]) for r in result.rows)


# -- which lr is scheduled ----------------------------------------------------------------------------------------
def _recorded_lrs(cfg: TrainConfig, swa: SWAConfig, algorithm: str = "fedavg") -> tuple[list[float], list[float]]:
    """(client lr seen by the trainer, server lr seen by the server step) in each round of a run."""
    model, data, strategy = tiny_model(), tiny_data(), make_strategy(algorithm)
    trainer = make_trainer(model, FlatParams(model), data, strategy, cfg)
    client, server = [], []
    train_round, server_update = trainer.train_round, strategy.server_update

    def record_client(*args):
        client.append(trainer.cfg.lr)
        return train_round(*args)

    def record_server(*args):
        server.append(strategy.server_opt.lr)
        return server_update(*args)

    trainer.train_round, strategy.server_update = record_client, record_server
    run_federated(model, data, strategy, cfg, trainer=trainer, swa=swa)
    assert trainer.cfg.lr == cfg.lr  # restored after the run
    return client, server


@pytest.mark.parametrize("parallel", ["sequential", "vectorized"])
def test_client_schedule_sets_the_trainers_lr_each_round(parallel):
    cfg = cfg_of(rounds=5, lr=0.2, client_parallel=parallel)

    client, server = _recorded_lrs(cfg, SWAConfig(start_round=2, cycle=2, lr_ratio=0.5))

    # factors 1, 0.75, 0.5, 0.75, 0.5 of lr 0.2
    assert client == pytest.approx([0.2, 0.15, 0.1, 0.15, 0.1], abs=1e-15)
    assert server == [1.0] * 5


def test_server_schedule_scales_the_server_lr_of_any_server_optimiser():
    cfg = cfg_of(rounds=4)

    client, server = _recorded_lrs(cfg, SWAConfig(start_round=3, cycle=2, lr_ratio=0.1, scheduled_lr="server"),
                                   algorithm="fedadam")

    assert client == [0.1] * 4
    assert server == pytest.approx([0.01, 0.01, 0.01 * 0.55, 0.001], abs=1e-15)  # FedAdam's server lr 0.01


def test_vectorized_and_sequential_swa_runs_agree():
    data = tiny_data()
    swa = SWAConfig(start_round=2, cycle=2, lr_ratio=0.1)
    runs = {p: run_federated(tiny_model(), data, make_strategy("fedprox"), cfg_of(client_parallel=p), swa=swa)
            for p in ("sequential", "vectorized")}

    assert torch.allclose(runs["vectorized"].params, runs["sequential"].params, atol=1e-5)
    assert torch.allclose(runs["vectorized"].swa["params"], runs["sequential"].swa["params"], atol=1e-5)


# -- resume -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kill_after", [2, 3, 5])
def test_resume_after_a_kill_gives_the_same_swa_model(tmp_path, monkeypatch, kill_after):
    # Prepare: cycle ends at rounds 3 and 5; killed before, at and after the first
    data, cfg = tiny_data(), cfg_of(rounds=6)
    swa = SWAConfig(start_round=2, cycle=2, lr_ratio=0.1)
    reference = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg, swa=swa)
    killed_after_round(monkeypatch, kill_after, lambda: run_federated(
        tiny_model(), data, make_strategy("fedavgm"), cfg, progress_dir=tmp_path, progress_key="k", swa=swa))

    # Execute
    resumed = run_federated(tiny_model(seed=9), data, make_strategy("fedavgm"), cfg, progress_dir=tmp_path,
                            progress_key="k", swa=swa)

    # Assert
    assert torch.equal(resumed.params, reference.params)
    assert torch.equal(resumed.swa["params"], reference.swa["params"])
    assert resumed.swa["count"] == reference.swa["count"] == 2
    for got, want in zip(resumed.rows, reference.rows, strict=True):
        assert {k: got[k] for k in (*METRICS, *SWA_METRICS)} == pytest.approx(
            {k: want[k] for k in (*METRICS, *SWA_METRICS)}, nan_ok=True)


# -- settings -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "match"), [
    ({"cycles": 2}, "unknown swa key 'cycles'.*cycle"),
    ({"cycle": 0}, "swa.cycle must be an integer >= 1"),
    ({"cycle": 2.5}, "swa.cycle must be an integer >= 1"),
    ({"start_round": 0}, "swa.start_round must be an integer >= 1 or null"),
    ({"lr_ratio": 0}, r"swa.lr_ratio must be a number in \(0, 1\]"),
    ({"lr_ratio": 1.5}, r"swa.lr_ratio must be a number in \(0, 1\]"),
    ({"scheduled_lr": "clients"}, "swa.scheduled_lr must be one of client, server"),
    ([1, 2], "swa must be a mapping"),
])
def test_bad_swa_settings_are_rejected_naming_the_key(value, match):
    with pytest.raises(ValueError, match=match):
        swa_config(value)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ({}, SWAConfig()),
    ({"start_round": 3, "cycle": 2, "lr_ratio": 1, "scheduled_lr": "server"},
     SWAConfig(start_round=3, cycle=2, lr_ratio=1, scheduled_lr="server")),
])
def test_good_swa_settings_are_read(value, expected):
    assert swa_config(value) == expected


@pytest.mark.parametrize(("swa", "rounds", "ok"), [
    (SWAConfig(start_round=16, cycle=5), 20, True),  # one full cycle: 16..20
    (SWAConfig(start_round=17, cycle=5), 20, False),  # starts but never ends a cycle
    (SWAConfig(start_round=21, cycle=5), 20, True),  # after the last round: the plain run
    (SWAConfig(cycle=10), 20, False),  # the default start (16) and the paper's cycle of 10
])
def test_a_swa_phase_without_a_complete_cycle_is_an_error(swa, rounds, ok):
    if ok:
        check_swa(swa, rounds)
    else:
        with pytest.raises(ValueError, match="no SWA model would be formed"):
            check_swa(swa, rounds)


# -- the train stage, its files and the tables ---------------------------------------------------------------------
def _swa_config(swa: dict | None = None) -> dict:
    raw = yaml.safe_load(TINY.read_text())
    config = {key: raw[key] for key in ("datasets", "models", "num_clients", "partition", "training")}
    algorithms = {"fedavg": {"name": "fedavg"}}
    if swa is not None:
        algorithms["fedavg_swa"] = {"name": "fedavg", "training": {"swa": swa}}
    config.update(inits={"random": {"kind": "random", "seed": 0}}, algorithms=algorithms, alphas=["iid"], seeds=[0],
                  participation=[1.0])
    config["training"] = {**config["training"], "rounds": 3, "save_clients_at": [], "device": "cpu"}
    return config


def _problems(config: dict) -> str:
    try:
        check_config(config, SCHEMA)
    except ConfigError as exc:
        return str(exc)
    return ""


def test_train_stage_writes_both_models_and_reports_the_swa_model(tmp_path):
    # Prepare: lr_ratio 1 keeps the lr, so the SWA run's global models are the plain run's
    config = _swa_config({"start_round": 2, "cycle": 1, "lr_ratio": 1.0})
    assert _problems(config) == ""
    runs = {run.algorithm: run for run in build_runs(config)}
    run = runs["fedavg"]
    partition, init = tmp_path / "partition.npz", tmp_path / "init.pt"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                    tmp_path / "counts.csv")
    init_job(init_settings(config, list(runs.values()), run.dataset, run.model, run.init), init)
    outputs = {}
    for label, r in runs.items():
        outputs[label] = {name: str(tmp_path / label / file) for name, file in TRAIN_FILE_NAMES.items()}

        # Execute
        train_job(train_settings(config, r), partition, init, outputs[label], tmp_path / label / "_progress")

    # Assert: the plain run's files are as without SWA
    plain, swa = (load_trajectory(outputs[k]["trajectory"]) for k in ("fedavg", "fedavg_swa"))
    assert not plain.has_swa and "swa" not in plain.meta
    assert list(pd.read_csv(outputs["fedavg"]["metrics"]).columns) == [*ROUNDS_COLUMNS, CODE_VERSION]
    assert "swa" not in train_settings(config, run)["training"]
    without = _swa_config(None)
    check_config(without, SCHEMA)
    assert train_settings(config, run) == train_settings(without, run)
    # the SWA run: the global trajectory unchanged, the SWA model the mean of rounds 2 and 3 and its final model
    assert torch.equal(swa.params, plain.params)
    assert torch.allclose(swa.swa_params, (plain.params[2] + plain.params[3]) / 2, atol=1e-6)
    assert swa.swa_rounds == (2, 3)
    assert swa.meta["swa"] == {"start_round": 2, "cycle": 1, "lr_ratio": 1.0, "scheduled_lr": "client", "models": 2,
                               "rounds": [2, 3]}
    assert torch.equal(swa.point(3)[0], swa.swa_params) and torch.equal(swa.point(2)[0], swa.params[2])
    assert torch.equal(flatten_params(swa.model_at(3)), swa.swa_params)
    metrics = pd.read_csv(outputs["fedavg_swa"]["metrics"])
    assert list(metrics.columns) == [*ROUNDS_COLUMNS, *SWA_METRICS, CODE_VERSION]
    assert metrics["swa_models"].tolist() == [0, 0, 1, 2]
    assert metrics["test_acc"].tolist() == pd.read_csv(outputs["fedavg"]["metrics"])["test_acc"].tolist()
    # rounds.csv holds both; final.csv reports the SWA model of the SWA run and the global model of the other
    rounds_csv, final_csv = tmp_path / "rounds.csv", tmp_path / "final.csv"
    concat_tables([outputs[k]["metrics"] for k in runs], rounds_csv, rounds_columns(config, list(runs.values())),
                  SWA_METRICS)
    table = pd.read_csv(rounds_csv)
    assert table[table["algorithm"] == "fedavg"]["swa_test_acc"].isna().all()
    final_table_job(rounds_csv, final_csv)
    final = pd.read_csv(final_csv).set_index("algorithm")
    assert final.loc["fedavg_swa", "test_acc"] == metrics["swa_test_acc"].iloc[-1]
    assert final.loc["fedavg_swa", "train_loss"] == metrics["swa_train_loss"].iloc[-1]
    assert final.loc["fedavg", "test_acc"] == metrics["test_acc"].iloc[-1]


@pytest.mark.parametrize("swa_overflowed", [False, True])
def test_a_consecutive_layer_pair_compares_global_models_at_the_last_round_of_a_swa_run(tmp_path, swa_overflowed):
    from fedscape.analysis.barriers.stage import layer_barriers_job
    from fedscape.models.checkpoint import save_trajectory
    from fedscape.plan.barriers import layer_pair, layer_settings

    # Prepare: a 3-round SWA run (its final model is the SWA model) and a pair of its consecutive global models
    config = _swa_config({"start_round": 1, "cycle": 1})
    config["layer_barriers"] = {"modes": ["single", "shallow"],
                                "pairs": {"sweep": {"run": {"algorithm": "fedavg_swa"}, "consecutive": True}}}
    check_config(config, SCHEMA)
    run = next(r for r in build_runs(config) if r.algorithm == "fedavg_swa")
    partition, init = tmp_path / "partition.npz", tmp_path / "init.pt"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                  tmp_path / "counts.csv")
    init_job(init_settings(config, [run], run.dataset, run.model, run.init), init)
    outputs = {name: str(tmp_path / "run" / file) for name, file in TRAIN_FILE_NAMES.items()}
    train_job(train_settings(config, run), partition, init, outputs, tmp_path / "run" / "_progress")
    traj = load_trajectory(outputs["trajectory"])
    if swa_overflowed:  # an SWA model that is not finite, beside finite global models: it is not the pair's
        save_trajectory(outputs["trajectory"], traj.params, traj.buffers, traj.rounds, traj.model_meta, traj.meta,
                        swa={"params": torch.full_like(traj.swa_params, float("inf")), "buffers": traj.swa_buffers,
                             "rounds": traj.swa_rounds})
        traj = load_trajectory(outputs["trajectory"])
    pair = layer_pair(config, [run], "sweep")

    # Execute: rounds t = 2 and t + 1 = 3, the last
    layer_barriers_job(layer_settings(config, pair, 2), {"partition": partition, "trajectory_a": outputs["trajectory"]},
                       tmp_path / "barriers.csv", tmp_path / "distances.csv")

    # Assert: the whole model's distance is that of the global models of rounds 2 and 3, not of the SWA model
    whole = pd.read_csv(tmp_path / "distances.csv").query("layer_index == -1 and not aligned")
    global_3 = traj.global_point(3)[0]
    assert not torch.equal(traj.point(3)[0], global_3) and torch.equal(traj.global_point(2)[0], traj.point(2)[0])
    expected = torch.linalg.vector_norm((global_3 - traj.params[traj.row(2)]).double()).item()
    assert whole["distance"].tolist() == pytest.approx([expected], rel=1e-5)


def test_rounds_table_keeps_its_columns_without_swa():
    config = _swa_config(None)
    check_config(config, SCHEMA)

    assert rounds_columns(config, build_runs(config)) == [*ROUNDS_COLUMNS, CODE_VERSION]


@pytest.mark.parametrize(("swa", "model_options", "expected"), [
    ({"start_round": 2, "cycle": 1}, {"cnn_small": {"norm": "batch"}}, ["cnn_small"]),  # not mlp: no batch norm
    ({"start_round": 2, "cycle": 1}, {}, []),       # no model with batch norm
    (None, {"cnn_small": {"norm": "batch"}}, []),  # batch norm, but no run with SWA
])
def test_the_rounds_table_learns_which_swa_runs_have_batch_norm(swa, model_options, expected):
    # Prepare: FedAvg (and FedAvg with SWA) on cnn_small and on mlp
    config = _swa_config(swa)
    config.update(models=["cnn_small", "mlp"], model_options=model_options)
    check_config(config, SCHEMA)
    runs = build_runs(config)

    # Execute
    models = swa_bn_models(config, runs)

    # Assert: the models whose SWA runs' statistics rounds.csv names, and the column only where there are some
    assert models == expected
    assert (SWA_BN_COLUMN in rounds_columns(config, runs)) is bool(expected)


@pytest.mark.parametrize(("where", "swa", "match"), [
    # an algorithm's swa is checked against the training section's schema, as the section's own
    ("algorithm", {"cycle": 2, "lr_rati": 0.1}, "algorithms.fedavg_swa.training.swa.lr_rati: unknown key 'lr_rati'. "
                                                "Did you mean 'lr_ratio'?"),
    ("algorithm", {"start_round": 3, "cycle": 2}, "algorithms.fedavg_swa.training: swa: the SWA phase starts at "
                                                  "round 3 but its first cycle of 2 rounds ends at round 4"),
    ("algorithm", {"scheduled_lr": "global"}, "algorithms.fedavg_swa.training.swa.scheduled_lr: 'global' is not "
                                              "valid. Valid values: client, server"),
    ("training", {"cycle": 4}, r"training: swa: the SWA phase starts at round 3 .*after the last round \(3\)"),
    ("training", {"cycle": 0}, "training.swa.cycle: 0 is less than the minimum of 1"),
    ("training", {"lr_ratio": 2}, "training.swa.lr_ratio: 2 is greater than the maximum of 1"),
    ("training", {"cycles": 2}, "training.swa"),
])
def test_bad_swa_config_is_an_error_before_any_job(where, swa, match):
    config = _swa_config(swa if where == "algorithm" else None)
    if where == "training":
        config["training"]["swa"] = swa

    assert re.search(match, _problems(config))


@pytest.mark.parametrize(("where", "swa", "expected"), [
    ("algorithm", {"start_round": 4, "cycle": 2}, ["algorithms.fedavg_swa.training.swa: its phase starts at round 4, "
                                                   "after the last round (3) of the runs of fedavg_swa"]),
    ("training", {"start_round": 9}, ["training.swa: its phase starts at round 9, after the last round (3) of "
                                      "the runs of fedavg"]),
    ("algorithm", {"start_round": 2, "cycle": 2}, []),  # a phase within the run
    ("both", {"start_round": 2, "cycle": 2}, ["training.swa: its phase starts at round 9, after the last round (3) "
                                              "of the runs of fedavg"]),  # the algorithm's own phase starts
    ("algorithm", None, []),  # no SWA
])
def test_a_swa_phase_after_the_last_round_is_warned_about(where, swa, expected):
    # Prepare: a valid config whose SWA (an algorithm's or the training section's) may never start
    config = _swa_config(swa if where != "training" else None)
    if where != "algorithm":
        config["training"]["swa"] = swa if where == "training" else {"start_round": 9}
    check_config(config, SCHEMA)

    # Execute
    # (the lines of SWA settings: a tiny config of random inits also has a proxy split that nothing reads)
    lines = [line for line in config_warnings(config, build_runs(config)) if line.split(":")[0].endswith(".swa")]

    # Assert: one line per algorithm whose runs end before its phase, naming where the swa was set
    assert [line.split(", so")[0] for line in lines] == expected
    assert all("set `swa: null`" in line for line in lines)


@pytest.mark.parametrize(("swa", "rounds", "unaveraged", "cycle_ends"), [
    (SWAConfig(cycle=10), 100, range(96, 101), "rounds 80 or 117"),  # the default start, 76: 25 rounds
    (SWAConfig(start_round=86, cycle=10), 100, range(96, 101), "rounds 95 or 105"),
    (SWAConfig(start_round=11, cycle=2), 21, range(21, 22), "rounds 20 or 22"),
    (SWAConfig(start_round=81, cycle=10), 100, range(0), None),  # two whole cycles
    (SWAConfig(start_round=91, cycle=10), 100, range(0), None),
    (SWAConfig(cycle=1), 100, range(0), None),  # every round a cycle end
    (SWAConfig(start_round=101, cycle=10), 100, range(0), None),  # no phase: the plain run
])
def test_a_swa_phase_ending_within_a_cycle_names_the_rounds_it_never_averages(swa, rounds, unaveraged, cycle_ends):
    # Execute
    line = partial_cycle_warning(swa, rounds)

    # Assert: the rounds after the last cycle end train but are never averaged (the authors' code averages at cycle
    # ends only), and the round counts below and above that end the phase on a cycle end are named
    assert swa.unaveraged_rounds(rounds) == unaveraged
    if cycle_ends is None:
        assert line is None
    else:
        named = f"round {unaveraged[0]}" if len(unaveraged) == 1 else f"rounds {unaveraged[0]}-{unaveraged[-1]}"
        assert f"{named} train after its last cycle end (round {unaveraged[0] - 1})" in line
        assert f"{cycle_ends} would end it on a cycle end" in line
        assert all(not swa.unaveraged_rounds(int(n)) for n in re.findall(r"\d+", cycle_ends))


@pytest.mark.parametrize(("where", "swa", "expected"), [
    ("algorithm", {"cycle": 10}, ["algorithms.fedavg_swa.training.swa: in the runs of fedavg_swa, its phase from "
                                  "round 76 ends within a cycle of 10 rounds: rounds 96-100 train after its last cycle "
                                  "end (round 95)"]),
    ("training", {"start_round": 86, "cycle": 10}, ["training.swa: in the runs of fedavg, its phase from round 86 ends "
                                                    "within a cycle of 10 rounds: rounds 96-100 train after its last "
                                                    "cycle end (round 95)"]),
    ("algorithm", {"start_round": 81, "cycle": 10}, []),  # ends on a cycle end
    ("training", {"cycle": 1}, []),
])
def test_a_swa_phase_ending_within_a_cycle_is_warned_about(where, swa, expected):
    # Prepare: a valid config of 100 rounds whose SWA (an algorithm's or the training section's) may end in a cycle
    config = _swa_config(swa if where == "algorithm" else None)
    config["training"]["rounds"] = 100
    if where == "training":
        config["training"]["swa"] = swa
    check_config(config, SCHEMA)

    # Execute
    lines = [line for line in config_warnings(config, build_runs(config)) if line.split(":")[0].endswith(".swa")]

    # Assert: one line per algorithm whose runs end within a cycle, naming where the swa was set
    assert [line.split(" and the SWA model")[0] for line in lines] == expected
