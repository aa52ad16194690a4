"""`hessian.clients`: the per-client Hessians (each client's rows, HN and HD of FedAlign, Mendieta et al. 2022) over
every client, a seeded sample of them, or none."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from helpers.configs import tiny_config
from helpers.hessian import CHEAP, one_round_run
from helpers.resume import killed_at_call
from helpers.workflow import ROOT

from fedscape.analysis.hessian.definitions import (
    CLIENT_COLUMNS,
    JOB_FILES,
    EigenStore,
    HessianJob,
    HessianSettings,
    client_columns,
    client_sample,
    hessian_columns,
    job_clients,
)
from fedscape.analysis.hessian.stage import hessian_stage
from fedscape.analysis.hessian.tables import final_columns, hessian_tables_job
from fedscape.core.config import ConfigError, load_schema
from fedscape.core.jobs import declared_defaults
from fedscape.core.runs import build_runs
from fedscape.plan.hessian import hessian_job_settings, hessian_jobs
from fedscape.plan.workflow import check_config

SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")


# -- the sample ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_clients", "clients", "seed"), [(100, 10, 0), (100, 10, 1), (3400, 100, 0), (5, 4, 3)])
def test_a_sample_of_k_is_k_distinct_sorted_clients_fixed_by_the_seed(num_clients, clients, seed):
    # Execute
    sample = client_sample(num_clients, clients, seed)

    # Assert
    assert len(sample) == len(set(sample)) == clients
    assert sample == sorted(sample) and 0 <= sample[0] and sample[-1] < num_clients
    assert client_sample(num_clients, clients, seed) == sample
    assert client_sample(num_clients, clients, seed + 1) != sample


def test_the_sample_of_a_seed_does_not_depend_on_anything_else():
    # the same clients at every round and for every run of as many clients: HN / HD of round 0 and of the final
    # round are over the same data
    assert client_sample(3400, 100, 0) == client_sample(3400, 100, 0)
    assert set(client_sample(3400, 100, 0)) != set(client_sample(3400, 100, 7))


@pytest.mark.parametrize(("num_clients", "clients", "expected"), [
    (4, "all", [0, 1, 2, 3]), (4, 4, [0, 1, 2, 3]), (4, 9, [0, 1, 2, 3]), (4, 0, []),
])
def test_all_and_a_bound_of_at_least_the_clients_take_every_client_and_zero_none(num_clients, clients, expected):
    assert client_sample(num_clients, clients, seed=0) == expected


@pytest.mark.parametrize(("clients", "num_clients", "expected"), [
    ("all", 4, "all"), (4, 4, "all"), (100, 4, "all"), (3, 4, 3), (0, 4, 0), (100, 3400, 100),
])
def test_a_job_of_a_bound_that_takes_every_client_is_the_job_of_all(clients, num_clients, expected):
    assert job_clients(clients, num_clients) == expected


# -- settings and config -----------------------------------------------------------------------------
@pytest.mark.parametrize("clients", [-1, "some", 2.5, True, None])
def test_settings_refuse_a_bad_clients_value(clients):
    with pytest.raises(ValueError, match=rf"clients must be 'all' or an integer >= 0 .*got {clients!r}"):
        HessianSettings(top_k=2, method="lanczos", tol=1e-3, max_iter=20, trace_probes=4, eval_samples=64,
                        batch_size=32, cache_graph=True, density=False, density_steps=4, density_probes=1, seed=0,
                        clients=clients)


@pytest.mark.parametrize(("clients", "message"), [
    (-1, r"hessian.clients: -1 is not valid: `all` or an integer >= 0"),
    ("some", r"hessian.clients: 'some' is not valid: `all` or an integer >= 0"),
    (2.5, r"hessian.clients: 2.5 is not valid: `all` or an integer >= 0"),
])
def test_config_refuses_a_bad_clients_value_naming_the_key(clients, message):
    with pytest.raises(ConfigError, match=message):
        check_config(tiny_config(clients=clients), SCHEMA)


def test_the_baseline_is_the_schemas_default_and_keeps_the_jobs_settings():
    # Prepare
    default = SCHEMA["properties"]["hessian"]["properties"]["clients"]["default"]
    config = check_config(tiny_config(), SCHEMA)
    runs = build_runs(config)
    run, round_ = hessian_jobs(config, runs)[0]

    # Execute
    settings = {clients: hessian_job_settings(check_config(tiny_config(clients=clients), SCHEMA), runs, run, round_)
                for clients in ("all", 4, 9, 2, 0)}

    # Assert: all, and any bound of at least the run's 4 clients, plan the job that existed before the key
    assert default == declared_defaults(HessianSettings)["clients"] == config["hessian"]["clients"] == "all"
    assert settings["all"] == settings[4] == settings[9] == hessian_job_settings(config, runs, run, round_)
    assert "clients" not in settings["all"]["hessian"]
    assert settings[2]["hessian"]["clients"] == 2 and settings[0]["hessian"]["clients"] == 0
    assert HessianJob.from_settings(settings[2]).hessian.clients == 2


def test_the_clients_table_gets_its_column_only_when_bounded():
    assert client_columns("all") == CLIENT_COLUMNS == ["run_id", "round", "hn", "hd", "status"]
    assert client_columns(0) == client_columns(10) == ["run_id", "round", "hn", "hd", "clients", "status"]


# -- the stage -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One FedAvg run of the tiny config (4 clients), one round: its config, runs, trajectory and partition."""
    tmp = tmp_path_factory.mktemp("hessian_clients")
    return {**one_round_run(tmp), "tmp": tmp}


