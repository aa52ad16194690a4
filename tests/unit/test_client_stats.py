"""Client-update statistics: drift, gradient diversity, update cosine, L2 to final; engine hook and backfill."""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest
import torch
from helpers.figures import assert_figure_files
from helpers.resume import killed_at_call

from fedscape.analysis.client_stats import stage as stage_mod
from fedscape.analysis.client_stats.definitions import CLIENT_STATS_COLUMNS, CLIENT_STATS_FIGURE_COLUMNS
from fedscape.analysis.client_stats.figures import before_divergence, client_stats_figure_job, seed_statistics
from fedscape.analysis.client_stats.stage import client_stats_job
from fedscape.fl.client_stats import (
    client_drift,
    cosine_similarity,
    gradient_diversity,
    l2_to_final,
    round_stats,
    stats_from_checkpoints,
    update_cosine_mean,
)
from fedscape.fl.settings import CLIENT_UPDATES_COLUMNS
from fedscape.models.checkpoint import CheckpointError, ModelMeta, save_trajectory


@pytest.mark.parametrize("m", [1, 2, 5, 10])
def test_gradient_diversity_of_identical_updates_is_one_over_m(m):
    g = torch.randn(1, 50, generator=torch.Generator().manual_seed(m))
    updates = g.repeat(m, 1)

    assert gradient_diversity(updates) == pytest.approx(1 / m, rel=1e-12)


@pytest.mark.parametrize("m", [2, 3, 8])
def test_gradient_diversity_of_orthogonal_updates_is_one(m):
    q, _ = torch.linalg.qr(torch.randn(40, m, generator=torch.Generator().manual_seed(m), dtype=torch.float64))
    scales = torch.arange(1, m + 1, dtype=torch.float64)  # different norms: still exactly 1
    updates = (q.T * scales[:, None]).float()

    assert gradient_diversity(updates) == pytest.approx(1.0, rel=1e-5)
    assert update_cosine_mean(updates) == pytest.approx(0.0, abs=1e-6)


def test_gradient_diversity_of_cancelling_and_zero_updates():
    u = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])

    assert gradient_diversity(u) == math.inf
    assert math.isnan(gradient_diversity(torch.zeros(3, 4)))
    assert update_cosine_mean(u) == pytest.approx(-1.0)


def test_update_cosine_leaves_out_the_pairs_of_a_zero_update():
    # Prepare: three updates, one of them zero (a client that did not move has no direction)
    gen = torch.Generator().manual_seed(1)
    u, v = torch.randn(30, generator=gen), torch.randn(30, generator=gen)

    # Execute / Assert: the mean over the one pair of nonzero updates; no such pair at all gives NaN
    assert update_cosine_mean(torch.stack([u, torch.zeros(30), v])) == pytest.approx(cosine_similarity(u, v), abs=1e-6)
    assert math.isnan(update_cosine_mean(torch.stack([u, torch.zeros(30), torch.zeros(30)])))



def test_the_statistics_of_a_round_with_a_non_finite_update_are_nan():
    # Prepare: two close updates and one that overflowed
    updates = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [math.nan, 0, 0, 0]])

    # Execute / Assert: no mean over the finite pairs alone, as the diversity is not one
    assert math.isnan(update_cosine_mean(updates)) and math.isnan(gradient_diversity(updates))
    assert update_cosine_mean(updates[:2]) == pytest.approx(cosine_similarity(updates[0], updates[1]))

def test_cosine_is_symmetric_and_one_for_identical_updates():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(100, generator=gen), torch.randn(100, generator=gen)

    assert cosine_similarity(u, v) == pytest.approx(cosine_similarity(v, u), abs=1e-15)
    assert cosine_similarity(u, u) == pytest.approx(1.0, abs=1e-12)
    assert cosine_similarity(u, 3 * u) == pytest.approx(1.0, abs=1e-12)
    assert update_cosine_mean(torch.stack([u, u, u])) == pytest.approx(1.0, abs=1e-6)
    assert update_cosine_mean(torch.stack([u, v])) == pytest.approx(cosine_similarity(u, v), abs=1e-6)
    assert math.isnan(update_cosine_mean(u[None]))  # one client: no pair


