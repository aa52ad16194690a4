"""Runs of many rounds: the global model evaluated every `eval_every` rounds (Caldarola et al. 2022 evaluate every
100 of 10,000 rounds), the engine's rows, SWA's columns and resume between two evaluated rounds."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers.resume import killed_after_round
from helpers.tiny import tiny_data, tiny_model

from fedscape.analysis.client_stats.stage import client_stats_job
from fedscape.analysis.landscape.stage import landscape_plane_job
from fedscape.core.config import ConfigError, load_schema
from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import build_runs
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.swa import SWA_METRICS, SWAConfig
from fedscape.models.checkpoint import ModelMeta, load_trajectory, save_trajectory
from fedscape.models.params import flatten_params
from fedscape.plan.barriers import layer_pair
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "tiny_config.yaml"
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")

METRICS = ("round", "train_loss", "train_acc", "test_loss", "test_acc", "status")


def cfg_of(**kw) -> TrainConfig:
    return TrainConfig(**{"rounds": 7, "local_epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.5, "seed": 3,
                          "client_parallel": "sequential", **kw})


def metrics_of(rows: list[dict], keys=METRICS) -> list[dict]:
    """The rows' `keys`, NaN as None (NaN never equals itself): the same computation gives equal lists."""
    return [{k: None if isinstance(row[k], float) and math.isnan(row[k]) else row[k] for k in keys} for row in rows]


# -- eval_every ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rounds", "every", "evaluated"), [
    (7, 1, [0, 1, 2, 3, 4, 5, 6, 7]), (7, 3, [0, 3, 6, 7]), (6, 3, [0, 3, 6]), (7, 10, [0, 7]), (1, 5, [0, 1])])
def test_evaluated_rounds_are_zero_the_multiples_and_the_last(rounds, every, evaluated):
    cfg = cfg_of(rounds=rounds, eval_every=every)

    assert [t for t in range(rounds + 1) if cfg.evaluates(t)] == evaluated


@pytest.mark.parametrize("every", [0, -2, 1.5, True])
def test_eval_every_must_be_a_positive_integer(every):
    with pytest.raises(ValueError, match=r"eval_every must be an integer >= 1 \(1 = every round\)"):
        cfg_of(eval_every=every)


def test_rows_of_evaluated_rounds_equal_the_every_round_runs_and_training_is_unchanged():
    # Prepare
    data = tiny_data()
    every_round = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg_of())

    # Execute
    thinned = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg_of(eval_every=3))

    # Assert: rows at 0, 3, 6 and the last round, equal to the every-round run's; the same models every round
    assert [row["round"] for row in thinned.rows] == [0, 3, 6, 7]
    assert metrics_of(thinned.rows) == metrics_of([every_round.rows[t] for t in (0, 3, 6, 7)])
    assert torch.equal(thinned.params, every_round.params)
    assert thinned.rounds.tolist() == list(range(8))
    assert [s["round"] for s in thinned.client_stats] == list(range(1, 8))  # client statistics stay per round


def test_swa_columns_of_evaluated_rounds_carry_the_last_cycle_ends_model():
    # Prepare: cycle ends at rounds 3, 5 and 7, evaluated rounds 0, 4 and 7
    data, swa = tiny_data(), SWAConfig(start_round=2, cycle=2, lr_ratio=0.1)
    every_round = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg_of(), swa=swa)

    # Execute
    thinned = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg_of(eval_every=4), swa=swa)

    # Assert: round 4 carries the SWA model of round 3's cycle end, round 7 the mean of three
    keys = (*METRICS, *SWA_METRICS)
    assert metrics_of(thinned.rows, keys) == metrics_of([every_round.rows[t] for t in (0, 4, 7)], keys)
    assert [row["swa_models"] for row in thinned.rows] == [0, 1, 3]
    assert torch.equal(thinned.swa["params"], every_round.swa["params"])