def run_stage(trained, clients, round_=1) -> dict:
    """The Hessian job of the trained run at `round_` with `hessian.clients: clients`: its outputs, read."""
    config = check_config({**trained["config"], "hessian": {**trained["config"]["hessian"], "clients": clients}},
                          SCHEMA)
    out = trained["tmp"] / f"clients_{clients}_round_{round_}"
    out.mkdir(exist_ok=True)
    outputs = {key: str(out / name) for key, name in JOB_FILES.items()}
    hessian_stage(hessian_job_settings(config, trained["runs"], trained["run"], round_), trained["trajectory"],
                  trained["partition"], outputs)
    return {"outputs": outputs, "table": pd.read_csv(outputs["table"]), "clients": pd.read_csv(outputs["clients"]),
            "details": json.loads(open(outputs["details"]).read()), "config": config}


def test_a_sample_analyses_exactly_its_clients_with_the_numbers_of_all(trained):
    # Execute
    every, two = run_stage(trained, "all"), run_stage(trained, 2)

    # Assert: the sample's clients (and the aggregate) get the rows they get when every client is analysed
    sample = client_sample(4, 2, trained["config"]["hessian"]["seed"])
    labels = ["all", *[f"client_{k}" for k in sample]]
    assert two["table"]["data"].tolist() == labels
    pd.testing.assert_frame_equal(two["table"], every["table"].set_index("data").loc[labels].reset_index()[
        hessian_columns(2)])
    assert two["details"]["clients"] == sample and "clients" not in every["details"]
    assert set(two["details"]["data"]) == set(labels)
    # hessian_clients.csv says over how many clients HN and HD are; all's table keeps its columns
    assert two["clients"].columns.tolist() == client_columns(2) and two["clients"].loc[0, "clients"] == 2
    assert every["clients"].columns.tolist() == CLIENT_COLUMNS
    assert math.isfinite(two["clients"].loc[0, "hn"]) and math.isfinite(every["clients"].loc[0, "hn"])
    assert two["clients"].loc[0, "hd"] != every["clients"].loc[0, "hd"]  # over 2 of the 4 clients


def test_zero_clients_analyses_the_aggregate_only_and_the_tables_still_build(trained, tmp_path):
    # Execute
    every, none = run_stage(trained, "all"), run_stage(trained, 0)
    table, clients = tmp_path / "hessian.csv", tmp_path / "hessian_clients.csv"
    hessian_tables_job([none["outputs"]["table"]], [none["outputs"]["clients"]], table, clients,
                       hessian_columns(2), client_columns(0))

    # Assert: the aggregate's row as with every client; HN and HD NaN over 0 clients; final.csv's columns build
    pd.testing.assert_frame_equal(none["table"], every["table"].iloc[:1])
    assert none["details"]["clients"] == [] and math.isnan(none["details"]["hn"])
    gathered = pd.read_csv(clients)
    assert gathered["clients"].tolist() == [0] and gathered[["hn", "hd"]].isna().all(axis=None)
    final = pd.DataFrame({"run_id": [trained["run"].run_id], "final_round": [1]})
    columns = final_columns(final, pd.read_csv(table), gathered)
    assert columns.loc[0, "lambda_max"] == every["table"].loc[0, "lambda_1"]
    assert math.isnan(columns.loc[0, "hn"]) and math.isnan(columns.loc[0, "hd"])