def test_client_drift_and_round_stats_by_hand():
    start = torch.zeros(2)
    clients = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    aggregate = clients.mean(0)  # (1.5, 2)

    stats = round_stats(start, clients, aggregate)

    assert client_drift(start, clients) == pytest.approx(3.5)
    assert stats["drift_from_start"] == pytest.approx(3.5)
    assert stats["drift_from_aggregate"] == pytest.approx(2.5)  # both clients sit 2.5 from (1.5, 2)
    assert stats["gradient_diversity"] == pytest.approx(25 / 25)  # orthogonal updates
    assert stats["update_cosine_mean"] == pytest.approx(0.0)


def test_client_drift_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="client models"):
        client_drift(torch.zeros(3), torch.zeros(2, 4))


def test_l2_to_final():
    params = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 8.0]])

    assert l2_to_final(params).tolist() == pytest.approx([math.hypot(3, 8), 4.0, 0.0])


def _tiny_federation(rounds: int, participation: float):
    from fedscape.data.federated import FederatedData
    from fedscape.fl.engine import run_federated
    from fedscape.fl.settings import TrainConfig
    from fedscape.fl.strategies.registry import make_strategy
    from fedscape.models.registry import build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (120,), generator=gen)
    data = FederatedData(x, y, [torch.arange(k, 120, 4) for k in range(4)], x[:20], y[:20])
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    cfg = TrainConfig(rounds=rounds, local_epochs=1, batch_size=16, lr=0.1, participation=participation,
                      save_clients_at=tuple(range(1, rounds + 1)))
    return run_federated(model, data, make_strategy("fedavg", {}), cfg)


@pytest.mark.parametrize("participation", [1.0, 0.5])
def test_engine_records_stats_every_round_equal_to_checkpoint_recomputation(participation):
    result = _tiny_federation(rounds=3, participation=participation)

    recomputed = stats_from_checkpoints(result.params, result.rounds, result.clients)

    assert [s["round"] for s in result.client_stats] == [1, 2, 3]
    assert [s["num_clients"] for s in result.client_stats] == [round(4 * participation)] * 3
    for hook, again in zip(result.client_stats, recomputed, strict=True):
        assert hook.keys() == again.keys()
        for key in hook:
            assert hook[key] == pytest.approx(again[key], rel=1e-9, nan_ok=True)
    assert all(0 < s["drift_from_aggregate"] < s["drift_from_start"] * 2 for s in result.client_stats)


def test_client_stats_figure_plots_drift_as_the_mean_over_seeds(tmp_path):
    """The figure's data: both drifts beside the other statistics, one row per alpha and round, seeds averaged."""
    # Prepare: drift grows with the round, differs between alphas and between three seeds by 1, 2 and 6, whose mean
    # (3) is neither their median (2) nor the mean of two of them
    def run_id(alpha, seed):
        return f"digits/cnn_small/init~random/algo~fedavg/alpha~{alpha}/clients~10/part~1.0/seed~{seed}"

    offsets = {0: 1.0, 1: 2.0, 2: 6.0}
    rows = [{"run_id": run_id(alpha, seed), "round": r, "drift_from_start": scale * r + offset,
             "drift_from_aggregate": scale * r / 2 + offset, "gradient_diversity": 1.0 + r,
             "update_cosine_mean": 0.5, "l2_to_final": 3.0 - r}
            for alpha, scale in (("iid", 1.0), ("0.1", 4.0)) for seed, offset in offsets.items() for r in range(1, 4)]
    pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS).to_csv(tmp_path / "client_stats.csv", index=False)
    outputs = {ext: tmp_path / f"client_stats.{ext}" for ext in ("png", "pdf", "csv")}

    # Execute
    client_stats_figure_job(tmp_path / "client_stats.csv", _rounds_all_ok(tmp_path, rows), outputs)

    # Assert
    data = assert_figure_files(outputs)
    assert sorted(data.columns) == sorted(CLIENT_STATS_FIGURE_COLUMNS)
    assert len(data) == 2 * 3
    assert (data["n_seeds"] == 3).all() and (data["n_seeds_l2_to_final"] == 3).all()
    for alpha, scale in (("iid", 1.0), ("0.1", 4.0)):
        line = data[data["alpha"].astype(str) == alpha].sort_values("round")
        assert line["drift_from_start"].tolist() == pytest.approx([scale * r + 3 for r in range(1, 4)])
        assert line["drift_from_aggregate"].tolist() == pytest.approx([scale * r / 2 + 3 for r in range(1, 4)])


