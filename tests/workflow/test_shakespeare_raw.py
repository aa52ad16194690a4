"""Shakespeare from LEAF's raw texts through the workflow at the layer-wise paper's kind of settings (its 96
characters, sequences of a chosen length): one client per speaking role, char_gpt trained, layer-wise barriers
between two clients' models (Adilova et al., Fig. 12's analysis); with `targets: every` as the authors train their
GPT (the next character at every position), with the Hessian and a landscape of the sequence model too."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.configs import TINY
from helpers.leaf import write_shakespeare_raw
from helpers.workflow import copy_workflow, snakemake

from fedscape.data.specs import SHAKESPEARE_RAW_VOCAB

SEQ_LEN = 32
TABLES = [f"results/tables/{table}.csv" for table in ("partitions", "rounds", "layer_barriers")]
ROLE_LENGTHS = {"PLAY_A_FIRST": 300, "PLAY_A_SECOND": 250, "PLAY_B_THIRD": 350}
GPT = {"vocab_size": 96, "seq_len": SEQ_LEN, "num_blocks": 1, "num_heads": 2, "embed_dim": 16}


def _config(data_dir: str) -> dict:
    config = copy.deepcopy(TINY)
    config["datasets"] = {"shakespeare": {"data_dir": data_dir, "proxy_fraction": 0.0, "source": "raw",
                                          "seq_len": SEQ_LEN}}
    config["models"] = ["char_gpt"]
    config["model_options"] = {"char_gpt": GPT}
    config["inits"] = {"random": {"kind": "random", "seed": 0}}
    config["algorithms"] = {"fedavg": {"name": "fedavg"}}
    config["partitions"] = {"roles": {"kind": "natural"}}
    config["alphas"] = ["iid"]
    config["experiments"] = [{"alpha": "roles"}]
    config["experiment_defaults"] = {"init": "random", "algorithm": "fedavg"}
    config["num_clients"] = [3]
    config["partition"] = {"min_size": 5}
    config["training"].update(rounds=2, save_clients_at=[2], optimizer="adamw", lr=0.01, batch_size=16)
    del config["training"]["momentum"]
    config["interpolation"] = {"points": 3, "pairs": {}}
    config["layer_barriers"] = {"pairs": {"roles": {"run": {"alpha": "roles"}, "clients": [0, 1], "rounds": [2]}}}
    config["hessian"] = {"enabled": False}
    config["client_stats"] = {"enabled": False}
    config["landscapes"] = {}
    return config


def _random_roles(root) -> None:
    """Three roles of random text over the 96 characters, in LEAF's raw layout below `root`."""
    rng = np.random.default_rng(0)
    roles = {role: "".join(SHAKESPEARE_RAW_VOCAB[i] for i in rng.integers(0, 96, size=n))
             for role, n in ROLE_LENGTHS.items()}
    write_shakespeare_raw(root, roles)


def _roles_trained(tables) -> pd.DataFrame:
    """Assert one client per role (in role file order) holding every window of its first 80 % and 3 ok rounds;
    the rounds table."""
    parts = pd.read_csv(tables / "partitions.csv")
    natural = parts.loc[parts["partition"] == "natural"].sort_values("client_id")
    assert natural["num_samples"].tolist() == [int(0.8 * ROLE_LENGTHS[r]) - SEQ_LEN for r in sorted(ROLE_LENGTHS)]
    rounds = pd.read_csv(tables / "rounds.csv")
    assert (rounds["status"] == "ok").all() and set(rounds["round"]) == {0, 1, 2}
    return rounds


@pytest.mark.slow
def test_raw_shakespeare_trains_a_gpt_per_role_and_compares_its_layers(tmp_path):
    # Prepare: three roles of random text over the 96 characters, in LEAF's raw layout
    _random_roles(tmp_path / "leaf")
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "raw.yaml").write_text(yaml.safe_dump(_config(str(tmp_path / "leaf")), sort_keys=False))

    # Execute: the tables, and the layer-wise figure of the GPT's layers (the other figures draw the tables' columns as
    # for any model)
    snakemake(workdir, *TABLES, "results/figures/barriers/layerwise/roles/train.png", "--configfile", "raw.yaml")

    # Assert: one client per role (in role file order) holding every window of its first 80 %
    tables = workdir / "results" / "tables"
    rounds = _roles_trained(tables)
    # random characters: a model can only learn the uniform guess over the 96 symbols
    assert np.abs(rounds["train_loss"] - np.log(96)).max() < 0.5
    layers = pd.read_csv(tables / "layer_barriers.csv")
    assert len(set(layers["layer"])) > 3 and np.isfinite(layers["barrier_loss"]).all()


@pytest.mark.slow
def test_every_position_targets_train_a_gpt_and_reach_every_analysis(tmp_path):
    # Prepare: the same roles; the GPT predicts every position; Hessian and a local landscape of the final model
    _random_roles(tmp_path / "leaf")
    workdir = copy_workflow(tmp_path / "wf")
    config = _config(str(tmp_path / "leaf"))
    config["datasets"]["shakespeare"]["targets"] = "every"
    config["hessian"] = {"enabled": True, "runs": {"alpha": "roles"}, "rounds": ["final"], "trace_probes": 4,
                         "eval_samples": 64, "max_iter": 20, "tol": 1.0e-3,
                         "density": {"lanczos_steps": 6, "probes": 1}}
    config["landscapes"] = {"gpt": {"kind": "local", "runs": [{"alpha": "roles"}], "round": 2, "data": ["train"],
                                    "resolution": 3, "chunks": 1}}
    (workdir / "every.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # Execute: the tables, and the figures of the sequence model's layers and landscape
    surface = "results/landscape/shakespeare/char_gpt/gpt/train/surface.png"
    snakemake(workdir, *TABLES, "results/tables/hessian.csv", "results/tables/surfaces.csv",
              "results/figures/barriers/layerwise/roles/train.png", surface, "--configfile", "every.yaml")

    # Assert: the clients hold sequences as with `next` (FedAvg weighs sequences), the losses are per character
    tables = workdir / "results" / "tables"
    rounds = _roles_trained(tables)
    # the initial model guesses uniformly over the 96 symbols; each character is a target of up to SEQ_LEN windows
    # per epoch, so the GPT starts memorising the random training text within 2 rounds
    by_round = rounds.sort_values("round")
    assert abs(by_round["train_loss"].iloc[0] - np.log(96)) < 0.05
    assert by_round["train_loss"].is_monotonic_decreasing and rounds["train_acc"].between(0, 1).all()
    layers = pd.read_csv(tables / "layer_barriers.csv")
    assert len(set(layers["layer"])) > 3 and np.isfinite(layers["barrier_loss"]).all()
    hessian = pd.read_csv(tables / "hessian.csv")
    assert len(hessian) and np.isfinite(hessian["trace"]).all()
    [surface] = pd.read_csv(tables / "surfaces.csv")["path"]
    grid = pd.read_csv((workdir / surface).parent / "surface_grid.csv")
    assert len(grid) == 9 and np.isfinite(grid["loss"]).all() and grid["acc"].between(0, 1).all()
    assert (workdir / surface).stat().st_size > 0
