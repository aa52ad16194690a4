"""Tables are read strictly: a file cut mid-line, a row with another field count, a non-numeric metric or the rows of
another run are errors naming the file and the line, with the command that remakes it."""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd
import pytest

from fedscape.analysis.landscape.gather import read_chunk
from fedscape.core.paths import run_of_path
from fedscape.fl.settings import ROUNDS_COLUMNS
from fedscape.fl.swa import SWA_BN_COLUMN, SWA_METRICS
from fedscape.outputs.tables import TableError, concat_tables, read_table, rounds_table_job

RUN_A = "digits/cnn_small/init~random/algo~fedavg/alpha~iid/clients~4/part~1.0/seed~0"
RUN_B = "digits/cnn_small/init~random/algo~fedavg/alpha~iid/clients~4/part~1.0/seed~1"


def metrics(run_id: str, rounds: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": run_id, "dataset": "digits", "model": "cnn_small", "init": "random",
                          "algorithm": "fedavg", "alpha": float("inf"), "num_clients": 4, "participation": 1.0,
                          "seed": int(run_id[-1]), "round": r, "train_loss": 2.0 / (r + 1), "train_acc": 0.5,
                          "test_loss": 2.1 / (r + 1), "test_acc": 0.45, "seconds": 0.1, "peak_mem_mb": 10.0,
                          "status": "ok"} for r in range(rounds + 1)])[ROUNDS_COLUMNS]


def write_run_metrics(root, run_id: str, frame: pd.DataFrame):
    path = root / "results" / "train" / run_id / "metrics.csv"
    path.parent.mkdir(parents=True)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("cut", "line", "message"), [
    (lambda text: text[: text.rindex("0.45") + 2], 5, "line 5: cut short"),  # mid-number: "0." still parses
    (lambda text: text[: text.rindex("ok")], 5, "line 5: cut short"),       # the status cut off
    (lambda text: text.rstrip("\n").rsplit("\n", 1)[0] + "\n" + RUN_A[:20] + "\n", 5, "line 5: 1 fields where"),
])
def test_a_table_cut_short_is_an_error_naming_the_file_and_line(tmp_path, cut, line, message):
    # Prepare: a whole metrics.csv, then the same file cut as a kill or a full disk leaves it
    path = tmp_path / "metrics.csv"
    metrics(RUN_A).to_csv(path, index=False)
    whole = read_table(path, ROUNDS_COLUMNS)
    path.write_text(cut(path.read_text()))

    # Execute / Assert
    with pytest.raises(TableError, match=message) as err:
        read_table(path, ROUNDS_COLUMNS)
    assert f"{path}, line {line}" in str(err.value)
    assert f"--forcerun {shlex.quote(str(path))}" in str(err.value)
    assert len(whole) == 4


def test_a_non_numeric_metric_names_its_line(tmp_path):
    frame = metrics(RUN_A).astype({"test_loss": object})
    frame.loc[2, "test_loss"] = "0.5x"
    path = tmp_path / "metrics.csv"
    frame.to_csv(path, index=False)

    with pytest.raises(TableError, match=r"line 4: test_loss is '0.5x', not a number"):
        read_table(path, ROUNDS_COLUMNS, numeric=["round", "test_loss"])


def test_empty_cells_of_a_diverged_run_are_numbers(tmp_path):
    frame = metrics(RUN_A)
    frame.loc[3, ["train_loss", "test_loss"]] = np.nan
    path = tmp_path / "metrics.csv"
    frame.to_csv(path, index=False)

    df = read_table(path, ROUNDS_COLUMNS, numeric=["train_loss", "test_loss"])

    assert df["train_loss"].isna().sum() == 1


def test_the_run_of_a_per_run_file_comes_from_its_path():
    assert run_of_path(f"results/train/{RUN_A}/metrics.csv") == {"run_id": RUN_A}
    assert run_of_path(f"/scratch/r/hessian/{RUN_B}/round~3/hessian.csv") == {"run_id": RUN_B, "round": "3"}
    assert run_of_path("results/tables/rounds.csv") == {}
    assert run_of_path("results/partitions/digits/clients~4/alpha~iid/seed~0/counts.csv") == {}


