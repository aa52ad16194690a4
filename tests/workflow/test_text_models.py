"""The text models through the whole workflow: LEAF's Shakespeare (one client per speaking role), char_gpt and
char_lstm trained with AdamW and a cosine schedule, and every analysis on them (interpolation with weight
matching for the GPT, layer-wise barriers, Hessian, client statistics, a landscape)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.configs import TINY
from helpers.leaf import write_shakespeare
from helpers.tables import assert_hd_bounded_or_unresolved
from helpers.workflow import copy_workflow, snakemake

GPT = {"vocab_size": 80, "seq_len": 80, "num_blocks": 1, "num_heads": 2, "embed_dim": 16}
LSTM = {"embed_dim": 4, "hidden_size": 8}  # LEAF's 80 characters and positions: the data's, unset


def _config(data_dir: str) -> dict:
    config = copy.deepcopy(TINY)
    config["datasets"] = {"shakespeare": {"data_dir": data_dir, "proxy_fraction": 0.0}}
    config["models"] = ["char_gpt", "char_lstm"]
    config["model_options"] = {"char_gpt": GPT, "char_lstm": LSTM}
    config["inits"] = {"random": {"kind": "random", "seed": 0}}
    config["algorithms"] = {"fedavg": {"name": "fedavg"}}
    config["partitions"] = {"roles": {"kind": "natural"}}
    config["alphas"] = ["iid"]
    config["experiments"] = [{"model": m, "alpha": a} for m in ("char_gpt", "char_lstm") for a in ("iid", "roles")]
    config["experiment_defaults"] = {"init": "random", "algorithm": "fedavg"}
    config["num_clients"] = [3]
    config["partition"] = {"min_size": 5}
    config["training"].update(rounds=2, save_clients_at=[2], optimizer="adamw", lr=0.01, lr_schedule="cosine",
                              lr_warmup=1, batch_size=16)
    del config["training"]["momentum"]
    gpt_iid, gpt_roles = ({"model": "char_gpt", "alpha": a} for a in ("iid", "roles"))
    config["interpolation"] = {"points": 5, "align": True, "pairs": {"gpt": {"a": gpt_iid, "b": gpt_roles}}}
    config["layer_barriers"] = {"pairs": {"lstm_clients": {"run": {"model": "char_lstm", "alpha": "roles"},
                                                           "clients": [0, 1], "rounds": [2]}}}
    config["hessian"] = {"enabled": True, "runs": {"alpha": "roles"}, "rounds": ["final"], "trace_probes": 4,
                         "eval_samples": 32, "max_iter": 10, "tol": 1.0e-2, "density": {"enabled": False}}
    config["client_stats"] = {"enabled": True}
    config["landscapes"] = {"gpt_final": {"kind": "random", "runs": [gpt_roles], "resolution": 3, "span": 0.5}}
    return config


@pytest.mark.slow
def test_text_models_train_on_shakespeare_and_every_analysis_runs(tmp_path):
    # Prepare: 3 speaking roles in LEAF's layout, 2 models x (IID, one client per role)
    workdir = copy_workflow(tmp_path / "wf")
    write_shakespeare(tmp_path / "leaf", sizes=(40, 32, 48), layout="leaf")
    (workdir / "text.yaml").write_text(yaml.safe_dump(_config(str(tmp_path / "leaf")), sort_keys=False))

    # Execute: every analysis's table, and the figures drawn from what these models alone give (their layers, the
    # aligned GPT's interpolation, the GPT's surface); the others draw the tables' columns as for any model
    figures = ["figures/barriers/interpolation.png", "figures/barriers/layerwise/lstm_clients/train.png",
               "landscape/shakespeare/char_gpt/gpt_final/train/surface.png"]
    table_names = ["rounds", "partitions", "barriers", "layer_barriers", "hessian", "hessian_clients", "client_stats",
                   "surfaces", "final"]
    snakemake(workdir, *(f"results/tables/{t}.csv" for t in table_names), *(f"results/{f}" for f in figures),
              "--configfile", "text.yaml")  # targets first: --configfile takes what follows

    # Assert
    tables = workdir / "results" / "tables"
    rounds = pd.read_csv(tables / "rounds.csv")
    assert set(rounds["model"]) == {"char_gpt", "char_lstm"} and (rounds["status"] == "ok").all()
    assert np.isfinite(rounds["train_loss"]).all() and set(rounds["round"]) == {0, 1, 2}
    # the fixture's text is random characters: a model can only learn the uniform guess over its 80 symbols
    assert np.abs(rounds["train_loss"] - np.log(80)).max() < 0.5
    parts = pd.read_csv(tables / "partitions.csv")
    assert sorted(parts.loc[parts["partition"] == "natural", "num_samples"].unique()) == [24, 30, 36]
    barriers = pd.read_csv(tables / "barriers.csv")
    assert set(barriers["aligned"]) == {False, True} and np.isfinite(barriers["barrier_loss"]).all()
    layers = pd.read_csv(tables / "layer_barriers.csv")
    assert {"lstm.0", "lstm.1"} <= set(layers["layer"]) and np.isfinite(layers["barrier_loss"]).all()
    hessian = pd.read_csv(tables / "hessian.csv")
    assert set(hessian["run_id"].str.contains("alpha~roles")) == {True}
    assert (hessian.loc[hessian["data"] == "train", "lambda_1"] > 0).all()
    assert_hd_bounded_or_unresolved(workdir / "results", pd.read_csv(tables / "hessian_clients.csv"))
    updates = pd.read_csv(tables / "client_stats.csv")
    assert np.isfinite(updates.loc[updates["round"] > 0, "gradient_diversity"]).all()
    for figure in figures:
        assert (workdir / "results" / figure).stat().st_size > 0