def test_a_model_that_turns_nan_between_two_evaluations_is_evaluated_and_stops_the_run():
    # Prepare: an lr that makes the weights NaN within a few rounds, evaluations every 100 rounds
    cfg = cfg_of(rounds=50, lr=1e12, momentum=0.0, eval_every=100)

    # Execute
    result = run_federated(tiny_model(), tiny_data(), make_strategy("fedavg"), cfg)

    # Assert: the run stops at the first round whose model is not finite, which has its row
    last = result.rows[-1]
    assert result.status == last["status"] == "diverged" and math.isnan(last["train_loss"])
    assert [row["round"] for row in result.rows] == [0, last["round"]] and last["round"] < 50
    assert int(result.rounds[-1]) == last["round"]
    assert bool(torch.isfinite(result.params[-2]).all()) and not bool(torch.isfinite(result.params[-1]).all())


@pytest.mark.parametrize("kill_after", [2, 4])
def test_resume_between_two_evaluated_rounds_gives_the_same_rows_and_models(tmp_path, monkeypatch, kill_after):
    # Prepare: evaluated rounds 0, 3, 6, 7, SWA cycle ends 3, 5, 7; killed after a round without a row
    data, cfg, swa = tiny_data(), cfg_of(eval_every=3), SWAConfig(start_round=2, cycle=2, lr_ratio=0.1)
    reference = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg, swa=swa)
    killed_after_round(monkeypatch, kill_after, lambda: run_federated(
        tiny_model(), data, make_strategy("fedavgm"), cfg, progress_dir=tmp_path, progress_key="k", swa=swa))

    # Execute
    resumed = run_federated(tiny_model(seed=9), data, make_strategy("fedavgm"), cfg, progress_dir=tmp_path,
                            progress_key="k", swa=swa)

    # Assert
    keys = (*METRICS, *SWA_METRICS)
    assert torch.equal(resumed.params, reference.params)
    assert torch.equal(resumed.swa["params"], reference.swa["params"])
    assert metrics_of(resumed.rows, keys) == metrics_of(reference.rows, keys)


# -- save_every: the kept rounds ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "swa", "kept"), [
    ({"save_every": 1}, None, list(range(11))),
    ({"save_every": 4}, None, [0, 4, 8, 10]),
    ({"save_every": 5}, None, [0, 5, 10]),
    ({"save_every": 4, "save_clients_at": (6, 9)}, None, [0, 4, 5, 6, 8, 9, 10]),
    ({"save_every": 4, "save_clients_at": (1,)}, None, [0, 1, 4, 8, 10]),
    ({"save_every": 20}, SWAConfig(start_round=5, cycle=3), [0, 7, 10]),
    ({"save_every": 4}, SWAConfig(start_round=2, cycle=2), [0, 3, 4, 5, 7, 8, 9, 10]),
    ({"save_every": 4}, SWAConfig(start_round=11, cycle=2), [0, 4, 8, 10]),
])
def test_kept_rounds_are_zero_the_multiples_the_last_swa_cycle_ends_and_the_client_rounds(kw, swa, kept):
    assert list(cfg_of(rounds=10, **kw).kept_rounds(swa)) == kept


def test_a_round_that_is_not_kept_is_explained_with_the_nearest_kept_ones():
    cfg = TrainConfig(rounds=10000, save_every=100)

    problem = cfg.unkept_round(7515, SWAConfig(start_round=7501, cycle=10))

    assert problem == ("round 7515 is not kept: training.save_every 100 keeps the global models of rounds 0, 100, 200, "
                       "300, ..., 9990, 10000 (326 in all; nearest to 7515: 7510 and 7520); name a kept round, add "
                       "7515 to training.save_clients_at, or make save_every a divisor of 7515")
    assert cfg.unkept_round(7510, SWAConfig(start_round=7501, cycle=10)) is None
    assert cfg.unkept_round(7510) is not None and TrainConfig(rounds=10).unkept_round(3) is None


@pytest.mark.parametrize("every", [0, 2.0, False])
def test_save_every_must_be_a_positive_integer(every):
    with pytest.raises(ValueError, match=r"save_every must be an integer >= 1 \(1 = every round\)"):
        cfg_of(save_every=every)


