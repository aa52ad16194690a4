"""A partition made again alone is checked against the runs trained on it: each run's meta.json records the SHA-256
of the partition (and init) it trained from, and its analyses refuse another split (one drawn under a numpy whose
random streams changed) with the command that trains the runs again."""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import SCHEMA, TINY
from helpers.plans import analysis_settings

from fedscape.core.config import ConfigError
from fedscape.core.fingerprints import file_sha256
from fedscape.core.io import remake_hint
from fedscape.core.logs import job_log
from fedscape.core.manifest import software
from fedscape.core.paths import TRAIN_FILE_NAMES, Results, fill
from fedscape.core.runs import RUN_ID, build_runs, parse_run_id
from fedscape.data.datasets import dataset_from_options
from fedscape.data.federated import load_federated_data
from fedscape.data.partition import PartitionError, load_partition, run_record_path, save_partition, split_sha256
from fedscape.models.checkpoint import load_trajectory
from fedscape.plan.init import init_settings
from fedscape.plan.landscape import landscape_plans
from fedscape.plan.partition import partition_settings
from fedscape.plan.train import train_settings
from fedscape.plan.workflow import check_config, check_read_files
from fedscape.stages.init import init_job
from fedscape.stages.partition import partition_job
from fedscape.stages.train import train_job

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(results: Path) -> dict:
    """The tiny config's sections for one IID FedAvg run of one round, its results in `results`."""
    config = copy.deepcopy({k: v for k, v in TINY.items() if k in ("datasets", "models", "alphas", "num_clients",
                                                                     "participation", "seeds", "partition",
                                                                     "training")})
    config.update(inits={"random": {"kind": "random", "seed": 0}}, alphas=["iid"],
                  algorithms={"fedavg": {"name": "fedavg"}}, results_dir=str(results))
    config["training"] = {**config["training"], "rounds": 1, "save_clients_at": [], "device": "cpu"}
    return check_config(config, SCHEMA)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run's partition, init and train jobs, run in-process into a results directory's layout (the analyses find
    the run's meta.json beside its partition): (config, run, partition file, init file, the run's outputs)."""
    results = tmp_path_factory.mktemp("trained") / "results"
    config = tiny_config(results)
    runs = build_runs(config)
    run, where = runs[0], Results.of(config)
    partition = Path(where.partition_file(run))
    init = Path(where.init_file(dataset=run.dataset, model=run.model, init=run.init))
    outputs = {name: where.run_file(run, name) for name in TRAIN_FILE_NAMES}
    for path in (partition, init, Path(outputs["meta"])):
        path.parent.mkdir(parents=True)
    partition_job(partition_settings(config, run.dataset, run.setting, run.num_clients, run.seed), partition,
                  partition.with_name("counts.csv"))
    init_job(init_settings(config, runs, run.dataset, run.model, run.init), init)
    train_job(train_settings(config, run), partition, init, outputs, Path(outputs["meta"]).parent / "_progress")
    return config, run, partition, init, outputs


@pytest.fixture
def results(trained, tmp_path):
    """A copy of the trained run's results directory, for a test to change: (config, run, partition, meta.json)."""
    config, run, partition, _, outputs = trained
    root = Path(config["results_dir"])
    copied = shutil.copytree(root, tmp_path / "results")
    config = {**config, "results_dir": str(copied)}
    where = Results.of(config)
    return config, run, Path(where.partition_file(run)), Path(where.run_file(run, "meta"))


def redrawn(partition: Path, options: dict) -> None:
    """The partition at `partition` drawn again into other shards with the same metadata (dataset, seed, setting,
    clients, labels), as the same seed under a numpy whose streams changed draws them."""
    part = load_partition(partition)
    with np.load(partition) as f:
        meta = json.loads(str(f["meta"]))
    ds = dataset_from_options(meta["dataset"], options)
    shards = np.array_split(np.random.default_rng(99).permutation(part.num_samples_total), part.num_clients)
    save_partition(partition, replace(part, client_indices=tuple(np.sort(s) for s in shards)),
                   ds.sample_labels(ds.y_train).numpy(), ds.num_classes,
                   {key: meta[key] for key in ("dataset", "data_sha256") if key in meta})


