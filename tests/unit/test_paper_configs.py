"""The papers as configs (config/papers/): each passes the schema and cross-key checks, carries the
paper's settings, documents its cost, has a digits variant, and dry-runs without its data."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from helpers.papers import CONFIGS, NAMES, PAPERS, load, runs_of

from fedscape.core.runs import build_runs, resolve_run
from fedscape.data.sources import normalisation
from fedscape.fl.hparams.registry import ALGORITHM_NAMES, algorithm_config, algorithm_spec
from fedscape.fl.schedule import step_lrs
from fedscape.models.registry import build_model
from fedscape.plan.barriers import layer_pair
from fedscape.plan.train import run_training

FEDALIGN_METHODS = {"fedavg", "fedprox", "moon", "mixup", "stochdepth", "gradaug", "fedalign"}


def test_every_paper_has_a_config_and_a_digits_variant():
    found = sorted(p.stem for p in PAPERS.glob("*.yaml"))

    assert found == sorted(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_documents_its_cost(name):
    config = load(name)  # schema (additionalProperties false) and the cross-key checks of every stage
    header = "".join(line for line in (PAPERS / f"{name}.yaml").read_text().splitlines(keepends=True)
                     if line.startswith("#"))

    assert build_runs(config)
    assert re.search(r"[Cc]ost", header) and re.search(r"(GPU-hours|minutes)", header)
    if name.endswith("_digits"):
        assert set(config["datasets"]) == {"digits"} and config["training"]["device"] == "cpu"
    else:
        assert "H100" in header and "GPU-hours" in header
        assert not {"digits"} & set(config["datasets"])


def test_the_papers_readme_states_each_config_s_run_count():
    # Prepare: the `runs` column of config/papers/README.md's table, by config file
    rows = re.findall(r"^\| `(\w+)\.yaml` \|(?:[^|]*\|){2} (\d+) \|", (PAPERS / "README.md").read_text(), re.M)

    # Assert: a row per paper's config, each with the runs its experiments plan
    assert sorted(name for name, _ in rows) == sorted(NAMES)
    assert {name: int(count) for name, count in rows} == {name: len(runs_of(name)) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_digits_variant_draws_the_same_kinds_of_figures(name):
    full, small = load(name), load(f"{name}_digits")

    assert {s["kind"] for s in full.get("landscapes", {}).values()} == {
        s["kind"] for s in small.get("landscapes", {}).values()}
    for section in ("interpolation", "layer_barriers"):
        assert bool(full[section]["pairs"]) == bool(small[section]["pairs"]), section
    assert full["hessian"]["enabled"] == small["hessian"]["enabled"]
    assert {s["kind"] for s in full["inits"].values()} == {s["kind"] for s in small["inits"].values()}
    # the algorithms of the full config that the digits variant's models can train (StochDepth needs a residual one)
    trainable = {a["name"] for a in full["algorithms"].values()
                 if any(_can_train(a["name"], model) for model in small["models"])}
    assert trainable == {a["name"] for a in small["algorithms"].values()}
    # the kinds of init the runs start from (meta.yaml's FEMNIST runs have a pretrained init of their own)
    assert {small["inits"][r.init]["kind"] for r in runs_of(f"{name}_digits")} == {
        full["inits"][r.init]["kind"] for r in runs_of(name)}


def _can_train(algorithm: str, model: str) -> bool:
    try:
        algorithm_spec(algorithm).check_model(model)
    except ValueError:
        return False
    return True


def test_pilot_has_the_papers_settings():
    config, runs = load("pilot"), runs_of("pilot")

    assert set(config["datasets"]) == {"cifar10"}
    assert {r.model for r in runs} == {"convnet", "resnet20"}
    assert {r.setting for r in runs if r.num_clients == 10} == {"iid", "1.0", "0.5", "0.3", "0.1"}
    t = config["training"]
    assert (t["rounds"], t["local_epochs"], t["lr"], t["batch_size"]) == (100, 5, 0.01, 16)
    assert {r.participation for r in runs if r.num_clients == 50} == {"0.2", "0.5", "0.8"}
    assert {spec["kind"] for spec in config["inits"].values()} == {"random", "pretrained", "iid_warmup", "continue"}
    kinds = {s["kind"] for s in config["landscapes"].values()}
    assert kinds == {"trajectory", "trajectories", "local", "final_models"}
    assert {s["round"] for s in config["landscapes"].values() if s["kind"] == "local"} == {10, 30}
    assert len(config["interpolation"]["pairs"]) >= 12  # IID (two splits) vs each non-IID, both inits


def test_meta_has_the_posters_comparison():
    config, runs = load("meta"), runs_of("meta")
    cifar = [r for r in runs if r.dataset == "cifar10"]

    assert {config["algorithms"][r.algorithm]["name"] for r in cifar} == set(ALGORITHM_NAMES)  # every algorithm
    assert {config["inits"][r.init]["kind"] for r in runs} == {"random", "pretrained"}
    for name in ALGORITHM_NAMES:  # ... from both inits
        assert {r.init for r in cifar if config["algorithms"][r.algorithm]["name"] == name} == {"random", "pretrained"}
    assert {r.setting for r in cifar} == {"iid", "0.1"} and {r.seed for r in runs} == {0, 1, 2}
    assert {(r.num_clients, r.participation) for r in cifar} == {(100, "0.1")}
    assert config["hessian"]["enabled"] and 0 in config["hessian"]["rounds"]
    assert config["client_stats"]["enabled"]


def test_meta_has_the_posters_femnist_row_with_one_client_per_writer():
    config, runs = load("meta"), runs_of("meta")
    femnist = [r for r in runs if r.dataset == "femnist"]
    partitions = config["partitions"]

    assert {r.setting for r in femnist} == {"iid", "writers"} and partitions["writers"]["kind"] == "natural"
    assert {config["inits"][r.init]["kind"] for r in femnist} == {"random", "pretrained"}
    assert {config["algorithms"][r.algorithm]["name"] for r in femnist} == {"fedavg", "fedadam"}
    assert {r.seed for r in femnist} == {0, 1, 2}
    for run in femnist:  # 10 of 3,400 writers per round, as Reddi et al. 2021's EMNIST
        assert (run.model, run.num_clients, round(float(run.participation) * run.num_clients)) == ("resnet18", 3400, 10)
        # every (algorithm, init, setting) at the three seeds
        same = [r for r in femnist if (r.algorithm, r.init, r.setting) == (run.algorithm, run.init, run.setting)]
        assert len(same) == 3


def test_meta_has_the_posters_language_columns_with_one_client_per_user():
    config, runs = load("meta"), runs_of("meta")
    words = [r for r in runs if r.dataset in ("stackoverflow", "reddit")]

    assert {r.dataset for r in words} == {"stackoverflow", "reddit"} and {r.model for r in words} == {"word_lstm"}
    assert {r.setting for r in words} == {"writers"} and config["partitions"]["writers"]["kind"] == "natural"
    assert {config["inits"][r.init]["kind"] for r in words} == {"random", "pretrained"}
    assert {config["algorithms"][r.algorithm]["name"] for r in words} == {"fedavg", "fedadam"}
    for run in words:  # 50 clients per round (Reddi et al. 2021), 3 seeds of every (data set, algorithm, init)
        assert round(float(run.participation) * run.num_clients) == 50
        assert run.num_clients <= config["datasets"][run.dataset]["max_clients"]
        same = [r for r in words if (r.dataset, r.algorithm, r.init) == (run.dataset, run.algorithm, run.init)]
        assert sorted(r.seed for r in same) == [0, 1, 2]
    hessian = [entry.get("dataset") for entry in config["hessian"]["runs"]]
    assert hessian.count("stackoverflow") == hessian.count("reddit") == 2 and 0 in config["hessian"]["rounds"]


@pytest.mark.parametrize("name", ["meta", "meta_digits"])
def test_meta_compares_algorithms_under_unequal_local_steps_from_both_inits(name):
    """The poster's system heterogeneity: clients draw their local steps every round; the same algorithms from
    both inits."""
    config, runs = load(name), runs_of(name)

    drawn = {}
    for run in runs:
        steps = run_training(config, run).get("local_steps")
        if isinstance(steps, dict):
            assert steps["draw"] == "round" and steps["low"] < steps["high"]
            drawn.setdefault(config["algorithms"][run.algorithm]["name"], set()).add(run.init)
    assert drawn == {name: {"random", "pretrained"} for name in ("fedavg", "fedprox", "fednova", "fedadam")}


@pytest.mark.parametrize("name", ["meta", "meta_digits"])
def test_meta_sweeps_local_steps_from_both_inits(name):
    config, runs = load(name), runs_of(name)

    steps = {}
    for run in runs:
        training = run_training(config, run)
        if isinstance(training.get("local_steps"), int):  # (a draw per client: the system-heterogeneity labels)
            assert training["local_epochs"] is None
            steps.setdefault(training["local_steps"], set()).add(run.init)
    assert steps == {n: {"random", "pretrained"} for n in (1, 5, 10, 20, 50)}


def test_layerwise_has_the_papers_models_and_splits():
    config, runs = load("layerwise"), runs_of("layerwise")

    assert {r.model for r in runs if r.dataset == "cifar10"} == {"resnet18_nonorm", "vgg11"}
    assert {r.setting for r in runs} == {"iid", "12.0", "0.1"}
    pairs = config["layer_barriers"]["pairs"]
    # federated: two clients of each run
    assert sum(p.get("run") is not None and not p.get("consecutive") for p in pairs.values()) == 6
    assert len(config["training"]["save_clients_at"]) >= 5  # barriers over training time


@pytest.mark.parametrize(("name", "algorithm", "rounds"), [("layerwise", "central_epochs", tuple(range(0, 200, 20))),
                                                      ("layerwise_digits", "central", None)])
def test_layerwise_sweeps_consecutive_epochs_and_runs_the_random_direction_control(name, algorithm, rounds):
    """Sec. 2.1 (the average of consecutive epochs) on a centralised run in rounds of one epoch; the control of the
    authors' code (LLMC/layerwise_robustness_eval.py: 5 random directions per layer, model 1 moved)."""
    config, runs = load(name), runs_of(name)
    section = config["layer_barriers"]

    pair = layer_pair(config, runs, "central_consecutive")

    assert "random_direction" in section["modes"] and section["direction_samples"] == 5
    assert section["direction_moves"] == "first"
    assert pair.kind == "consecutive" and pair.run_a.algorithm == algorithm and pair.run_a.num_clients == 1
    training = {**config["training"], **config["algorithms"][algorithm]["training"]}
    assert training["local_epochs"] == 1  # consecutive rounds are consecutive epochs
    assert pair.rounds == (rounds or tuple(range(training["rounds"])))