def _rounds_all_ok(tmp_path, rows):
    """rounds.csv of the runs of client_stats.csv `rows`: every round ok (no run diverged)."""
    rounds = pd.DataFrame(rows)[["run_id", "round"]].assign(status="ok")
    rounds.to_csv(tmp_path / "rounds.csv", index=False)
    return tmp_path / "rounds.csv"


def _drawn_client_stats(tmp_path, monkeypatch, rows):
    """The figure of client_stats.csv `rows`: the drift-from-aggregate panel (the one group's) and the CSV."""
    from fedscape.analysis.client_stats import figures as client_figures

    pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS).to_csv(tmp_path / "client_stats.csv", index=False)
    outputs = {ext: tmp_path / f"client_stats.{ext}" for ext in ("png", "pdf", "csv")}
    drawn = {}
    save = client_figures.save_figure_outputs
    monkeypatch.setattr(client_figures, "save_figure_outputs",
                        lambda fig, *a: drawn.update(fig=fig) or save(fig, *a))
    client_stats_figure_job(tmp_path / "client_stats.csv", _rounds_all_ok(tmp_path, rows), outputs)
    (ax,) = [ax for ax in drawn["fig"].axes if ax.get_title() == "client drift from the aggregate"]
    return ax, assert_figure_files(outputs)


@pytest.mark.parametrize(("clients", "part", "drift", "note"), [
    (4, "0.25", 1e-9, "one client per round: 0 up to float rounding"),  # the aggregate is the one client's model
    (10, "1.0", 1e-9, "0 up to float rounding"),  # ten clients whose models coincide (no cause named)
    (4, "0.25", 0.05, None),  # one client, a server step that moves the aggregate (FedAvgM): a real drift
    (10, "1.0", 0.05, None),
])
def test_a_drift_from_the_aggregate_of_float_rounding_is_drawn_as_zero_and_says_so(tmp_path, monkeypatch, clients,
                                                                                   part, drift, note):
    # Prepare: the drift from the start ~0.1, the drift from the aggregate `drift` times a wobble per round
    rid = f"digits/cnn_small/init~random/algo~fedavg/alpha~0.1/clients~{clients}/part~{part}/seed~0"
    wobble = (1.0, 3.0, 0.5, 2.0)
    rows = [{"run_id": rid, "round": r, "drift_from_start": 0.1 + r / 100, "drift_from_aggregate": drift * w,
             "gradient_diversity": 1.0, "update_cosine_mean": math.nan, "l2_to_final": 4.0 - r}
            for r, w in enumerate(wobble, start=1)]

    # Execute
    ax, data = _drawn_client_stats(tmp_path, monkeypatch, rows)

    # Assert: rounding drawn as 0 on a fixed range with the panel's note, a real drift as measured; the CSV keeps
    # the measured values
    (line,) = ax.lines
    texts = [t.get_text() for t in ax.texts]
    if note is None:
        assert list(line.get_ydata()) == pytest.approx([drift * w for w in wobble], rel=1e-12) and texts == []
        assert ax.get_ylim()[0] > 0
    else:
        assert list(line.get_ydata()) == [0.0] * 4 and ax.get_ylim() == (-1.0, 1.0)
        assert texts == [f"{note}\n(below 0.0001 × the drift from the start)"]
    assert data["drift_from_aggregate"].tolist() == pytest.approx([drift * w for w in wobble], rel=1e-12)


