"""What a resumable job's saved progress belongs to (`fedscape.stages.progress`), and how the engine treats progress
that is not its own: a run resumes only the rounds it would have trained itself."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time

import pytest
import torch
import yaml
from helpers.plans import all_settings
from helpers.resume import killed_after_round
from helpers.workflow import ROOT, TINY_CONFIG

from fedscape.core.config import load_schema
from fedscape.core.manifest import code_label, code_version_label, note, noted, start_notes, write_record
from fedscape.core.paths import TRAIN_FILE_NAMES
from fedscape.core.runs import build_runs
from fedscape.data.federated import FederatedData
from fedscape.data.locations import with_data_locations, without_data_locations
from fedscape.fl import engine as engine_mod
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import MEMORY_KEYS, NEUTRAL_TRAINING_KEYS, TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.models.checkpoint import CheckpointError, load_trajectory, save_trajectory
from fedscape.models.registry import build_model
from fedscape.plan.init import init_settings
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config, load_config
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.progress import Parts, note_codes, parts_compute, progress_key, resume_settings
from fedscape.stages.train import train_job
from fedscape.stages.train_settings import TrainJob

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SHIPPED = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "papers").glob("*.yaml")), TINY_CONFIG]


def _moved(config: dict) -> dict:
    """`config` with every data set and every pretrained init's proxy folders somewhere else."""
    moved = copy.deepcopy(config)
    for name, options in moved["datasets"].items():
        options.update(data_dir=f"/moved/{name}", download=True)
    for spec in moved["inits"].values():
        if spec["kind"] == "pretrained":
            spec["proxy_data_dir"] = "/moved/proxy"
            if spec.get("proxy_dir"):
                spec["proxy_dir"] = "/moved/imagenet32"
    return moved


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_without_data_locations_gives_back_the_planned_settings_of_every_job(path):
    # Prepare
    config = load_config(path, SCHEMA)
    moved = _moved(config)
    start_notes()  # with_data_locations notes what a job reads, as at a job's start

    # Execute
    jobs = [(settings, with_data_locations(settings, moved)) for settings in all_settings(config)]

    # Assert: the locations change a job that reads data, and clearing them gives back what was planned
    assert any(located != settings for settings, located in jobs)
    for settings, located in jobs:
        assert without_data_locations(located) == settings


def _tiny_config(seed: int = 0, rounds: int = 3) -> dict:
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    config = {key: raw[key] for key in ("datasets", "models", "num_clients", "partition", "training")}
    config.update(inits={"random": {"kind": "random", "seed": seed}}, algorithms={"fedavg": {"name": "fedavg"}},
                  alphas=["iid"], seeds=[0], participation=[1.0])
    config["training"] = {**config["training"], "rounds": rounds, "save_clients_at": [], "device": "cpu"}
    check_config(config, load_schema(SCHEMA))
    return config


def _partition(config: dict, directory) -> str:
    (run,) = build_runs(config)
    path = directory / "partition.npz"
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), path,
                  directory / "counts.csv")
    return path


def _init(config: dict, path) -> None:
    (run,) = build_runs(config)
    init_job(init_settings(config, build_runs(config), run.dataset, run.model, run.init), path)


def _train(config: dict, partition, init, directory) -> torch.Tensor:
    (run,) = build_runs(config)
    directory.mkdir(exist_ok=True)
    outputs = {name: str(directory / file) for name, file in TRAIN_FILE_NAMES.items()}
    train_job(train_settings(config, run), partition, init, outputs, directory / "_progress")
    return load_trajectory(outputs["trajectory"]).params