def test_layerwise_centralised_pairs_differ_only_in_shuffling_init_or_both_at_low_lr():
    """Figs 1, 2, 5-7: two centralised runs (one client, all data, optimiser kept) per pair."""
    config, runs = load("layerwise"), runs_of("layerwise")
    pairs = {k: v for k, v in config["layer_barriers"]["pairs"].items() if v.get("a") and k != "gpt_inits"}

    assert set(pairs) == {"central_shuffle", "central_inits", "central_lowlr_shuffle", "central_lowlr_inits"}
    for label, pair in pairs.items():
        a, b = (resolve_run(runs, pair[k]) for k in ("a", "b"))
        assert a.num_clients == b.num_clients == 1 and a.setting == b.setting == "iid"
        assert a.algorithm == b.algorithm == ("central_lowlr" if "lowlr" in label else "central")
        assert (a.seed != b.seed, a.init != b.init) == ((True, False) if "shuffle" in label else (False, True))
        training = {**config["training"], **config["algorithms"][a.algorithm]["training"]}
        assert training["keep_optimizer_state"] and training["local_epochs"] == 20  # a checkpoint every 20 epochs
        assert training["lr"] == (0.001 if "lowlr" in label else 0.05)


def test_layerwise_fig12_trains_two_gpts_centrally_with_the_appendix_settings():
    """Fig. 12: two char_gpt models from different inits on Shakespeare, AdamW, warm-up + cosine, 15000 steps."""
    config, runs = load("layerwise"), runs_of("layerwise")
    pair = config["layer_barriers"]["pairs"]["gpt_inits"]

    a, b = (resolve_run(runs, pair[k]) for k in ("a", "b"))
    training = {**config["training"], **config["algorithms"][a.algorithm]["training"]}

    assert (a.dataset, a.model, a.num_clients) == (b.dataset, b.model, b.num_clients) == ("shakespeare", "char_gpt", 1)
    assert a.init != b.init and a.algorithm == b.algorithm
    assert training["keep_optimizer_state"] and training["local_steps"] * training["rounds"] == 15000
    assert (training["optimizer"], training["adamw_beta2"], training["lr"], training["weight_decay"]) == (
        "adamw", 0.95, 0.002, 0.001)
    # 200 windows a step: the authors' runs accumulate 4 of the paper's batches of 50 (test below)
    assert (training["lr_schedule"], training["lr_schedule_over"], training["batch_size"]) == ("cosine", "rounds", 200)
    assert training["lr_warmup"] > 0 and training["batch_sampling"] == "replacement"  # their get_batch
    assert config["model_options"]["char_gpt"]["embed_dim"] == 128