def test_a_thinned_run_keeps_the_every_round_runs_models_of_the_kept_rounds():
    # Prepare
    data = tiny_data()
    every_round = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg_of(save_clients_at=(5,)))

    # Execute
    thinned = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg_of(save_every=3, save_clients_at=(5,)))

    # Assert: rounds 0, 3, 4 and 5 (client round 5 and the one before it), 6 and 7; every row and client model kept
    assert thinned.rounds.tolist() == [0, 3, 4, 5, 6, 7]
    assert torch.equal(thinned.params, every_round.params[thinned.rounds])
    assert metrics_of(thinned.rows) == metrics_of(every_round.rows)
    assert torch.equal(thinned.clients[5].params, every_round.clients[5].params)


def test_a_thinned_run_that_diverges_keeps_the_round_where_it_stopped():
    cfg = cfg_of(rounds=50, lr=1e12, momentum=0.0, save_every=100)

    result = run_federated(tiny_model(), tiny_data(), make_strategy("fedavg"), cfg)

    assert result.status == "diverged"
    assert result.rounds.tolist() == [0, result.rows[-1]["round"]]


@pytest.mark.parametrize("kill_after", [1, 2, 4, 5])
def test_resume_after_a_kill_between_two_kept_rounds_gives_bit_identical_checkpoints(tmp_path, monkeypatch, kill_after):
    # Prepare: kept rounds 0, 3, 4, 5, 6, 7 (clients of round 5 with the round before; SWA cycle ends 3, 5, 7),
    # rows at 0, 2, 4, 6, 7; killed after rounds kept or not, evaluated or not
    data, swa = tiny_data(), SWAConfig(start_round=2, cycle=2, lr_ratio=0.1)
    cfg = cfg_of(save_every=6, eval_every=2, save_clients_at=(5,), participation=0.67)
    reference = run_federated(tiny_model(), data, make_strategy("fedavgm"), cfg, swa=swa)
    killed_after_round(monkeypatch, kill_after, lambda: run_federated(
        tiny_model(), data, make_strategy("fedavgm"), cfg, progress_dir=tmp_path, progress_key="k", swa=swa))
    saved = {int(p.stem.split("_")[1]): "params" in torch.load(p, weights_only=True)
             for p in tmp_path.glob("round_*.pt")}

    # Execute
    resumed = run_federated(tiny_model(seed=9), data, make_strategy("fedavgm"), cfg, progress_dir=tmp_path,
                            progress_key="k", swa=swa)

    # Assert: the progress kept the models of kept rounds only; the resumed run equals the uninterrupted one
    assert saved == {t: t in (0, 3, 4, 5) for t in range(kill_after + 1)}
    assert reference.rounds.tolist() == resumed.rounds.tolist() == [0, 3, 4, 5, 6, 7]
    assert torch.equal(resumed.params, reference.params) and torch.equal(resumed.buffers, reference.buffers)
    assert torch.equal(resumed.clients[5].params, reference.clients[5].params)
    assert torch.equal(resumed.swa["params"], reference.swa["params"]) and resumed.swa["rounds"] == [3, 5, 7]
    keys = (*METRICS, *SWA_METRICS)
    assert metrics_of(resumed.rows, keys) == metrics_of(reference.rows, keys)
    assert [s["round"] for s in resumed.client_stats] == list(range(1, 8))


# -- reading a thinned trajectory -----------------------------------------------------------------------------------
def _thinned_trajectory(path: Path, status: str = "ok"):
    """A trajectory that kept rounds 0, 3, 6 and 7 of 7 (save_every 3)."""
    model = tiny_model()
    meta = ModelMeta("mlp", 10, 1, 8, {}, tuple(n for n, _ in model.named_parameters()),
                     tuple(tuple(p.shape) for p in model.parameters()))
    params = torch.stack([flatten_params(model) + k for k in range(4)])
    save_trajectory(path, params, torch.zeros(4, 0), torch.tensor([0, 3, 6, 7]), meta,
                    {"run_id": "r", "status": status, "settings": {"training": {"rounds": 7, "save_every": 3}}})
    return load_trajectory(path), params


@pytest.mark.parametrize("read", ["point", "model_at", "row", "unusable"])
def test_a_round_the_run_did_not_keep_is_an_error_naming_the_kept_rounds(tmp_path, read):
    traj, params = _thinned_trajectory(tmp_path / "trajectory.pt")

    with pytest.raises(KeyError, match=re.escape(
            f"{tmp_path / 'trajectory.pt'}: the global model of round 4 is not kept: the run (training.save_every 3) "
            "kept rounds 0, 3, 6, 7 (4 in all; nearest to 4: 3 and 6); analyse a kept round")):
        getattr(traj, read)(4)
    assert torch.equal(traj.point(6)[0], params[2]) and traj.unusable(7) is None and traj.row(3) == 1