def test_a_run_killed_and_then_given_a_remade_init_starts_from_the_new_init(tmp_path, monkeypatch):
    # Prepare: a run killed after round 1, then its init remade with another seed (the train job's own settings
    # do not hold the init's seed, so only the init file says the run must start over)
    old, new = _tiny_config(seed=0), _tiny_config(seed=1)
    (run,) = build_runs(old)
    assert train_settings(old, run) == train_settings(new, run)
    partition = _partition(old, tmp_path)
    _init(old, tmp_path / "init.pt")
    killed_after_round(monkeypatch, 1, lambda: _train(old, partition, tmp_path / "init.pt", tmp_path / "run"))
    _init(new, tmp_path / "init.pt")

    # Execute
    resumed = _train(new, partition, tmp_path / "init.pt", tmp_path / "run")

    # Assert: the run equals one trained from the new init alone, not the old run's rounds continued
    _init(new, tmp_path / "new_init.pt")
    _init(old, tmp_path / "old_init.pt")
    fresh_new = _train(new, partition, tmp_path / "new_init.pt", tmp_path / "fresh_new")
    fresh_old = _train(old, partition, tmp_path / "old_init.pt", tmp_path / "fresh_old")
    assert torch.equal(resumed, fresh_new)
    assert not torch.allclose(resumed, fresh_old)


def test_a_train_job_from_an_init_that_already_diverged_names_the_init_and_writes_nothing(tmp_path):
    # Prepare: an init whose weights are scaled up 1e4-fold (a finite training loss far above DIVERGED_LOSS)
    config = _tiny_config()
    partition = _partition(config, tmp_path)
    _init(config, tmp_path / "init.pt")
    init = load_trajectory(tmp_path / "init.pt")
    save_trajectory(tmp_path / "init.pt", init.params * 1e4, init.buffers, init.rounds, init.model_meta, init.meta)

    # Execute / Assert: the error names the init file and how to remake it; no output of the run exists
    with pytest.raises(CheckpointError, match=r"init\.pt: the initial model's training loss .* make it again"):
        _train(config, partition, tmp_path / "init.pt", tmp_path / "run")
    assert not any((tmp_path / "run" / name).exists() for name in TRAIN_FILE_NAMES.values())


def test_a_run_killed_and_rerun_with_the_same_inputs_resumes(tmp_path, monkeypatch, caplog):
    # Prepare: the init remade with the same settings writes the same bytes, so the run still resumes (a moved data
    # set keeps the key too: the test of the key below)
    config = _tiny_config()
    partition = _partition(config, tmp_path)
    _init(config, tmp_path / "init.pt")
    killed_after_round(monkeypatch, 2, lambda: _train(config, partition, tmp_path / "init.pt", tmp_path / "run"))
    _init(config, tmp_path / "init.pt")

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        resumed = _train(config, partition, tmp_path / "init.pt", tmp_path / "run")

    # Assert: the same models, and the same checkpoint files, byte for byte
    assert "resuming after round 2/3" in caplog.text
    assert torch.equal(resumed, _train(config, partition, tmp_path / "init.pt", tmp_path / "fresh"))
    for name in ("trajectory", "clients"):
        file = TRAIN_FILE_NAMES[name]
        assert (tmp_path / "run" / file).read_bytes() == (tmp_path / "fresh" / file).read_bytes(), name