# The authors' CIFAR training (LLMC/single_train_exp.py, centralised, and federated_train.py: SGD(momentum=0.9,
# weight_decay=5e-4); LLMC/datasets.py: Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))), where the
# paper, its Appx. B lost, gives only the learning rates.
AUTHORS_CIFAR_NORMALISATION = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@pytest.mark.parametrize(("algorithm", "batch_size", "lr"), [
    ("fedavg", 64, 0.05),  # federated_train.py's BS
    ("central", 16, 0.05),  # single_train_exp.py's BS; the paper's lr
    ("central_epochs", 16, 0.05),
    ("central_lowlr", 16, 0.001),
])
def test_layerwise_trains_on_cifar_as_the_authors_code_where_the_paper_is_silent(algorithm, batch_size, lr):
    # Prepare
    config, runs = load("layerwise"), runs_of("layerwise")
    [run, *_] = [r for r in runs if r.algorithm == algorithm]

    # Execute
    training = run_training(config, run)

    # Assert: the code's optimiser and batch, the paper's lr, on images normalised as the code's loader does
    assert run.dataset == "cifar10"
    assert (training["optimizer"], training["momentum"], training["weight_decay"]) == ("sgd", 0.9, 0.0005)
    assert (training["batch_size"], training["lr"], training["lr_schedule"]) == (batch_size, lr, "constant")
    assert normalisation("cifar10", config["datasets"]["cifar10"]) == AUTHORS_CIFAR_NORMALISATION