def test_another_runs_metrics_in_a_runs_place_is_refused(tmp_path):
    # Prepare: two runs, the second's metrics.csv replaced by the first's (a valid file of another seed)
    a = write_run_metrics(tmp_path, RUN_A, metrics(RUN_A))
    b = write_run_metrics(tmp_path, RUN_B, metrics(RUN_A))

    # Execute / Assert: refused, naming the file, what it should hold and what it holds; nothing written
    with pytest.raises(TableError) as err:
        concat_tables([a, b], tmp_path / "rounds.csv", ROUNDS_COLUMNS)
    assert f"{b}, line 2 is not a table of run_id {RUN_B}" in str(err.value)
    assert f"run_id '{RUN_A}' (expected '{RUN_B}')" in str(err.value)
    assert not (tmp_path / "rounds.csv").exists()


def test_the_runs_own_tables_are_gathered(tmp_path):
    a = write_run_metrics(tmp_path, RUN_A, metrics(RUN_A))
    b = write_run_metrics(tmp_path, RUN_B, metrics(RUN_B))

    concat_tables([a, b], tmp_path / "rounds.csv", ROUNDS_COLUMNS)

    assert pd.read_csv(tmp_path / "rounds.csv")["run_id"].value_counts().to_dict() == {RUN_A: 4, RUN_B: 4}


@pytest.mark.parametrize(("model", "expected"), [
    ("cnn_small", "stored"),  # a run of the batch-norm model from before the column: the baseline statistics
    ("mlp", ""),              # a model without batch norm has no statistics to name: an empty cell
])
def test_rounds_table_names_the_bn_statistics_of_swa_runs_of_batch_norm_models_only(tmp_path, model, expected):
    # Prepare: an SWA run of `model` whose metrics.csv has no swa_bn_stats, beside an SWA run of cnn_small with batch
    # norm that has it (so rounds.csv has the column) and a run without SWA; cnn_small is the config's batch-norm model
    swa = dict.fromkeys(SWA_METRICS, 1.0)
    runs = {RUN_A.replace("algo~fedavg", "algo~fedavg_swa"): ("cnn_small", {**swa, SWA_BN_COLUMN: "recomputed"}),
            RUN_B.replace("cnn_small", model).replace("algo~fedavg", "algo~fedavg_swa"): (model, swa),
            RUN_B: ("cnn_small", {})}
    paths = [write_run_metrics(tmp_path, run, metrics(run).assign(model=run_model, **extra))
             for run, (run_model, extra) in runs.items()]

    # Execute
    rounds_table_job(paths, tmp_path / "rounds.csv", [*ROUNDS_COLUMNS, *SWA_METRICS, SWA_BN_COLUMN],
                     [*SWA_METRICS, SWA_BN_COLUMN], ["cnn_small"])

    # Assert: every round of each run
    table = pd.read_csv(tmp_path / "rounds.csv", keep_default_na=False)
    assert table.groupby("run_id")[SWA_BN_COLUMN].agg(set).to_dict() == {
        run: {value} for run, value in zip(runs, ["recomputed", expected, ""], strict=True)}


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"not a zip"])
def test_a_damaged_landscape_chunk_names_the_file_and_the_fix(tmp_path, damage):
    # Prepare: a chunk as the chunk job writes it, then damaged
    path = tmp_path / "chunk~1.npz"
    with open(path, "wb") as fh:
        np.savez(fh, index=np.arange(3), loss=np.ones(3), acc=np.ones(3), meta=np.array('{"grid_digest": "x"}'))
    arrays, meta = read_chunk(path)
    path.write_bytes(damage(path.read_bytes()))

    # Execute / Assert
    with pytest.raises(ValueError, match=r"cannot read the surface chunk .*chunk~1\.npz.*cut short or damaged") as err:
        read_chunk(path)
    assert "--forcerun" in str(err.value)
    assert meta == {"grid_digest": "x"} and len(arrays["loss"]) == 3