def test_the_train_job_records_the_partition_and_init_it_trained_from(trained):
    # Prepare
    _, _, partition, init, outputs = trained

    # Execute
    meta = json.loads(Path(outputs["meta"]).read_text())

    # Assert: the contents' digests of both files, and the numpy that drew the split; the checkpoints carry them too
    assert meta["inputs"] == {"partition": file_sha256(partition), "split": split_sha256(partition),
                              "partition_numpy": np.__version__, "init": file_sha256(init)}
    assert load_trajectory(outputs["trajectory"]).meta["inputs"] == meta["inputs"]


@pytest.mark.parametrize("split", ["trained on", "drawn again", "put back"])
def test_an_analysis_refuses_a_partition_its_run_was_not_trained_on(results, split):
    # Prepare: the run's partition as trained on, drawn again into other shards, or drawn again and then put back
    config, run, partition, meta = results
    options = config["datasets"][run.dataset]
    own = partition.read_bytes()
    if split != "trained on":
        redrawn(partition, options)
    if split == "put back":
        partition.write_bytes(own)

    # Execute
    def load():
        return load_federated_data(run.fields(), options, partition)

    # Assert: another split is refused, naming the file, both digests, the run's record and the remedy that trains
    # the runs again (not the one that makes the file again alone); the split it trained on loads
    if split == "drawn again":
        with pytest.raises(PartitionError) as err:
            load()
        message = str(err.value)
        assert message.startswith(f"partition file {partition} is not the split run {run.run_id} was trained on")
        recorded = json.loads(meta.read_text())["inputs"]["split"]
        assert (f"split SHA-256 {split_sha256(partition)[:12]}..., where its record {meta} names {recorded[:12]}..."
                in message)
        assert remake_hint(partition) in message and "--force " not in message
    else:
        assert load().num_clients == run.num_clients


def test_the_train_job_itself_reads_a_partition_its_earlier_record_does_not_name(results):
    # Prepare: the partition drawn again under the run's meta.json of the earlier split
    config, run, partition, _ = results
    options = config["datasets"][run.dataset]
    redrawn(partition, options)

    # Execute: as the train job loads it (it writes that record)
    data = load_federated_data(run.fields(), options, partition, trained=False)

    # Assert
    assert data.num_clients == run.num_clients


def test_the_same_split_written_under_another_numpy_is_the_run_s(results):
    # Prepare: the run's partition file written again with the same shards, its metadata naming another numpy (a
    # remake under a numpy whose streams did not change): other file bytes, the same split
    config, run, partition, _ = results
    with np.load(partition, allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    before = file_sha256(partition)
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "numpy": "9.9.9"}))
    with open(partition, "wb") as fh:
        np.savez(fh, **arrays)

    # Execute
    data = load_federated_data(run.fields(), config["datasets"][run.dataset], partition)

    # Assert
    assert file_sha256(partition) != before and data.num_clients == run.num_clients


@pytest.mark.parametrize(("then", "named"), [
    ("1.26.4", f"drawn with numpy {np.__version__}, the run's with numpy 1.26.4: numpy's random streams may change"),
    (None, f"drawn with numpy {np.__version__})"),
])
def test_the_refusal_names_the_numpy_of_each_split_where_the_run_recorded_its(results, then, named):
    # Prepare: the partition drawn again; the run's record of the numpy that drew its split, or none
    config, run, partition, meta = results
    record = json.loads(meta.read_text())
    record["inputs"]["partition_numpy"] = then
    meta.write_text(json.dumps(record))
    redrawn(partition, config["datasets"][run.dataset])

    # Execute
    with pytest.raises(PartitionError) as err:
        load_federated_data(run.fields(), config["datasets"][run.dataset], partition)

    # Assert
    assert named in str(err.value)


@pytest.mark.parametrize("record", ["without inputs", "absent"])
def test_a_run_that_recorded_no_partition_is_not_checked(results, record):
    # Prepare: the partition drawn again, under a meta.json written before runs recorded their inputs, or none
    config, run, partition, meta = results
    if record == "absent":
        meta.unlink()
    else:
        meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "inputs"}))
    redrawn(partition, config["datasets"][run.dataset])

    # Execute
    data = load_federated_data(run.fields(), config["datasets"][run.dataset], partition)

    # Assert: read as before
    assert data.num_clients == run.num_clients