# epfml/llm-baselines at 61deef8 (src/config/base.py), the runs LLMC/get_llm.py loads
# (base_lr0.002_bs50x4_1nodes_seed=0: bs{batch_size}x{acc_steps}): 4 accumulated batches of 50 a step, a warm-up
# over warmup_percent 0.02 of the 15000 iterations (OneCycleLR's peak at step 0.02 x 15000 = 300).
LLM_BASELINES_STEP_WINDOWS = 50 * 4
LLM_BASELINES_WARMUP_STEPS = round(0.02 * 15000)


def test_layerwise_gpt_is_the_model_and_steps_of_the_authors_llm_baselines_runs():
    # Prepare
    config, runs = load("layerwise"), runs_of("layerwise")
    [run, *_] = [r for r in runs if r.algorithm == "central_gpt"]
    training = run_training(config, run)
    steps = training["local_steps"]

    # Execute: the model the config builds, the lr of the first round's steps
    model = build_model("char_gpt", 96, 96, 256, **config["model_options"]["char_gpt"])
    lrs = step_lrs(training["lr"], training["lr_schedule"], training["lr_schedule_over"], training["lr_warmup"],
                   training["rounds"], 1, steps)

    # Assert: get_llm.py's live `args.n_layer=12` of 4 heads (`#args.n_head=4`; llm-baselines' 12 does not divide
    # the paper's 128) and the paper's embedding; 200 windows a step; the 300th step the first at the full lr
    assert (len(model.blocks), model.blocks[0].attn.num_heads, model.wpe.embedding_dim) == (12, 4, 128)
    assert training["batch_size"] == LLM_BASELINES_STEP_WINDOWS
    assert lrs.index(max(lrs)) == LLM_BASELINES_WARMUP_STEPS - 1 and max(lrs) == pytest.approx(training["lr"])
    assert all(a < b for a, b in pairwise(lrs[:LLM_BASELINES_WARMUP_STEPS]))  # a rise over the 300