def test_the_engine_s_drift_from_the_aggregate_with_one_client_per_round_is_drawn_as_zero(tmp_path, monkeypatch):
    # Prepare: four rounds of FedAvg with one client of four per round; its drift from the aggregate is float rounding
    result = _tiny_federation(rounds=4, participation=0.25)
    rid = "digits/mlp/init~random/algo~fedavg/alpha~iid/clients~4/part~0.25/seed~0"
    rows = [{"run_id": rid, **{k: s[k] for k in CLIENT_STATS_COLUMNS if k in s}, "l2_to_final": math.nan}
            for s in result.client_stats]
    assert all(0 <= s["drift_from_aggregate"] < 1e-6 * s["drift_from_start"] for s in result.client_stats)

    # Execute
    ax, _ = _drawn_client_stats(tmp_path, monkeypatch, rows)

    # Assert
    assert list(ax.lines[0].get_ydata()) == [0.0] * 4
    assert [t.get_text().split("\n")[0] for t in ax.texts] == ["one client per round: 0 up to float rounding"]


# Seed 2 of three diverged (rounds.csv: its `evaluated` rounds ok, then the `diverged` one); its loss and client
# statistics explode from round `explodes` on with finite weights, which the engine evaluates only at its eval_every
# rounds (a non-finite model at once); seeds 0 and 1 never diverged, rounds 0..8
@pytest.mark.parametrize(("evaluated", "diverged", "explodes", "kept"), [
    ((0, 1, 2, 3, 4), 5, 5, [0, 1, 2, 3, 4]),  # eval_every 1: up to the round before the diverged one
    ((0, 3), 6, 5, [0, 1, 2, 3]),  # eval_every 3: round 5 exploded unevaluated; up to the last ok evaluation
    ((0, 3), 4, 4, [0, 1, 2, 3]),  # eval_every 3, a non-finite model evaluated at once at round 4
    ((0, 2, 4), 6, 6, [0, 1, 2, 3, 4]),  # eval_every 2, exploded at the evaluated round 6: round 5 left out too
], ids=["every_round", "exploded_between_evaluations", "non_finite_evaluated_at_once", "exploded_at_an_evaluation"])
def test_a_diverged_run_counts_up_to_its_last_ok_evaluation(evaluated, diverged, explodes, kept):
    # Prepare
    def run_id(seed):
        return f"digits/cnn_small/init~random/algo~fedavg/alpha~0.1/clients~10/part~1.0/seed~{seed}"

    last = {0: 8, 1: 8, 2: diverged}
    rows = [{"run_id": run_id(seed), "round": r, "drift_from_start": 1e6 if seed == 2 and r >= explodes else 1.0,
             "drift_from_aggregate": 0.5, "gradient_diversity": 1.0, "update_cosine_mean": 0.1,
             "l2_to_final": math.nan} for seed in (0, 1, 2) for r in range(last[seed] + 1)]
    status = [{"run_id": run_id(seed), "round": r, "status": "ok"} for seed in (0, 1) for r in range(0, 9, 2)]
    status += [{"run_id": run_id(2), "round": r, "status": "ok"} for r in evaluated]
    status.append({"run_id": run_id(2), "round": diverged, "status": "diverged"})
    stats = pd.DataFrame(rows, columns=CLIENT_STATS_COLUMNS)

    # Execute
    counted = before_divergence(stats, pd.DataFrame(status))
    mean = seed_statistics(counted.assign(alpha="0.1", init="random")).set_index("round")

    # Assert: the runs that did not diverge whole, the diverged one up to its last ok evaluation; no exploding round
    # in the mean
    assert counted.groupby("run_id")["round"].apply(list).to_dict() == {
        run_id(0): list(range(9)), run_id(1): list(range(9)), run_id(2): kept}
    assert mean["drift_from_start"].tolist() == [1.0] * 9
    assert mean["n_seeds"].tolist() == [3 if r in kept else 2 for r in range(9)]