@pytest.mark.parametrize(("change", "resumes"), [
    ({"client_chunk_size": 2, "eval_batch_size": 7}, True),  # what a memory hint names: how, not what
    ({"client_parallel": "sequential"}, True),
    ({"lr": 0.02}, False),  # what the run computes: it starts over
])
def test_a_run_killed_and_rerun_with_other_memory_settings_resumes(tmp_path, monkeypatch, caplog, change, resumes):
    # Prepare: a run killed after round 1, its rounds stacked 64 clients at a time
    config = _tiny_config()
    partition = _partition(config, tmp_path)
    _init(config, tmp_path / "init.pt")
    killed_after_round(monkeypatch, 1, lambda: _train(config, partition, tmp_path / "init.pt", tmp_path / "run"))
    changed = {**config, "training": {**config["training"], **change}}

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        rerun = _train(changed, partition, tmp_path / "init.pt", tmp_path / "run")

    # Assert: resumed after round 1 where only memory settings changed (its rounds 0 and 1 as saved), and then the
    # same run to the float rounding by which the two settings' uninterrupted runs differ (float32 chaos between
    # stacked and sequential clients, 3e-4 here; nothing between chunk sizes)
    (run,) = build_runs(config)
    same_key = (resume_settings(train_settings(config, run), TrainJob)
                == resume_settings(train_settings(changed, run), TrainJob))
    assert same_key == resumes == ("resuming after round 1/3" in caplog.text)
    fresh = _train(changed, partition, tmp_path / "init.pt", tmp_path / "fresh")
    meta = json.loads((tmp_path / "run" / TRAIN_FILE_NAMES["meta"]).read_text())
    if resumes:
        first = _train(config, partition, tmp_path / "init.pt", tmp_path / "first")
        spread = (fresh - first).abs().max().item()
        assert torch.equal(rerun[:2], first[:2])
        assert (rerun - fresh).abs().max().item() <= 2 * spread + 1e-6
        # the record names each attempt's first round, memory settings, device and precision; an uninterrupted
        # run's names none
        before, after = (train_settings(c, run)["training"] for c in (config, changed))
        executions = ["vectorized", "sequential" if change.get("client_parallel") == "sequential" else "vectorized"]
        device = {"device": "cpu", "device_name": meta["device_name"], "precision_used": "fp32",
                  "torch": torch.__version__, "code": code_version_label()}
        assert meta["attempts"] == [
            {**{k: settings[k] for k in MEMORY_KEYS}, **device, "from_round": first, "execution": execution}
            for settings, first, execution in zip((before, after), (1, 2), executions, strict=True)]
        assert "attempts" not in json.loads((tmp_path / "first" / TRAIN_FILE_NAMES["meta"]).read_text())
        # in meta.json alone: the checkpoints record what an unbroken run's do
        assert "attempts" not in load_trajectory(tmp_path / "run" / TRAIN_FILE_NAMES["trajectory"]).meta
    else:
        assert torch.equal(rerun, fresh) and "attempts" not in meta


@pytest.mark.parametrize(("algorithm", "model", "options", "hparams"), [
    ("scaffold", "cnn_small", {}, {}),  # per-client control variates in the strategy
    ("fednova", "cnn_small", {}, {}),
    ("feddyn", "resnet20", {"norm": "batch"}, {}),  # per-client state, and each client's running statistics
    ("moon", "resnet20", {"norm": "batch"}, {"head": "projection"}),  # each client's previous model
])
@pytest.mark.parametrize(("first", "then"), [({"client_parallel": "vectorized", "client_chunk_size": 4},
                                              {"client_parallel": "sequential"}),
                                             ({"client_parallel": "sequential"},
                                              {"client_parallel": "vectorized", "client_chunk_size": 1})])
def test_a_run_resumed_with_its_clients_trained_otherwise_equals_one_run_in_float64(
        float64_default, monkeypatch, tmp_path, algorithm, model, options, hparams, first, then):
    # Prepare: 5 uneven clients, 4 of them a round; killed after round 2 under `first`
    import dataclasses

    from helpers.synthetic import shard_data
    from helpers.vectorized import model_of

    data = shard_data([21, 9, 5, 14, 11])
    cfg = TrainConfig(rounds=4, local_epochs=1, batch_size=8, lr=0.05, momentum=0.9, participation=0.8, seed=3)

    def run(changes: dict, progress=None):
        strategy = make_strategy(algorithm, hparams)
        net = strategy.prepare_model(model_of(model, **options), cfg.seed)
        return run_federated(net, data, strategy, dataclasses.replace(cfg, **changes), progress_dir=progress,
                             progress_key="k")

    killed_after_round(monkeypatch, 2, lambda: run(first, tmp_path))

    # Execute
    resumed = run(then, tmp_path)

    # Assert: the strategy's per-client state and the clients' draws carry over, whichever trainer took over
    uninterrupted = run(then)
    assert [a["execution"] for a in resumed.attempts] == [first["client_parallel"], then["client_parallel"]]
    torch.testing.assert_close(resumed.params, uninterrupted.params, rtol=0, atol=1e-10)
    torch.testing.assert_close(resumed.buffers, uninterrupted.buffers, rtol=0, atol=1e-10)