def test_fedalign_has_the_papers_settings_and_ablation_grid():
    config, runs = load("fedalign"), runs_of("fedalign")
    name = {label: spec["name"] for label, spec in config["algorithms"].items()}
    epochs = {label: spec.get("training", {}).get("local_epochs", config["training"]["local_epochs"])
              for label, spec in config["algorithms"].items()}
    rounds = {label: spec.get("training", {}).get("rounds", config["training"]["rounds"])
              for label, spec in config["algorithms"].items()}
    base = [r for r in runs if r.dataset == "cifar100" and r.setting == "0.5" and r.num_clients == 16
            and epochs[r.algorithm] == 20 and r.participation == "1.0"]

    t = config["training"]
    assert (t["rounds"], t["local_epochs"], t["lr"]) == (25, 20, 0.01) and t["momentum"] > 0
    # the authors' code's ResNet56 on CIFAR, its ImageNet ResNet18 (batch norm, 7x7 stem and max-pool) on ImageNet-200
    assert {(r.dataset, r.model) for r in runs} == {("cifar100", "resnet56_bottleneck"),
                                                    ("cifar10", "resnet56_bottleneck"), ("imagenet200", "resnet18")}
    assert config["model_options"]["resnet18"] == {"norm": "batch", "stem": "imagenet"}
    # the authors' code where the paper is silent: Nesterov SGD with --wd 1e-4, MOON's classifier on its projection
    # head, the Hessian over the whole training split
    assert (t["nesterov"], t["weight_decay"], t["batch_size"]) == (True, 0.0001, 64)
    assert {spec.get("head") for spec in config["algorithms"].values() if spec["name"] == "moon"} == {"projection"}
    assert (config["hessian"]["eval_samples"], config["hessian"]["cache_graph"]) == ("all", False)
    assert {name[r.algorithm] for r in base} == FEDALIGN_METHODS
    assert {config["algorithms"][r.algorithm].get("num_subnets", 2) for r in base
            if name[r.algorithm] == "gradaug"} == {1, 2, 3, 4}  # Table 5
    # Table 5's ratios to FedAvg compare runs of one execution (cost.csv): GradAug with n = 1..4 and FedAvg, each
    # trained one client at a time, eagerly, as the paper's code (stacked, GradAug's sub-networks run at full width)
    one_at_a_time = {"client_parallel": "sequential", "capture": "eager"}
    table5 = [r for r in base if config["algorithms"][r.algorithm].get("training") == one_at_a_time]
    assert sorted((name[r.algorithm], config["algorithms"][r.algorithm].get("num_subnets")) for r in table5) == [
        ("fedavg", None), ("gradaug", 1), ("gradaug", 2), ("gradaug", 3), ("gradaug", 4)]
    for alpha in ("0.1", "2.0", "iid"):  # Table 2
        assert {name[r.algorithm] for r in runs if r.dataset == "cifar100" and r.setting == alpha} == FEDALIGN_METHODS
    for e in (10, 30):  # Table 3
        assert {name[r.algorithm] for r in runs if epochs[r.algorithm] == e} == FEDALIGN_METHODS
    for clients, part, rnds in ((32, "1.0", 25), (64, "1.0", 25), (64, "0.25", 25), (64, "0.25", 100)):  # Table 4
        assert {name[r.algorithm] for r in runs if r.dataset == "cifar100" and r.num_clients == clients
                and r.participation == part and rounds[r.algorithm] == rnds} == FEDALIGN_METHODS
    assert {name[r.algorithm] for r in runs if r.dataset == "cifar10"} == FEDALIGN_METHODS  # Table 7
    # Table 7, ImageNet-200: the seven methods and GradAug n = 1, with C = 16 and with C = 32 x 0.125, 25 rounds each,
    # GradAug's sub-networks on the code's 224/192/160/128 inputs
    imagenet = [r for r in runs if r.dataset == "imagenet200"]
    for clients, part in ((16, "1.0"), (32, "0.125")):
        chosen = [r for r in imagenet if (r.num_clients, r.participation) == (clients, part)]
        assert {name[r.algorithm] for r in chosen} == FEDALIGN_METHODS and len(chosen) == 8
        assert {(r.setting, epochs[r.algorithm], rounds[r.algorithm]) for r in chosen} == {("0.5", 20, 25)}
    assert {tuple(round(s * 224) for s in config["algorithms"][r.algorithm]["scales"]) for r in imagenet
            if name[r.algorithm] == "gradaug"} == {(224, 192, 160, 128)}
    assert len(imagenet) == 16 and len(runs) == 113
    # Table 8: mu with omega_s = 0.8, omega_s with mu = 0.05, all in Table 1's setting
    table1 = [r for r in runs if r.dataset == "cifar100" and r.setting == "0.5" and r.num_clients == 16
              and r.participation == "1.0" and epochs[r.algorithm] == 20 and rounds[r.algorithm] == 25]
    ablation = {(config["algorithms"][r.algorithm]["mu"], config["algorithms"][r.algorithm]["width"])
                for r in table1 if name[r.algorithm] == "fedalign"}
    assert ablation == {(0.005, 0.8), (0.05, 0.8), (0.1, 0.8), (0.5, 0.8), (0.05, 0.6), (0.05, 0.7), (0.05, 0.9)}
    assert config["hessian"]["enabled"] and config["hessian"]["method"] == "power"
    assert {s["kind"] for s in config["landscapes"].values()} == {"hessian"}