# -- the client_stats job: resumed after a kill ------------------------------------------------------------------
# Three runs' inputs: (status, kept rounds, last round): a run that diverged at round 3, one that kept every round, one
# that kept every other (training.save_every 2: NaN l2_to_final in the rounds between)
RUNS = (("diverged", [0, 1, 2, 3], 3), ("ok", [0, 1, 2, 3, 4, 5], 5), ("ok", [0, 2, 4, 5], 5))


def _write_run(run_dir, k: int, seed: int) -> None:
    """Run `k` of RUNS in `run_dir`: trajectory.pt and client_updates.csv of random numbers from `seed` (a NaN cosine
    in round 1: a table cell left empty)."""
    status, rounds, last = RUNS[k]
    g = torch.Generator().manual_seed(seed)
    meta = {"run_id": _run_id(k), "status": status, "settings": {"training": {"rounds": last,
                                                                              "save_every": 2 if k == 2 else 1}}}
    save_trajectory(run_dir / "trajectory.pt", torch.randn(len(rounds), 6, generator=g),
                    torch.zeros(len(rounds), 0), torch.tensor(rounds), ModelMeta("mlp", 10, 1, 8), meta)
    stats = torch.rand(last, 4, generator=g).double()
    stats[0, 3] = math.nan
    updates = pd.DataFrame(stats.numpy(), columns=CLIENT_UPDATES_COLUMNS[3:])
    updates.insert(0, "num_clients", 3)
    updates.insert(0, "round", range(1, last + 1))
    updates.insert(0, "run_id", _run_id(k))
    updates.to_csv(run_dir / "client_updates.csv", index=False)


def _run_id(k: int) -> str:
    return f"tiny/mlp/init~random/algo~fedavg/alpha~iid/clients~3/part~1.0/seed~{k}"


@pytest.fixture
def three_runs(tmp_path):
    """The client_stats job of the three RUNS: (settings, client_updates.csv paths, trajectory.pt paths)."""
    dirs = [tmp_path / "train" / f"run{k}" for k in range(len(RUNS))]
    for k, run_dir in enumerate(dirs):
        run_dir.mkdir(parents=True)
        _write_run(run_dir, k, seed=k)
    settings = {"run_ids": [_run_id(k) for k in range(len(RUNS))]}  # as the rule's params give them (version 1)
    return settings, [d / "client_updates.csv" for d in dirs], [d / "trajectory.pt" for d in dirs]


def test_a_killed_client_stats_job_resumes_after_its_last_finished_run(three_runs, tmp_path, monkeypatch, caplog):
    # Prepare: the table of an unbroken job (no progress kept)
    settings, updates, trajectories = three_runs
    client_stats_job(settings, updates, trajectories, tmp_path / "unbroken.csv")
    progress, output = tmp_path / "_progress", tmp_path / "client_stats.csv"

    def job():
        client_stats_job(settings, updates, trajectories, output, progress)

    # Execute: killed while it reads the third run's trajectory, then run again
    loads = killed_at_call(monkeypatch, stage_mod, "load_trajectory", 3, job)
    kept, written = sorted(p.relative_to(progress).as_posix() for p in progress.rglob("*.pt")), output.exists()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="fedscape.client_stats")
    job()

    # Assert: the first two runs' rows kept, read back and not computed again (one trajectory read: the third run's);
    # the diverged run's warning said again; the table byte for byte the unbroken job's; the progress gone
    assert kept == [f"{_run_id(k)}.pt" for k in (0, 1)] and not written
    assert len(loads) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(f"progress is kept in {progress} after every run")
    assert [m for m in messages if m.startswith("client stats")] == [
        f"client stats 1/3: {_run_id(0)} (4 rounds) (resumed)", f"client stats 2/3: {_run_id(1)} (6 rounds) (resumed)",
        f"client stats 3/3: {_run_id(2)} (6 rounds)"]
    assert sum("l2_to_final is NaN" in m for m in messages) == 1
    assert output.read_bytes() == (tmp_path / "unbroken.csv").read_bytes()
    assert not progress.exists()