@pytest.mark.parametrize("change", [{"client_chunk_size": 2}, {"client_parallel": "sequential"}])
def test_a_finished_run_whose_outputs_are_lost_records_the_attempt_that_trained_it(tmp_path, monkeypatch, change):
    # Prepare: a run that saved its last round and was killed while writing its outputs (its progress kept)
    import fedscape.stages.train as train_mod
    from fedscape.report.cost import cost_table

    config = _tiny_config()
    partition = _partition(config, tmp_path)
    _init(config, tmp_path / "init.pt")

    def killed_writing(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill while writing")

    monkeypatch.setattr(train_mod, "save_trajectory", killed_writing)
    with pytest.raises(KeyboardInterrupt):
        _train(config, partition, tmp_path / "init.pt", tmp_path / "run")
    monkeypatch.undo()

    # Execute: rerun with other memory settings; every round is done, so this call trains none
    changed = {**config, "training": {**config["training"], **change}}
    _train(changed, partition, tmp_path / "init.pt", tmp_path / "run")

    # Assert: the record names the one attempt that trained the rounds (its memory settings and execution), not the
    # call that wrote the outputs, and cost.csv times the rounds as that attempt trained them
    (run,) = build_runs(config)
    meta = json.loads((tmp_path / "run" / TRAIN_FILE_NAMES["meta"]).read_text())
    before = train_settings(config, run)["training"]
    assert meta["attempts"] == [{**{k: before[k] for k in MEMORY_KEYS}, "device": "cpu",
                                 "device_name": meta["device_name"], "precision_used": "fp32",
                                 "torch": torch.__version__, "code": code_version_label(), "from_round": 1,
                                 "execution": "vectorized"}]
    assert meta["execution"] == "vectorized"
    cost = cost_table([(tmp_path / "run" / TRAIN_FILE_NAMES["metrics"], tmp_path / "run" / TRAIN_FILE_NAMES["meta"])])
    assert cost["execution"].tolist() == ["vectorized"]


# -- the code of each attempt and part -------------------------------------------------------------
A, B = "a" * 40, "b" * 40  # two commits of the checkout: a `git pull` between a job's attempts


@pytest.fixture
def job_notes(monkeypatch):
    """The notes of the jobs a test runs (`core.manifest.note`), gone with it: a test that fails mid-way leaves no
    code noted for the next."""
    from fedscape.core import manifest

    monkeypatch.setattr(manifest, "_NOTES", {})


def _start_job(commit: str) -> str:
    """Begin a job's notes as `core.manifest.start_job` does, with its checkout clean at `commit`; the code's label."""
    start_notes()
    note(code={"fedscape": "0", "commit": commit, "dirty": False})
    return code_label(noted("code"))


@pytest.mark.parametrize(("killed_by", "attempts", "codes"), [
    (None, [], None),  # unbroken: no attempts and no codes, its meta as before
    (B, [B, B], None),  # resumed by the same code
    (A, [A, B], [A, B]),  # a `git pull` between the attempts
    ("old", [None, B], ["unrecorded", B]),  # rounds saved before attempts recorded their code
    ("older", [None, B], ["unrecorded", B]),  # rounds saved before attempts were kept: one attempt of unknown code
], ids=["unbroken", "same code", "other code", "old progress", "older progress"])
def test_a_run_resumed_by_other_code_records_the_code_of_each_attempt(tmp_path, monkeypatch, job_notes, killed_by,
                                                                      attempts, codes):
    # Prepare: a run killed after round 1 by code `killed_by` (old: its saved attempts without code; older: without
    # attempts), or none
    from fedscape.report.cost import cost_table

    config = _tiny_config()
    partition = _partition(config, tmp_path)
    _init(config, tmp_path / "init.pt")
    if killed_by is not None:
        _start_job(A if killed_by in ("old", "older") else killed_by)
        killed_after_round(monkeypatch, 1, lambda: _train(config, partition, tmp_path / "init.pt", tmp_path / "run"))
    if killed_by in ("old", "older"):
        state = torch.load(tmp_path / "run" / "_progress" / "state.pt", weights_only=True)
        state["attempts"] = [{k: v for k, v in a.items() if k != "code"} for a in state["attempts"]]
        if killed_by == "older":
            del state["attempts"]
        torch.save(state, tmp_path / "run" / "_progress" / "state.pt")

    # Execute: run (again) by code B, and write its record
    started = time.time()
    _start_job(B)
    _train(config, partition, tmp_path / "init.pt", tmp_path / "run")
    write_record(tmp_path / "record.json", [], started, root=tmp_path)

    # Assert: each attempt names its own code (one saved before attempts did: none); the record's code is the
    # finishing attempt's, and its codes every one where they differ
    meta = json.loads((tmp_path / "run" / TRAIN_FILE_NAMES["meta"]).read_text())
    record = json.loads((tmp_path / "record.json").read_text())
    assert [a.get("code") for a in meta.get("attempts", [])] == attempts
    assert ("attempts" in meta) == bool(attempts)
    assert record["code"]["commit"] == B
    assert record.get("codes") == codes
    # cost.csv reads every attempt, one of unknown compute too, and times each of the run's rounds
    cost = cost_table([(tmp_path / "run" / TRAIN_FILE_NAMES["metrics"], tmp_path / "run" / TRAIN_FILE_NAMES["meta"])])
    assert cost["num_rounds"].sum() == 3


@pytest.mark.parametrize(("codes", "finished_by", "listed"), [
    ([], B, None),  # nothing computed in attempts or parts
    ([B], B, None),  # unbroken
    ([A, A], A, None),  # resumed by the same code
    ([A, B], B, [A, B]),
    ([A, B, A], A, [A, B]),  # distinct, in order of first use
    ([A], A + "-dirty", [A, A + "-dirty"]),  # computed by A; its outputs written by A with uncommitted changes
    ([None, B], B, ["unrecorded", B]),  # saved before attempts or parts recorded their code
], ids=["none", "unbroken", "same code", "other code", "first use", "finished by other code", "unrecorded"])
def test_a_job_s_record_lists_its_codes_where_more_than_one_computed_it(job_notes, codes, finished_by, listed):
    # Prepare: the job finishing by `finished_by`
    _start_job(finished_by[:40])
    if finished_by.endswith("-dirty"):
        note(code={**noted("code"), "dirty": True})

    # Execute
    note_codes(codes)

    # Assert
    assert noted("codes") == listed


def test_a_part_is_read_back_with_the_code_that_computed_it(tmp_path, job_notes):
    # Prepare: part `a` saved by code A; part `old` by code that did not record it; then a job by code B
    cpu = {"device": "cpu", "device_name": "a CPU", "precision": "fp32", "precision_used": "fp32"}
    _start_job(A)
    Parts(tmp_path, "key").save("a", {"x": 1})
    torch.save({"key": "key", "part": {"x": 2}}, tmp_path / "old.pt")
    _start_job(B)
    parts = Parts(tmp_path, "key")

    # Execute: the job loads both, computes part `b`, and loads nothing under another key
    loaded = [parts.load("old"), parts.load("a"), Parts(tmp_path, "other").load("a")]
    parts.save("b", {"x": 3})
    groups = parts_compute({"old": None, "a": cpu, "b": cpu}, parts.codes)
    note_codes(parts.codes.values())

    # Assert: each part's code (none for the old one) beside its compute; the record lists the codes
    assert loaded == [{"x": 2}, {"x": 1}, None]
    assert parts.codes == {"old": None, "a": A, "b": B}
    assert groups == [{"compute": None, "code": None, "parts": ["old"]}, {"compute": cpu, "code": A, "parts": ["a"]},
                      {"compute": cpu, "code": B, "parts": ["b"]}]
    assert noted("codes") == ["unrecorded", A, B]


def test_the_neutral_training_keys_are_those_a_train_job_out_of_memory_is_told_to_lower():
    from fedscape.plan.resources import RULE_NEEDS

    named = {entry.partition("=")[0] for entry in RULE_NEEDS["train"].memory}

    assert named == {f"training.{key}" for key in NEUTRAL_TRAINING_KEYS}


def test_the_progress_key_follows_the_inputs_and_not_the_data_s_location(tmp_path):
    # Prepare
    config = _tiny_config()
    (run,) = build_runs(config)
    settings = train_settings(config, run)
    init = tmp_path / "init.pt"
    init.write_bytes(b"model a")
    start_notes()

    # Execute
    key = progress_key(settings, [init])
    moved = progress_key(with_data_locations(settings, _moved(config)), [init])
    shutil.copy(init, tmp_path / "copy.pt")
    copied = progress_key(settings, [tmp_path / "copy.pt"])
    init.write_bytes(b"model b")
    remade = progress_key(settings, [init])

    # Assert
    assert key == moved == copied
    assert remade != key
    assert progress_key({**settings, "algorithm": "fedprox"}, [tmp_path / "copy.pt"]) != key


def test_a_progress_key_from_the_inputs_digests_is_that_from_their_paths(tmp_path):
    # Prepare: two inputs
    from fedscape.stages.progress import input_digests

    paths = [tmp_path / "a.pt", tmp_path / "b.npz"]
    for path, text in zip(paths, (b"model", b"partition"), strict=True):
        path.write_bytes(text)
    settings = train_settings(_tiny_config(), build_runs(_tiny_config())[0])

    # Execute
    digests = input_digests(paths)

    # Assert: the same key, in order; both at once is refused
    assert progress_key(settings, paths, "cpu") == progress_key(settings, device="cpu", digests=digests)
    assert progress_key(settings, paths[::-1], "cpu") != progress_key(settings, device="cpu", digests=digests)
    with pytest.raises(ValueError, match="not both"):
        progress_key(settings, paths, digests=digests)


def _data(n_clients: int = 2) -> FederatedData:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    return FederatedData(x, y, [torch.arange(i, 40, n_clients) for i in range(n_clients)], x[:8], y[:8])


def _model(kind: str):
    torch.manual_seed(0)
    return build_model(kind, num_classes=10, in_channels=1, image_size=8)


def test_progress_of_a_model_of_another_size_under_the_same_key_is_not_resumed(tmp_path, monkeypatch, caplog):
    # Prepare: a cnn_small run killed after round 1; its rerun trains an mlp under the same (caller's) key
    cfg = TrainConfig(rounds=2, local_epochs=1, batch_size=8, lr=0.05, seed=0)
    killed_after_round(monkeypatch, 1, lambda: run_federated(_model("cnn_small"), _data(), make_strategy("fedavg"),
                                                             cfg, progress_dir=tmp_path, progress_key="k"))

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedscape.train"):
        rerun = run_federated(_model("mlp"), _data(), make_strategy("fedavg"), cfg, progress_dir=tmp_path,
                              progress_key="k")

    # Assert: it starts afresh (before, it failed on every attempt: the saved vector did not fit the model)
    assert "starting afresh" in caplog.text and "parameters" in caplog.text
    fresh = run_federated(_model("mlp"), _data(), make_strategy("fedavg"), cfg)
    assert torch.equal(rerun.params, fresh.params)


@pytest.mark.parametrize("interval, logged_rounds", [(0.0, [1, 2, 4, 5]), (3600.0, [])])
def test_rounds_that_are_not_evaluated_log_progress_at_most_every_interval(monkeypatch, caplog, interval,
                                                                           logged_rounds):
    # Prepare: 6 rounds evaluated every 3 (rounds 0, 3 and 6 get their full line)
    monkeypatch.setattr(engine_mod, "UNEVALUATED_LOG_SECONDS", interval)
    cfg = TrainConfig(rounds=6, local_epochs=1, batch_size=8, lr=0.05, seed=0, eval_every=3)

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.train"):
        run_federated(_model("mlp"), _data(), make_strategy("fedavg"), cfg)

    # Assert
    local = [r.getMessage() for r in caplog.records if "local_train_loss=" in r.getMessage()]
    assert [int(m.split()[1].split("/")[0]) for m in local] == logged_rounds
    assert all(m.endswith("(the global model is evaluated every 3 rounds)") for m in local)
    full = [r.getMessage() for r in caplog.records if " test_acc=" in r.getMessage()]
    assert [int(m.split()[1].split("/")[0]) for m in full] == [0, 3, 6]


@pytest.mark.parametrize("interval, lines", [(0.0, 9), (3600.0, 0)])
def test_a_bezier_bend_logs_its_steps_at_most_every_interval(monkeypatch, caplog, interval, lines):
    # Prepare: a two-weight model and 10 steps
    from fedscape.analysis.barriers import curve as curve_mod
    from fedscape.analysis.barriers.curve import train_bend
    from fedscape.analysis.barriers.definitions import CurveSettings
    from fedscape.analysis.barriers.maths import Point

    monkeypatch.setattr(curve_mod, "PROGRESS_SECONDS", interval)
    model = torch.nn.Linear(2, 2)
    x, y = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)), torch.zeros(32, dtype=torch.long)
    a = Point(torch.cat([p.detach().flatten() for p in model.parameters()]), torch.zeros(0))
    b = Point(-a.params, torch.zeros(0))

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.barriers"):
        train_bend(model, a, b, x, y, CurveSettings(steps=10, batch_size=8, lr=0.01, momentum=0.0, seed=0))

    # Assert: one line per step after the first (a line needs a loss to report), none within the interval
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Bezier bend: step")]
    assert len(steps) == lines
    assert all("/10, mean loss of the last" in s for s in steps)