def test_a_diverged_thinned_run_reports_rounds_after_its_end_as_unusable(tmp_path):
    traj, _ = _thinned_trajectory(tmp_path / "trajectory.pt", status="diverged")

    assert "the run stopped early" in traj.unusable(9)
    with pytest.raises(KeyError, match="round 5 is not kept"):
        traj.unusable(5)


# -- a train job and its readers ------------------------------------------------------------------------------------
def _tiny_config(**training) -> dict:
    config = yaml.safe_load(TINY.read_text())
    config["training"].update({"rounds": 6, "save_clients_at": [3], **training})
    config["interpolation"]["pairs"]["iid_r1_vs_final"]["round_a"] = 3
    return config


def test_train_job_writes_the_evaluated_rows_and_kept_models_and_client_stats_cover_every_round(tmp_path):
    # Prepare: rows at 0, 4 and 6; models of 0, 2 and 3 (client round 3 and the one before), 5 and 6
    config = _tiny_config(eval_every=4, save_every=5, save_clients_at=[3])
    check_config(config, SCHEMA)
    run = build_runs(config)[0]
    partition, init, out = tmp_path / "partition.npz", tmp_path / "init.pt", tmp_path / "run"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                    tmp_path / "counts.csv")
    init_job(init_settings(config, build_runs(config), run.dataset, run.model, run.init), init)
    outputs = {name: str(out / file) for name, file in TRAIN_FILE_NAMES.items()}
    settings = train_settings(config, run)

    # Execute
    train_job(settings, partition, init, outputs, out / "_progress")
    client_stats_job({"run_ids": [run.run_id]}, [outputs["client_updates"]], [outputs["trajectory"]],
                     tmp_path / "stats.csv")

    # Assert
    assert {k: settings["training"][k] for k in ("eval_every", "save_every")} == {"eval_every": 4, "save_every": 5}
    assert pd.read_csv(outputs["metrics"])["round"].tolist() == [0, 4, 6]
    traj = load_trajectory(outputs["trajectory"], run_id=run.run_id)
    assert traj.rounds.tolist() == [0, 2, 3, 5, 6]
    stats = pd.read_csv(tmp_path / "stats.csv")
    assert stats["round"].tolist() == list(range(7))
    assert stats["l2_to_final"].isna().tolist() == [r not in (0, 2, 3, 5, 6) for r in range(7)]
    assert stats.loc[stats["round"] > 0, "drift_from_start"].notna().all()
    with pytest.raises(KeyError, match="round 4 is not kept"):
        traj.model_at(4)


@pytest.mark.parametrize("key", ["eval_every", "save_every"])
def test_the_new_keys_at_their_baseline_leave_every_jobs_settings_as_they_were(key):
    config, with_key = _tiny_config(), _tiny_config(**{key: 1})
    for c in (config, with_key):
        check_config(c, SCHEMA)
    config["training"].pop(key, None)

    assert all(train_settings(config, r) == train_settings(with_key, r) for r in build_runs(config))
    assert key not in train_settings(with_key, build_runs(with_key)[0])["training"]


def test_a_warm_up_init_leaves_eval_every_and_save_every_out():
    config = _tiny_config(eval_every=2, save_every=2)
    config["inits"]["warm"] = {"kind": "iid_warmup", "rounds": 1}
    config["experiments"].append({"alpha": 0.5, "init": "warm", "algorithm": "fedavg"})
    plain = copy.deepcopy(config)
    for key in ("eval_every", "save_every"):
        plain["training"].pop(key)
    for c in (config, plain):
        check_config(c, SCHEMA)

    assert init_settings(config, build_runs(config), "digits", "cnn_small", "warm") == init_settings(
        plain, build_runs(plain), "digits", "cnn_small", "warm")