def test_every_analysis_finds_the_meta_json_of_the_run_whose_partition_it_reads():
    # Prepare: the run fields that each analysis job of the tiny config passes to load_federated_data (a Hessian
    # job's, a barrier job's data, a landscape chunk's from its plane's first run id)
    config = check_config(copy.deepcopy(TINY), SCHEMA)
    where, runs = Results.of(config), {run.run_id: run for run in build_runs(config)}
    jobs = analysis_settings(config)
    read = {"hessian": [job["run"] for job in jobs["hessian"] + jobs["hessian_plane"]],
            "barriers": [job["data"]["run"] for job in jobs["interpolation"] + jobs["layer_barriers"]],
            "landscape": [parse_run_id(plan.runs[0].run_id) for plan in landscape_plans(config, list(runs.values()))]}

    # Execute
    found = {kind: [(run_record_path(where.partition_file(runs[fill(RUN_ID, **fields)]), fields),
                     runs[fill(RUN_ID, **fields)]) for fields in read[kind]] for kind in read}

    # Assert: each its own run's meta.json (not a path that is no file, which would leave the partition unchecked)
    assert all(found.values())
    assert all(path == Path(where.run_file(run, "meta")) for pairs in found.values() for path, run in pairs)


def test_software_records_numpy():
    assert software()["numpy"] == np.__version__


PARTITION = "results/partitions/digits/clients~4/alpha~iid/seed~0/partition.npz"


@pytest.mark.parametrize(("output", "second", "earlier_numpy", "named"), [
    (PARTITION, b"split b", None, f"; numpy {np.__version__}): "),
    (PARTITION, b"split b", "1.26.4", f"; numpy 1.26.4 then, {np.__version__} now): "),
    (PARTITION, b"split a", None, None),
    (PARTITION.replace("partition.npz", "counts.csv"), b"split b", None, None),
])
def test_a_partition_written_again_with_other_contents_warns_in_its_jobs_log(tmp_path, monkeypatch, restore_logging,
                                                                           output, second, earlier_numpy, named):
    # Prepare: a job that wrote its output once, its record naming the numpy it ran with (or an edited one)
    monkeypatch.chdir(tmp_path)
    log = "logs/partitions/digits/clients~4/alpha~iid/seed~0/partition.log"
    Path(output).parent.mkdir(parents=True)
    with job_log(log, [output], "results"):
        Path(output).write_bytes(b"split a")
    if earlier_numpy is not None:
        record = next(Path("results/_manifest").rglob("partition.json"))
        record.write_text(json.dumps({**json.loads(record.read_text()), "software": {"numpy": earlier_numpy}}))

    # Execute: the job again, writing `second`
    with job_log(log, [output], "results"):
        Path(output).write_bytes(second)

    # Assert: a partition of other contents is named in the job's log, with the numpy of each record and the remedy
    # that trains its runs again; the same contents, or a partition's other file, warn of nothing
    text = Path(log).read_text()
    assert ("WARNING" in text) == (named is not None)
    if named is not None:
        assert f"WARNING fedscape.manifest: {output} was made with other bytes than its earlier record" in text
        assert named in text and "the runs trained on the earlier split are refused by their analyses" in text
        assert remake_hint(output) in text


@pytest.mark.parametrize("split", ["trained on", "drawn again", "drawn again, the run trained again"])
def test_a_run_about_to_be_analysed_on_another_split_is_refused_before_any_job(results, split):
    # Prepare: the jobs about to run read the run's trajectory and its partition, as drawn or drawn again; or the run
    # is itself about to be trained again (its outputs made afresh, not read)
    config, run, partition, meta = results
    if split != "trained on":
        redrawn(partition, config["datasets"][run.dataset])
    trajectory = str(meta.parent / TRAIN_FILE_NAMES["trajectory"])
    remade = [trajectory, str(meta)] if split.endswith("trained again") else []

    # Execute
    def check():
        check_read_files([str(partition), trajectory], remade, config["results_dir"])

    # Assert: another split under a run read as it is stops the workflow in its onstart, before any job claims a
    # card, with the analyses' own line; the split it trained on, and a run trained again, pass
    if split == "drawn again":
        with pytest.raises(ConfigError, match=f"partition file {re.escape(str(partition))} is not the split run "):
            check()
    else:
        check()