def test_the_gathered_table_counts_every_client_for_a_job_that_analysed_them_all(trained, tmp_path):
    # Prepare: a bound job and a job of all (no `clients` column: its run's 4 clients), as a bound set for a grid
    # of large and small runs plans them
    every, two = run_stage(trained, "all"), run_stage(trained, 2, round_=0)
    out = tmp_path / "hessian_clients.csv"

    # Execute
    hessian_tables_job([every["outputs"]["table"], two["outputs"]["table"]],
                       [every["outputs"]["clients"], two["outputs"]["clients"]], tmp_path / "hessian.csv", out,
                       hessian_columns(2), client_columns(2))

    # Assert
    gathered = pd.read_csv(out)
    assert gathered.columns.tolist() == client_columns(2)
    assert gathered[["round", "clients"]].values.tolist() == [[1, 4], [0, 2]]


def test_a_diverged_job_writes_the_rows_of_its_sample(trained, tmp_path):
    # Prepare: the settings of a bound job whose trajectory cannot be analysed
    from fedscape.analysis.hessian.stage import _write_diverged  # the skip path, without a diverged run to train
    from fedscape.models.checkpoint import load_trajectory

    config = check_config({**trained["config"], "hessian": {**trained["config"]["hessian"], "clients": 3}}, SCHEMA)
    job = HessianJob.from_settings(hessian_job_settings(config, trained["runs"], trained["run"], 1))
    outputs = {key: str(tmp_path / name) for key, name in JOB_FILES.items()}

    # Execute
    _write_diverged(job, load_trajectory(trained["trajectory"]), "a test", outputs, 0.0)

    # Assert
    sample = client_sample(4, 3, job.hessian.seed)
    assert pd.read_csv(outputs["table"])["data"].tolist() == ["all", *[f"client_{k}" for k in sample]]
    clients = pd.read_csv(outputs["clients"])
    assert clients.loc[0, "clients"] == 3 and clients.loc[0, "status"] == "diverged"
    assert json.loads(open(outputs["details"]).read())["clients"] == sample


def test_a_client_whose_loss_overflows_is_its_own_diverged_row_and_the_aggregate_stands(trained, tmp_path,
                                                                                           monkeypatch):
    # Prepare: one sample that client 2's evaluation subset holds and the aggregate's leaves out, scaled until its
    # outputs overflow (weights finite, loss not)
    from fedscape.analysis.hessian import stage as stage_mod
    from fedscape.analysis.hessian.maths import eval_subset

    load, n, seed = stage_mod.load_federated_data, CHEAP["eval_samples"], trained["config"]["hessian"]["seed"]

    def overflowing(*args, **kwargs):
        data = load(*args, **kwargs)
        aggregate = set(eval_subset(len(data.y_train), n, seed, key=0).tolist())  # rows of the pool: clients cover it
        own = data.client_indices[2][eval_subset(len(data.client_indices[2]), n, seed, key=3)].tolist()
        victim = next(i for i in own if i not in aggregate)
        data.x_train = data.x_train.clone()
        data.x_train[victim] *= 3e38
        return data

    healthy = run_stage(trained, "all")
    monkeypatch.setattr(stage_mod, "load_federated_data", overflowing)

    # Execute
    got = run_stage(trained, "all")

    # Assert: client 2's row NaN and diverged, the others' and the aggregate's as without it; HN, HD NaN, diverged
    table = got["table"].set_index("data")
    assert table.loc["client_2", "status"] == "diverged" and table.loc["client_2", ["lambda_1", "trace"]].isna().all()
    others = ["all", "client_0", "client_1", "client_3"]
    pd.testing.assert_frame_equal(table.loc[others], healthy["table"].set_index("data").loc[others],
                                  check_dtype=False)  # a NaN row makes the integer columns float
    assert (table.loc[others, "status"] == "ok").all()
    clients = got["clients"]
    assert clients.loc[0, "status"] == "diverged" and clients[["hn", "hd"]].isna().all(axis=None)
    details = json.loads(open(got["outputs"]["details"]).read())
    assert details["diverged_clients"] == [2] and details["data"]["client_2"]["status"] == "diverged"