# -- planning refuses an analysis of a round that is not kept --------------------------------------------------------
def _problems(config: dict) -> str:
    try:
        check_config(config, SCHEMA)
    except ConfigError as exc:
        return str(exc)
    return ""


IID = {"alpha": "iid", "init": "random", "algorithm": "fedavg"}
NON_IID = {"alpha": 0.5, "init": "random", "algorithm": "fedavg"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: None, None),
    (lambda c: c["interpolation"]["pairs"]["iid_r1_vs_final"].update(round_a=4),
     "interpolation.pairs.iid_r1_vs_final.round_a: round 4 is not kept: training.save_every 3 keeps the global "
     "models of rounds 0, 2, 3, 6 (4 in all; nearest to 4: 3 and 6); name a kept round, add 4 to "
     "training.save_clients_at, or make save_every a divisor of 4 (run "),
    (lambda c: c["hessian"].update(rounds=[0, 5, "final"]), "hessian.rounds: round 5 is not kept"),
    (lambda c: c["landscapes"].update(r={"kind": "random", "runs": [IID], "round": 1}),
     "landscapes.r.round: round 1 is not kept: training.save_every 3 keeps the global models of rounds 0, 2, 3, 6 "
     "(4 in all; nearest to 1: 0 and 2)"),
    (lambda c: c["landscapes"].update(p={"kind": "three_points", "checkpoints": [
        {"run": IID, "round": 0}, {"run": IID, "round": 4}, {"run": IID, "round": "final"}]}),
     "landscapes.p.checkpoints[1].round: round 4 is not kept"),
    (lambda c: c["layer_barriers"]["pairs"].update(g={"a": IID, "b": NON_IID, "rounds": [3, 5]}),
     "layer_barriers.pairs.g.rounds: round 5 is not kept"),
])
def test_planning_refuses_an_analysis_of_a_round_that_is_not_kept_with_the_nearest_kept_ones(change, message):
    # Prepare: 6 rounds keeping 0, 3 and 6 and the client round 3 with round 2
    config = _tiny_config(save_every=3)
    change(config)

    # Execute
    problems = _problems(config)

    # Assert
    assert (problems == "") if message is None else (message in problems), problems


def test_layer_wise_pairs_of_all_rounds_take_the_rounds_both_runs_keep():
    config = _tiny_config(save_every=3)
    config["layer_barriers"].update(every=1, pairs={"g": {"a": IID, "b": NON_IID, "rounds": "all"}})
    check_config(config, SCHEMA)

    assert layer_pair(config, build_runs(config), "g").rounds == (2, 3, 6)


@pytest.mark.parametrize(("round_", "projected"), [("final", [0, 3, 6, 7]), (6, [0, 3, 6]), (4, KeyError)])
def test_a_trajectory_plane_projects_the_kept_rounds(tmp_path, round_, projected):
    # Prepare: a thinned trajectory of 7 rounds whose models move (a PCA plane needs spread)
    path = tmp_path / "trajectory.pt"
    traj, params = _thinned_trajectory(path)
    g = torch.Generator().manual_seed(0)
    params = params + 0.05 * torch.randn(params.shape, generator=g).cumsum(0)
    save_trajectory(path, params, torch.zeros(4, 0), traj.rounds, traj.model_meta, traj.meta)
    fields = {"dataset": "digits", "model": "mlp", "init": "random", "algorithm": "fedavg", "alpha": "iid",
              "num_clients": 3, "participation": "1.0", "seed": 0}
    settings = {"label": "x", "kind": "trajectory", "runs": ["r"], "run_fields": [fields], "round": round_,
                "center": "final", "seed": 0, "resolution": 5, "span": None, "margin": 0.25, "client": 0,
                "checkpoints": []}
    out = {k: str(tmp_path / f"out.{k}") for k in ("plane", "points", "grid")}

    # Execute / Assert
    if projected is KeyError:
        with pytest.raises(KeyError, match="round 4 is not kept"):
            landscape_plane_job(settings, [str(path)], None, None, out)
        return
    landscape_plane_job(settings, [str(path)], None, None, out)
    points = pd.read_csv(out["points"])
    assert points["round"].tolist() == projected
    assert points["role"].tolist() == ["init", *["global"] * (len(projected) - 2), "final"]