# The authors' CIFAR-10 script at its latest commit (github.com/debcaldarola/fedsam, paper_experiments/cifar10.sh,
# f466cc3): FedSAM -rho 0.1, FedASAM -rho 0.7 -eta 0.2, each with and without -swa --swa-c 10 (from 75% of the
# 10000 rounds, the client lr cycled from 0.01 down to the default --swa-lr 1e-4); ASAM's scale on weight tensors
# alone (models/clients/minimizers.py).
FLATNESS_SWA = {"start_round": 7501, "cycle": 10, "lr_ratio": 0.01}
FLATNESS_ASAM = {"rho": 0.7, "eta": 0.2, "adaptive_tensors": "weights"}


@pytest.mark.parametrize(("label", "name", "hyperparameters", "swa"), [
    ("fedsam", "fedsam", {"rho": 0.1}, None),
    ("fedsam_swa", "fedsam", {"rho": 0.1}, FLATNESS_SWA),
    ("fedasam", "fedasam", FLATNESS_ASAM, None),
    ("fedasam_swa", "fedasam", FLATNESS_ASAM, FLATNESS_SWA),
    ("fedavg_swa", "fedavg", {}, FLATNESS_SWA),
])
def test_flatness_trains_sam_asam_and_swa_as_the_authors_script(label, name, hyperparameters, swa):
    # Prepare
    config, runs = load("flatness"), runs_of("flatness")
    assert label in config["algorithms"]
    spec = config["algorithms"][label]

    # Execute: the hyperparameters the label's runs train with (defaults filled in), its runs and barrier pairs
    trained = algorithm_config(spec["name"], {k: v for k, v in spec.items() if k not in ("name", "training")})
    label_runs = [r for r in runs if r.algorithm == label]
    pairs = [p for p in config["interpolation"]["pairs"].values()
             if p["a"]["algorithm"] == p["b"]["algorithm"] == label]

    # Assert: as the script passes them, on every split and seed, each seed's alpha 100 vs 0.05 barrier measured
    assert spec["name"] == name
    assert {key: getattr(trained, key) for key in hyperparameters} == hyperparameters
    assert {run_training(config, r).get("swa") == swa for r in label_runs} == {True}
    assert {(r.setting, r.seed) for r in label_runs} == {(a, s) for a in ("a100", "a0_05", "a0") for s in (0, 1, 2)}
    assert sorted((p["a"]["alpha"], p["b"]["alpha"], p["a"]["seed"]) for p in pairs) == [
        ("a100", "a0_05", s) for s in (0, 1, 2)]


@pytest.mark.parametrize("name", ["flatness", "meta"])
def test_fedprox_of_our_own_studies_is_not_fedavg(name):
    # Prepare: the FedProx labels of configs whose FedProx is ours (FedAlign's tuned mu 1e-4, fedscape's default,
    # leaves the proximal term negligible: FedAvg)
    config = load(name)
    labels = [label for label, spec in config["algorithms"].items() if spec["name"] == "fedprox"]

    # Execute
    mus = {label: algorithm_config("fedprox", {k: v for k, v in config["algorithms"][label].items()
                                               if k not in ("name", "training")}).mu for label in labels}

    # Assert: mu 0.01, from FedProx's own grid 0.001..1 (Li et al. 2020), as meta.yaml's header says
    assert labels and mus == dict.fromkeys(labels, 0.01)