@pytest.mark.parametrize(("change", "computed"), [
    (None, [2]),  # the run the kill cut short alone
    ("trajectory", [0, 2]),  # run 0's trajectory remade with other numbers
    ("client_updates", [0, 2]),  # run 0's client_updates.csv remade with other numbers
    ("result_version", [0, 1, 2]),  # another job: none of its parts is this one's
])
def test_a_rerun_computes_the_runs_whose_inputs_or_job_changed_since_the_kill(three_runs, tmp_path, monkeypatch,
                                                                             caplog, change, computed):
    # Prepare: a job killed at its third run; then `change`, and the table of an unbroken job of what is there now
    settings, updates, trajectories = three_runs
    progress, output = tmp_path / "_progress", tmp_path / "client_stats.csv"
    killed_at_call(monkeypatch, stage_mod, "load_trajectory", 3,
                   lambda: client_stats_job(settings, updates, trajectories, output, progress))
    if change in ("trajectory", "client_updates"):
        remade = tmp_path / "remade"
        remade.mkdir()
        _write_run(remade, 0, seed=100)
        (remade / f"{change}.{'pt' if change == 'trajectory' else 'csv'}").replace(
            (trajectories if change == "trajectory" else updates)[0])
    if change == "result_version":
        settings = {**settings, "result_version": 2}
    client_stats_job(settings, updates, trajectories, tmp_path / "unbroken.csv")
    caplog.clear()
    caplog.set_level(logging.INFO, logger="fedscape.client_stats")

    # Execute
    client_stats_job(settings, updates, trajectories, output, progress)

    # Assert: the changed runs computed (not resumed), and the table is that of an unbroken job
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("client stats")]
    assert [k for k, line in enumerate(done) if not line.endswith("(resumed)")] == computed
    assert output.read_bytes() == (tmp_path / "unbroken.csv").read_bytes()
    assert not progress.exists()



def _swa_run(run_dir, broken: str | None) -> None:
    """An ok SWA run of three rounds in `run_dir` (no client updates), whose SWA model or last global model is NaN
    where `broken` says so."""
    params = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 8.0], [6.0, 8.0]])
    swa_params = torch.tensor([4.0, 6.0])
    if broken == "swa":
        swa_params[0] = math.nan
    if broken == "global":
        params[-1, 0] = math.nan
    meta = {"run_id": _run_id(0), "status": "ok", "settings": {"training": {"rounds": 3}}}
    save_trajectory(run_dir / "trajectory.pt", params, torch.zeros(4, 0), torch.arange(4), ModelMeta("mlp", 10, 1, 8),
                    meta, swa={"params": swa_params, "buffers": torch.zeros(0), "rounds": [2, 3]})
    pd.DataFrame(columns=CLIENT_UPDATES_COLUMNS).to_csv(run_dir / "client_updates.csv", index=False)


def _swa_run_stats(run_dir) -> pd.DataFrame:
    client_stats_job({"run_ids": [_run_id(0)]}, [run_dir / "client_updates.csv"], [run_dir / "trajectory.pt"],
                     run_dir / "client_stats.csv")
    return pd.read_csv(run_dir / "client_stats.csv")


@pytest.mark.parametrize("broken", [None, "swa"])
def test_l2_to_final_of_an_swa_run_is_to_its_last_global_model(tmp_path, broken):
    # Prepare: the SWA model is not l2_to_final's reference, so whether it is finite does not matter
    _swa_run(tmp_path, broken)

    # Execute
    table = _swa_run_stats(tmp_path)

    # Assert: the distances to the last global model
    assert table["l2_to_final"].tolist() == pytest.approx([10.0, math.hypot(3, 4), 3.0, 0.0])


def test_an_swa_run_marked_ok_whose_last_global_model_is_nan_is_a_damaged_file(tmp_path):
    # Prepare: a finite SWA model beside it does not make the run's reference usable
    _swa_run(tmp_path, "global")

    # Execute / Assert
    with pytest.raises(CheckpointError, match="the model of round 3 has NaN/inf parameters although the run is marked"):
        _swa_run_stats(tmp_path)
