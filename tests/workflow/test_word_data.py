"""Stack Overflow and Reddit through the workflow, in their publishers' file formats: one client per user, a random
and a pretrained init (on the held-out proxy sequences), FedAvg and FedAdam, and the Hessian at the init (meta.yaml's
language columns in small)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from helpers.configs import TINY, config_with
from helpers.words import write_reddit, write_stackoverflow
from helpers.workflow import copy_workflow, snakemake

from fedscape.data.specs import DATASETS
from fedscape.models.checkpoint import load_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread

WORDS = ["the", "is", "code", "a", "bug", "fix"] + [f"w{i}" for i in range(9994)]
TEXTS = ["the code is a bug", "fix the bug", "a bug is a bug is code", "code", "the fix is the code",
         "is it a bug or the code"]
SMALL = {"embed_dim": 8, "hidden_size": 16}  # the model small, on the data's vocabulary and sequence length


def _write_data(root):
    rows = [("train", f"{u:02d}", TEXTS[(u + k) % len(TEXTS)]) for u in range(6) for k in range(8 + u)]
    rows += [("test", f"{u:02d}", TEXTS[u % len(TEXTS)]) for u in range(6)]
    write_stackoverflow(root / "so", rows, WORDS)
    vocab = {"<PAD>": 0, "<UNK>": 1, "<BOS>": 2, "<EOS>": 3, **{w: 4 + i for i, w in enumerate(WORDS[:6])}}
    users = {"train": {f"u{u}": [TEXTS[(u + k) % len(TEXTS)].split() for k in range(10)] for u in range(5)},
             "test": {f"u{u}": [TEXTS[u].split()] for u in range(5)}}
    write_reddit(root / "reddit", users, vocab, size=DATASETS["reddit"].num_classes)


def test_word_data_train_from_both_inits_and_give_the_hessian_at_the_init(tmp_path):
    # Prepare
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    _write_data(tmp_path / "data")
    datasets = {"stackoverflow": {"data_dir": str(tmp_path / "data/so"), "proxy_fraction": 0.2, "max_clients": 5},
                "reddit": {"data_dir": str(tmp_path / "data/reddit"), "proxy_fraction": 0.2}}
    runs = [{"dataset": d, "algorithm": a, "init": i, "alpha": "writers"}
            for d in datasets for a in ("fedavg", "fedadam") for i in ("random", "pretrained")]
    config = config_with({"pretrained": {"kind": "pretrained", "seed": 0, "epochs": 1, "batch_size": 8, "lr": 0.1}},
                         runs, datasets=datasets, num_clients=[4], models=["word_lstm"],
                         model_options={"word_lstm": SMALL}, partition={"min_size": 5},
                         algorithms={"fedavg": {"name": "fedavg"},
                                     "fedadam": {"name": "fedadam", "server_lr": 0.01, "tau": 0.001}},
                         training={**TINY["training"], "rounds": 2, "batch_size": 4, "save_clients_at": []},
                         partitions={"writers": {"kind": "natural"}},
                         hessian={"enabled": True, "runs": {"algorithm": "fedavg"}, "rounds": [0], "clients": 2,
                                  "trace_probes": 4, "max_iter": 10, "tol": 0.5, "eval_samples": 16,
                                  "density": {"enabled": False}})
    for key in ("interpolation", "layer_barriers", "landscapes", "client_stats"):
        config.pop(key, None)
    (workdir / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # Execute
    snakemake(workdir, "results/tables/rounds.csv", "results/tables/hessian.csv", "--configfile", "c.yaml")

    # Assert: every run trained on one client per user, its model on the data's vocabulary and sequence length
    rounds = pd.read_csv(workdir / "results/tables/rounds.csv")
    assert set(rounds["dataset"]) == {"stackoverflow", "reddit"} and len(rounds) == 8 * 3
    assert rounds["test_loss"].notna().all() and (rounds["test_acc"].between(0, 1)).all()
    for dataset, info in ((d, DATASETS[d]) for d in datasets):
        run_dir = next((workdir / "results/train" / dataset).rglob("trajectory.pt"))
        meta = load_trajectory(run_dir).model_meta
        assert (meta.num_classes, meta.in_channels, meta.image_size) == (info.num_classes, info.in_channels,
                                                                      info.image_size)
        counts = pd.read_csv(next((workdir / "results/partitions" / dataset).rglob("counts.csv")))
        assert set(counts["partition"]) == {"natural"} and len(counts) == 4
    # the pretrained init starts elsewhere than the random one, and lower on the test loss
    start = rounds[rounds["round"] == 0].set_index(["dataset", "init", "algorithm"])["test_loss"]
    for dataset in datasets:
        assert start[(dataset, "pretrained", "fedavg")] < start[(dataset, "random", "fedavg")]
    # the Hessian at the init of each data set's and init's FedAvg run: the aggregate and 2 users
    hessian = pd.read_csv(workdir / "results/tables/hessian.csv")
    assert (hessian["status"] == "ok").all() and len(hessian) == 4 * 3
    assert hessian["lambda_1"].notna().all()