def killed_after_two_parts(trained, tmp_path, monkeypatch):
    """The Hessian job of the trained run at round 1, killed while analysing its third part (the aggregate and client 0
    finished, in tmp_path / _progress): its arguments, outputs, and the list that counts `analyse` calls from now."""
    from fedscape.analysis.hessian import stage as stage_mod

    settings = hessian_job_settings(trained["config"], trained["runs"], trained["run"], 1)
    args = (settings, trained["trajectory"], trained["partition"])
    outputs = {key: str(tmp_path / name) for key, name in JOB_FILES.items()}
    calls = killed_at_call(monkeypatch, stage_mod, "analyse", 3,
                           lambda: hessian_stage(*args, outputs, tmp_path / "_progress"))
    return args, outputs, calls


def test_a_killed_job_resumes_after_its_last_finished_part_with_the_same_outputs(trained, tmp_path, monkeypatch):
    # Prepare
    args, outputs, calls = killed_after_two_parts(trained, tmp_path, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "_progress").iterdir()) == ["all.pt", "client_0.pt"]
    # plain tensors (read without unpickling objects); a client part keeps its half-diagonals, not its eigenvectors
    aggregate, client = (torch.load(tmp_path / "_progress" / f, weights_only=True)["part"]
                         for f in ("all.pt", "client_0.pt"))
    assert aggregate["eigen"]["vectors"].shape[0] == 2 and client["eigen"]["vectors"].numel() == 0
    assert [h.shape for h in client["hutchinson"]["quarters"]] == [aggregate["eigen"]["vectors"].shape[1:]] * 4

    # Execute: the rerun computes the three other clients only
    hessian_stage(*args, outputs, tmp_path / "_progress", EigenStore(tmp_path / "resumed", 1))

    # Assert: the outputs of an uninterrupted job, and the parts removed at the end
    assert len(calls) == 3 and not (tmp_path / "_progress").exists()
    whole = {key: str(tmp_path / f"whole_{name}") for key, name in JOB_FILES.items()}
    hessian_stage(*args, whole, eigen_store=EigenStore(tmp_path / "whole", 1))
    for key in ("table", "clients", "density"):
        pd.testing.assert_frame_equal(pd.read_csv(outputs[key]), pd.read_csv(whole[key]))
    resumed, fresh = (json.loads(open(o["details"]).read()) for o in (outputs, whole))
    for d in (resumed, fresh):  # measured times apart
        d.pop("seconds")
        for part in d["data"].values():
            part.pop("seconds")
    assert resumed == fresh
    # the eigenpairs kept for the plane job: those of the resumed aggregate part
    kept = [torch.load(tmp_path / d / "all.pt", weights_only=True)["part"] for d in ("resumed", "whole")]
    assert kept[0]["values"] == kept[1]["values"] and kept[0]["n_eval"] == kept[1]["n_eval"]
    assert all(torch.equal(kept[0][k], kept[1][k]) for k in ("d1", "d2"))


def test_parts_of_another_job_s_inputs_are_not_resumed(trained, tmp_path, monkeypatch):
    # Prepare: the job killed after two parts; then its inputs change (another progress key: a remade trajectory)
    from fedscape.analysis.hessian import stage as stage_mod

    args, outputs, calls = killed_after_two_parts(trained, tmp_path, monkeypatch)
    monkeypatch.setattr(stage_mod, "progress_key", lambda *a, **k: "the key of other inputs")

    # Execute
    hessian_stage(*args, outputs, tmp_path / "_progress")

    # Assert: every part computed again (the aggregate and 4 clients)
    assert len(calls) == 5


def test_a_job_that_copies_a_shared_result_removes_the_parts_a_killed_attempt_left(trained, tmp_path, monkeypatch):
    # Prepare: parts of a killed attempt; then the job is planned as a copy of another run's round-0 result
    from fedscape.analysis.hessian import shared

    killed_after_two_parts(trained, tmp_path, monkeypatch)
    monkeypatch.setattr(shared, "copy_shared_job", lambda *a: None)
    settings = {**hessian_job_settings(trained["config"], trained["runs"], trained["run"], 1), "shared_from": "r"}
    monkeypatch.setattr(shared.HessianJob, "from_settings", classmethod(lambda cls, s: type("J", (), {
        "shared_from": s["shared_from"], "run_id": "x", "round": 0})()))

    # Execute
    shared.hessian_job(settings, {f"source_{k}": "" for k in JOB_FILES}, {}, 1, tmp_path / "_progress")

    # Assert
    assert not (tmp_path / "_progress").exists()