@pytest.mark.parametrize("interval, expect_lines", [(0.0, True), (3600.0, False)])
def test_layer_wise_barriers_log_where_they_are_at_most_every_interval(monkeypatch, caplog, interval, expect_lines):
    # Prepare
    from fedscape.analysis.barriers import maths as barrier_maths
    from fedscape.analysis.barriers.maths import Point, layerwise_barriers
    from fedscape.models.params import flatten_buffers, flatten_params

    monkeypatch.setattr(barrier_maths, "PROGRESS_SECONDS", interval)
    model = _model("mlp").eval()
    a = Point(flatten_params(model), flatten_buffers(model))
    b = Point(a.params + 0.1, a.buffers)
    data = _data()
    splits = {"train": (data.x_train, data.y_train)}

    # Execute
    with caplog.at_level(logging.INFO, logger="fedscape.barriers"):
        rows = layerwise_barriers(model, a, b, splits, modes=("single", "shallow"))

    # Assert
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("layer-wise barriers: mode")]
    assert bool(lines) == expect_lines and rows
    if expect_lines:
        assert lines[-1].startswith("layer-wise barriers: mode shallow (2/2), entry ")


def test_parts_are_read_back_only_whole_and_under_their_key(tmp_path, caplog):
    # Prepare
    from fedscape.stages.progress import Parts

    part = {"theta": torch.arange(4.0, dtype=torch.float64), "losses": [1.5, 0.5], "name": "bend"}
    Parts(tmp_path, "key").save("bend", part)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "bend.pt").read_bytes()[:20])  # as a kill mid-write would leave

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedscape.progress"):
        same, other, cut, missing = (Parts(tmp_path, k).load(n) for k, n in (("key", "bend"), ("other", "bend"),
                                                                             ("key", "cut"), ("key", "none")))

    # Assert
    assert torch.equal(same["theta"], part["theta"]) and same["losses"] == [1.5, 0.5] and same["name"] == "bend"
    assert other is None and cut is None and missing is None
    assert "cannot resume part cut" in caplog.text
    Parts(tmp_path, "key").clear()
    assert not tmp_path.exists()
