"""The training benchmarks still run against the library (they are not part of any workflow, so an API change
would otherwise break them silently): each on the smallest settings, its table row checked."""

from __future__ import annotations

import math
import platform
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.workflow import ROOT
from torch.utils.flop_counter import FlopCounterMode

from fedscape.fl.hparams.registry import ALGORITHM_NAMES

BENCHMARKS = ROOT / "benchmarks"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# The largest difference of the two modes' new global models in float32. The bottleneck ResNet56's round is
# chaotic there (a batch norm over 8 images, 56 layers deep: 1.1e-3 to 5.4e-3 seen here in either 1x1 form); the
# forms' exactness is tested in float64 (tests/unit/test_vectorized_bn.py).
@pytest.mark.parametrize(("model", "layouts", "forms", "tol"), [
    (["--model", "cnn_small"], ["auto"], ["auto"], 1e-4),
    (["--model", "mlp"], ["auto"], ["auto"], 1e-4),
    (["--model", "convnet"], ["channels_last", "channels_first"], ["auto"], 1e-4),  # a CPU's order and a GPU's
    (["--model", "resnet20", "--norm", "group"], ["auto"], ["auto"], 1e-4),
    (["--model", "resnet56_bottleneck", "--norm", "batch"], ["channels_first"], ["grouped", "bmm"], 5e-2),
])
def test_bench_vectorized_runs_and_matches_sequential(model, layouts, forms, tol):
    out = _run("bench_vectorized.py", "--threads", "1", "--clients", "2", "--repeats", "1", "--local-epochs", "1",
               "--samples-per-client", "8", "--layout", *layouts, "--pointwise", *forms, *model)

    header = [line for line in out.splitlines() if line.startswith("| layout | 1x1 |")]
    rows = [line for line in out.splitlines()
            if line.startswith(tuple(f"| {layout} | {form} | 2 |" for layout in layouts for form in forms))]
    assert "CPU kernels" in out and "oneDNN ISA" in out and len(rows) == len(layouts) * len(forms)
    assert len(header) == 1
    for row in rows:
        cells = dict(zip((c.strip() for c in header[0].strip("|").split("|")),
                         (c.strip() for c in row.strip("|").split("|")), strict=True))
        assert float(cells["max abs diff"]) < tol  # the two modes' new global models agree
        assert cells["replayed steps"] == "0"  # no CUDA graphs on a CPU
        assert cells["peak GiB seq / vec"] == "- / -"  # no device allocator to ask on a CPU


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (1, 1), (1, 2)])
def test_bench_stacked_conv_forms_compute_each_clients_convolution(kernel, stride, float64_default):
    # Prepare: 3 clients' batches of 2 images and their own weights
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_stacked_conv as bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    k, b, c_in, c_out, size = 3, 2, 4, 5, 6
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(k, b, c_in, size, size, generator=gen)
    w = torch.randn(k, c_out, c_in, kernel, kernel, generator=gen)
    expected = torch.stack([F.conv2d(x[i], w[i], None, stride, kernel // 2) for i in range(k)])  # [K, B, C', H', W']
    out_size = expected.shape[-1]

    # Execute / Assert: every form, its output brought to [K, B, C', H', W']
    for form, (fn, _) in bench.FORMS.items():
        got = fn(x, w, stride)
        if form.startswith("grouped"):  # [B, K*C', H', W']
            got = got.view(b, k, c_out, out_size, out_size).transpose(0, 1)
        elif form == "unfold_bmm":  # [K, C', B, H'*W']
            got = got.view(k, c_out, b, out_size, out_size).transpose(1, 2)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=form)


@pytest.mark.parametrize("layer", [(4, 5, 3, 8, 1, 1), (4, 5, 3, 7, 2, 1), (6, 3, 1, 8, 1, 1), (6, 3, 1, 7, 2, 1)])
def test_bench_stacked_conv_flops_are_what_torch_counts_for_training(layer):
    # Prepare: the layer's convolution for 3 clients x 2 images, inputs and weights needing gradients
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_stacked_conv as bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    c_in, c_out, kernel, size, stride, _ = layer
    x = torch.randn(3, 2, c_in, size, size, requires_grad=True)
    w = torch.randn(3, c_out, c_in, kernel, kernel, requires_grad=True)

    # Execute: the forward and both backward products, counted by torch
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(bench.FORMS["loop"][0](x, w, stride).sum(), (x, w))

    # Assert
    assert bench.train_flops(layer, clients=3, batch=2) == counter.get_total_flops() > 0


@pytest.mark.parametrize(("model", "layers", "total"), [("resnet20", 6, 19), ("resnet56_bottleneck", 17, 58)])
def test_bench_stacked_conv_times_every_form_of_every_layer(model, layers, total):
    out = _run("bench_stacked_conv.py", "--device", "cpu", "--model", model, "--clients", "2", "--batch-size", "2",
               "--repeats", "1", "--threads", "1")

    lines = [line for line in out.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    forms = [c.strip() for c in header.strip("|").split("|")][2:]
    assert forms == ["grouped_cl", "grouped_cf", "grouped_cf_bmm", "vmap", "unfold_bmm", "loop"]  # no TF32 on a CPU
    assert len(rows) == layers + 2 and rows[-2].startswith(f"| {model}'s {total}")
    rates = [float(c) for c in rows[-1].strip("|").split("|")[2:]]
    assert rows[-1].startswith("| TFLOP/s of the ") and len(rates) == len(forms) and min(rates) > 0
    for row in rows[:-1]:
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        assert len(cells) == len(forms) and all(float(c.split(" / ")[0]) > 0 for c in cells)


@pytest.mark.parametrize(("script", "args", "needles"), [
    ("bench_hvp.py", ["--samples", "32", "--repeats", "1", "--device", "cpu"],
     ["HVP, cached graph", "exact diagonal (trace_estimator: exact), form per_sample", "top-2 eigenvalues"]),
    # what it ran on, as the other benchmarks print it (machine.py)
    ("bench_client_stats.py", ["--model", "cnn_small", "--dataset", "digits", "--clients", "2", "--repeats", "1"],
     ["round_stats", "CPU kernels"]),
    ("bench_surface.py", ["--points", "4", "--repeats", "1"], ["speed-up of the surface evaluator"]),
    ("bench_fingerprint.py", ["--cifar-train", "50", "--cifar-test", "20", "--files", "20", "--file-kb", "1",
                              "--repeats", "1", "--jobs", "2"], ["| 20 files of 1 KiB |"]),
    ("bench_surface.py", ["--model", "resnet20", "--norm", "batch", "--samples", "64", "--batch-size", "32",
                          "--points", "2", "--repeats", "1"], ["surface evaluator / plain eval loop, images/s"]),
    ("bench_surface.py", ["--model", "cnn_small", "--norm", "batch", "--points", "2", "--repeats", "1"],
     ["with BN statistics recomputed"]),
])
def test_quick_benchmarks_run(script, args, needles):
    out = _run(script, *args)
    assert [needle for needle in needles if needle not in out] == []


def test_bench_sharpness_compares_the_methods_at_the_same_gradients():
    # Execute: an untrained cnn_small on 16 samples, one ball of each form, 2 steps after the SAM step
    out = _run("bench_sharpness.py", "--epochs", "0", "--samples", "16", "--rho", "0.5", "--adaptive-rho", "0.5",
               "--steps", "2", "--reference-steps", "3", "--repeats", "1", "--threads", "1")

    # Assert: one row per ball, the ascent's 3 gradients, APGD's no more (it keeps its best point's), the ratio
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith(("| plain |", "| adaptive |"))]
    assert [r[:3] for r in rows] == [["plain", "0.5", "2"], ["adaptive", "0.5", "2"]]
    for _, _, _, gradients, ascent, apgd, ratio, reference, *_ in rows:
        taken = [int(g) for g in gradients.split(" / ")]
        assert taken[0] == 3 and taken[-1] <= 3
        assert float(ascent) >= 0 and float(apgd) >= 0 and float(ratio) == pytest.approx(float(apgd) / float(ascent),
                                                                                        rel=2e-3)
        assert len(reference.split(" / ")) == 2
    assert "CPU:" in out and "torch" in out


def test_bench_gpu_projects_the_measured_step_costs():
    # Prepare / Execute: the digits pilot on CPU, at the smallest settings
    out = _run("bench_gpu.py", "--device", "cpu", "--threads", "1", "--steps", "1", "--repeats", "1", "--clients", "2",
               "--configs", "pilot_digits")

    # Assert: one step-cost row per model, and each projection is its client steps times the measured costs, "now"
    # its stacked client steps (each chunk as long as its longest client) times the vectorised cost; its evaluated
    # images times the evaluation's cost, added to "now"
    tables = [[[cell.strip() for cell in line.strip("|").split(" | ")] for line in block.splitlines()
               if line.startswith("| ")]
              for block in out.split("\n\n")]
    costs = {row[0]: [float(row[1]), float(row[2]), float(row[4].split()[0]), float(row[9])] for row in tables[0][1:]}
    projected = [row for row in tables[1][1:] if row[1] != "all"]
    assert costs and projected and {row[1] for row in projected} == set(costs)
    for _, model, runs, steps, stacked, plain, before, now, equal, images, evaluating, total in projected:
        assert int(runs) > 0 and int(stacked) > int(steps) > 0  # Dirichlet shards: the stacks carry padding
        assert float(plain) == pytest.approx(int(steps) * costs[model][0] / 3.6e6, rel=2e-3)
        assert float(before) == pytest.approx(int(steps) * costs[model][1] / 3.6e6, rel=2e-3)
        assert float(now) == pytest.approx(int(stacked) * costs[model][2] / 3.6e6, rel=2e-3)
        assert float(now) > float(equal) > 0  # as if every shard were pool / clients: the former projection
        assert int(images) > 0 and float(evaluating) == pytest.approx(int(images) * costs[model][3] / 3.6e9, rel=2e-3)
        assert float(total) == pytest.approx(float(now) + float(evaluating), rel=2e-3)
    assert "shards taken equal" not in out  # the digits' partitions are made here
    # every kind's evaluation beside the plain eval loop's, and their ratio as printed (to its 2 decimals, of the
    # 4 significant digits printed)
    for row in tables[0][1:]:
        cells = dict(zip(tables[0][0], row, strict=True))
        fedscape, plain = float(cells["evaluation ms/1,000 images"]), float(cells["plain evaluation ms/1,000 images"])
        assert fedscape > 0 and plain > 0 and cells["evaluation / plain"].endswith("x")
        assert float(cells["evaluation / plain"][:-1]) == pytest.approx(fedscape / plain,
                                                                        abs=0.005 + 2e-3 * fedscape / plain)
    # a CPU has no captured steps, and says why
    assert all(row[7] == "n/a: CUDA graphs need a CUDA device, not cpu" for row in tables[0][1:])
    # each vectorised kind measured at its runs' clients per round, capped by --clients 2, and the table says so
    assert all(row[4].endswith("(2 clients)") for row in tables[0][1:])
    assert "# --clients 2 measured fewer clients than the runs of 4, 10, 16 clients per round" in out


@pytest.mark.parametrize(("name", "client_parallel", "path"), [
    ("pilot_digits", "auto", "vectorized"), ("pilot_digits", "sequential", "sequential"), ("layerwise", "auto", None),
])
def test_bench_gpu_prices_each_run_on_its_own_path_and_names_the_runs_it_does_not_measure(name, client_parallel,
                                                                                          path):
    # Prepare: a paper config, its runs' client_parallel set for all of them
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    config = bench_gpu.load_config(bench_gpu.PAPERS / f"{name}.yaml", bench_gpu.SCHEMA)
    config["training"]["client_parallel"] = client_parallel

    # Execute
    per_kind, others, _ = bench_gpu.project(config, torch.device("cpu"), {})

    # Assert: the runs' own path, never a stacked round for runs that train sequentially; the text model's runs
    # counted, not measured (an image network's step costs say nothing of them)
    runs = bench_gpu.build_runs(config)
    cnn = [kind for kind in per_kind if kind.model == "cnn_small"]
    if path is not None:
        assert cnn and {kind.path for kind in cnn} == {path} and others == {}
    else:
        assert others == {"shakespeare": sum(r.dataset == "shakespeare" for r in runs)} and others["shakespeare"] > 0
    assert sum(work.runs for work in per_kind.values()) + sum(others.values()) == len(runs)


def _bench_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_gpu

    return bench_gpu


def test_bench_gpu_captures_only_the_runs_whose_own_algorithm_captures(monkeypatch):
    # Prepare: fedalign.yaml's CIFAR-100 runs, all sequential (on CUDA FedAvg's would otherwise train vectorised)
    import argparse

    import torch

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "fedalign.yaml", bench_gpu.SCHEMA)
    config["training"]["client_parallel"] = "sequential"
    runs = {}
    for run in bench_gpu.build_runs(config):
        if run.dataset == "cifar100":
            runs.setdefault(run.algorithm, run)
    models: dict = {}

    # Execute: each run's kind on a CUDA device (the decision reads the device type only) and on a CPU
    cuda = {name: bench_gpu.run_work(config, runs[name], torch.device("cuda"), models)[0]
            for name in ("fedavg", "moon", "fedalign")}
    cpu = bench_gpu.run_work(config, runs["fedavg"], torch.device("cpu"), models)[0]
    args = argparse.Namespace(clients=0)
    rows = {name: bench_gpu.price(kind, {"plain_ms": 4.0, "sequential_ms": 3.0}, 1.0, None, {}, args, "cuda")
            for name, kind in cuda.items()}

    # Assert: FedAvg's steps are captured on CUDA and priced so; MOON's and FedAlign's (their own local objectives)
    # are eager and priced at the sequential step; nothing is captured on a CPU
    assert {kind.path for kind in cuda.values()} == {"sequential"}
    assert cuda["fedavg"].capture and not cuda["moon"].capture and not cuda["fedalign"].capture
    # one shape (one plain reference), three local steps
    assert cuda["moon"].shape == cuda["fedalign"].shape == cuda["fedavg"].shape
    assert [cuda[name].algorithm for name in ("fedavg", "moon", "fedalign")] == ["fedavg", "moon", "fedalign"]
    assert not cpu.capture
    assert rows["fedavg"]["now_ms"] == rows["fedavg"]["captured_ms"] == 1.0
    for name in ("moon", "fedalign"):
        assert rows[name]["now_ms"] == 3.0 and rows[name]["captured_ms"] is None
        assert "resolve_capture" in rows[name]["why_not_captured"]


def test_bench_gpu_decides_a_runs_path_on_the_network_its_algorithm_trains(monkeypatch):
    # Prepare: meta_digits' MOON on its projection head, which cnn_small has no stacked features for (FedAvg's
    # cnn_small stacks)
    import torch

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "meta_digits.yaml", bench_gpu.SCHEMA)
    config["algorithms"]["moon"]["head"] = "projection"
    runs = {r.algorithm: r for r in bench_gpu.build_runs(config) if r.algorithm in ("moon", "fedavg")}

    # Execute: the kinds as on a card
    models: dict = {}
    kinds = {name: bench_gpu.run_work(config, run, torch.device("cuda"), models)[0] for name, run in runs.items()}

    # Assert: MOON's clients train one after another there, as its trainer would (not priced as stacked)
    assert kinds["fedavg"].path == "vectorized" and kinds["moon"].path == "sequential"
    assert kinds["moon"].shape == kinds["fedavg"].shape


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_only_server_side_algorithms_take_fedavgs_local_step(algorithm):
    # Prepare / Execute
    from fedscape.fl.strategies.registry import strategy_class

    same = strategy_class(algorithm).local_step_is_fedavgs()

    # Assert: the server optimisers and FedNova's normalised averaging train their clients as FedAvg does; every
    # algorithm with a client hook, a stacked-step hook or a model change of its own (or inherited) does not
    assert same == (algorithm in {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fednova"})


def test_bench_gpu_prices_each_run_at_its_own_algorithms_local_step(monkeypatch):
    # Prepare: meta_digits' runs (FedAvg, the server optimisers, FedProx at two mu, SAM, MOON, GradAug...), every
    # timed call recorded with the strategy it trained with, instead of timed
    import argparse

    import torch

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "meta_digits.yaml", bench_gpu.SCHEMA)
    per_kind, _, _ = bench_gpu.project(config, torch.device("cpu"), {})
    trained: list = []
    real_local_train = bench_gpu.local_train

    def recording_local_train(model, flat, global_params, global_buffers, data, client, round_, strategy, cfg,
                              **kwargs):
        trained.append((strategy.name, strategy.config))
        return real_local_train(model, flat, global_params, global_buffers, data, client, round_, strategy, cfg,
                                **kwargs)

    monkeypatch.setattr(bench_gpu, "local_train", recording_local_train)
    monkeypatch.setattr(bench_gpu, "timed_together",
                        lambda fns, device, repeats: {name: (fn(), 1.0)[1] for name, fn in fns.items()})
    args = argparse.Namespace(steps=1, repeats=1, clients=2, precision="fp32")
    kinds = [k for k in per_kind if k.model == "cnn_small"]
    shapes: dict = {}
    for k in kinds:
        shapes.setdefault(k.shape, []).append(k)

    # Execute
    rows = {}
    for group in shapes.values():
        rows.update(bench_gpu.measure(group, args, torch.device("cpu")))

    # Assert: one kind per local step of a shape; the server-side algorithms share FedAvg's; each local step's
    # sequential step trained once, with its own algorithm and hyperparameters (FedProx's two mu apart)
    runs = bench_gpu.build_runs(config)
    algorithms = {bench_gpu.planned_train(config, r).algorithm for r in runs}
    assert {"fedadam", "fedprox", "moon", "gradaug"} <= algorithms
    assert {k.algorithm for k in kinds} == {a for a in algorithms
                                            if not bench_gpu.strategy_class(a).local_step_is_fedavgs()} | {"fedavg"}
    locals_ = {(k.shape, k.local) for k in kinds}
    assert len(trained) == len(locals_)
    assert sorted(map(repr, trained)) == sorted(repr(local) for _, local in locals_)
    assert len({k.hyperparameters for k in kinds if k.algorithm == "fedprox"}) == 2
    assert set(rows) == set(kinds)


@pytest.mark.parametrize("batch_size", [40, 128])  # shards of 40-300 samples: a partial last batch; one in most
@pytest.mark.parametrize("drop_last", [False, True])
def test_bench_gpu_counts_the_steps_the_trainer_takes(monkeypatch, batch_size, drop_last):
    # Prepare: the digits pilot's runs with a batch that leaves a partial last batch (40) or exceeds most clients
    # (128: under drop_last the trainer still takes that one batch), on an IID and a Dirichlet(0.1) split
    import torch

    from fedscape.data.partition import make_partition
    from fedscape.data.sources import source_from_options
    from fedscape.fl.local import client_generator, local_plan

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "pilot_digits.yaml", bench_gpu.SCHEMA)
    config["training"].update(batch_size=batch_size, drop_last=drop_last)
    runs = bench_gpu.build_runs(config)
    runs = [next(r for r in runs if (r.num_clients, r.participation, r.setting) == key)
            for key in ((10, "1.0", "iid"), (10, "1.0", "0.1"), (20, "0.2", "0.5"))]

    for run in runs:
        # Execute
        _, cfg, work = bench_gpu.run_work(config, run, torch.device("cpu"), {})

        # Assert: the steps of the trainers' own plan of every sampled client in every round, on the shards of the
        # partition the run's partition job makes from the digits' own labels; a vectorised round as long as its
        # longest sampled client, for all of them (at most 64 clients: one chunk); equal shares apart
        job = bench_gpu.planned_partition(config, run.dataset, run.setting, run.num_clients, run.seed)
        labels = source_from_options(run.dataset, job.dataset_options).labels
        alpha = math.inf if run.setting == "iid" else float(run.setting)
        sizes = make_partition(labels, run.num_clients, alpha, run.seed, job.min_size, job.max_tries).sizes
        share = bench_gpu.client_share(run, bench_gpu.planned_train(config, run).dataset_options)
        client = stacked = equal = 0
        for t in range(1, cfg.rounds + 1):
            work_t = cfg.client_work(t, run.num_clients)
            sampled = bench_gpu.sample_clients(cfg.seed, t, run.num_clients, cfg.participation)
            steps = [len(local_plan(cfg, int(sizes[c]), work_t[c], t, client_generator(cfg.seed, t, c)).batches)
                     for c in sampled]
            client += sum(steps)
            stacked += len(steps) * max(steps)
            equal += sum(len(local_plan(cfg, share, work_t[c], t, client_generator(cfg.seed, t, c)).batches)
                         for c in sampled)
        assert cfg.drop_last == drop_last and work.equal_because is None
        assert (work.steps.client, work.steps.stacked, work.equal.client) == (client, stacked, equal)
        assert client > 0 and stacked >= client
        if batch_size == 40:  # shards of unequal batches: the stacks carry padding, the IID split's none
            assert stacked == client if run.setting == "iid" else stacked > client


def test_bench_gpu_makes_a_balanced_training_splits_partitions_from_its_class_counts(monkeypatch):
    # Prepare: pilot.yaml (CIFAR-10, no proxy part) and a CIFAR-10 pool with a 10% proxy part; fedalign.yaml's
    # ImageNet-200 runs (500 training images of each class, Dirichlet(0.5)); meta.yaml's FEMNIST runs, split by writer
    bench_gpu = _bench_gpu(monkeypatch)
    pilot = bench_gpu.load_config(bench_gpu.PAPERS / "pilot.yaml", bench_gpu.SCHEMA)
    fedalign = bench_gpu.load_config(bench_gpu.PAPERS / "fedalign.yaml", bench_gpu.SCHEMA)
    meta = bench_gpu.load_config(bench_gpu.PAPERS / "meta.yaml", bench_gpu.SCHEMA)
    skewed = next(r for r in bench_gpu.build_runs(pilot) if (r.setting, r.num_clients) == ("0.1", 10))
    imagenet = next(r for r in bench_gpu.build_runs(fedalign) if r.dataset == "imagenet200")
    femnist = {r.setting: r for r in bench_gpu.build_runs(meta) if r.dataset == "femnist"}

    # Execute
    pool = bench_gpu.pool_labels("cifar10", {"proxy_fraction": 0.1, "split_seed": 0})
    sizes, why = bench_gpu.client_sizes(pilot, skewed)
    imagenet_sizes, imagenet_why = bench_gpu.client_sizes(fedalign, imagenet)
    femnist_sizes = {setting: bench_gpu.client_sizes(meta, run) for setting, run in femnist.items()}

    # Assert: 4,500 of each class left; the Dirichlet(0.1) clients share all 50,000 images unequally, ImageNet-200's
    # clients its 100,000; FEMNIST's writers and class counts are not known here (its shares are taken equal, and
    # the script says why)
    assert np.bincount(pool).tolist() == [4500] * 10
    assert why is None and len(sizes) == 10 and sum(sizes) == 50_000 and max(sizes) > 1.5 * 50_000 / 10
    assert imagenet_why is None and len(imagenet_sizes) == imagenet.num_clients and sum(imagenet_sizes) == 100_000
    assert femnist_sizes["writers"] == (None, "the natural partition reads writers")
    assert all(sizes == (None, "femnist's class counts need its files")
               for setting, sizes in femnist_sizes.items() if setting != "writers")


@pytest.mark.parametrize("eval_every", [1, 4])
def test_bench_gpu_counts_the_images_each_runs_evaluations_pass_forward(monkeypatch, eval_every):
    # Prepare: the digits pilot (15- and 8-round runs, a 20% proxy part held out of the pool), evaluating every round
    # or every 4th
    from fedscape.data.sources import source_from_options

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "pilot_digits.yaml", bench_gpu.SCHEMA)
    config["training"]["eval_every"] = eval_every
    runs = bench_gpu.build_runs(config)

    # Execute
    per_kind, _, _ = bench_gpu.project(config, torch.device("cpu"), {})

    # Assert: every run evaluates its global model at round 0, every eval_every-th round and the last, each time on
    # its clients' pool (the digits' training part less the proxy part) and the test part
    source = source_from_options("digits", bench_gpu.planned_train(config, runs[0]).dataset_options)
    pool, test = len(source.labels), len(source.test_index)
    assert (pool, test) == (1078, 449)
    expected = 0
    for run in runs:
        rounds = bench_gpu.planned_train(config, run).train_config().rounds
        evaluations = len(set(range(0, rounds + 1, eval_every)) | {rounds})
        expected += evaluations * (pool + test)
        assert sum(bench_gpu.client_sizes(config, run)[0]) == pool  # the clients share the whole pool
    assert {bench_gpu.planned_train(config, r).train_config().rounds for r in runs} == {8, 15}
    assert sum(work.evaluated for work in per_kind.values()) == expected


def test_bench_gpu_knows_the_test_set_of_every_image_data_set(monkeypatch):
    # Prepare
    from fedscape.data.specs import DATASETS

    bench_gpu = _bench_gpu(monkeypatch)
    images = [name for name, info in DATASETS.items() if info.inputs == "image"]

    # Execute
    sizes = {name: bench_gpu.size_of_test_set(name, {"test_fraction": 0.25}) for name in images}

    # Assert: the bundled digits' a quarter of its 1,797 samples (449.25); CIFAR's test batch, ImageNet-200's 50
    # validation images of each class; FEMNIST's an estimate, a tenth of its samples
    assert sizes == {"digits": 449, "cifar10": 10_000, "cifar100": 10_000, "imagenet200": 10_000, "femnist": 80_526}


def _timed_once(bench_gpu, monkeypatch) -> list[set[str]]:
    """Every timing call made once, untimed (1 s each); the names timed together in each call, recorded."""
    rotations: list[set[str]] = []

    def together(fns, device, repeats):
        rotations.append(set(fns))
        return {name: (fn(), 1.0)[1] for name, fn in fns.items()}

    monkeypatch.setattr(bench_gpu, "timed_together", together)
    return rotations


@pytest.mark.parametrize("path", ["vectorized", "captured"])
def test_bench_gpu_times_every_step_beside_the_plain_one(monkeypatch, path):
    # Prepare: a digits pilot kind whose runs train vectorised over 4 clients, or (as on a card) sequentially and
    # captured, with a stand-in capture (the CPU has no CUDA graphs) and local training that ignores it
    import argparse
    import dataclasses

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "pilot_digits.yaml", bench_gpu.SCHEMA)
    per_kind, _, _ = bench_gpu.project(config, torch.device("cpu"), {})
    kind = next(k for k in per_kind if k.model == "cnn_small" and k.clients == 4)
    if path == "captured":
        kind = dataclasses.replace(kind, path="sequential", capture=True, clients=0)

        class Capture:
            on, difference = True, None

            def __init__(self, model, batch_size):
                pass

            def close(self):
                pass

        real_local_train = bench_gpu.local_train
        monkeypatch.setattr(bench_gpu, "capture_blocker", lambda model, strategy, device_type: None)
        monkeypatch.setattr(bench_gpu, "CapturedForward", Capture)
        monkeypatch.setattr(bench_gpu, "local_train",
                            lambda *a, capture=None: real_local_train(*a))
    rotations = _timed_once(bench_gpu, monkeypatch)
    args = argparse.Namespace(steps=1, repeats=1, clients=0, precision="fp32")

    # Execute
    row = bench_gpu.measure([kind], args, torch.device("cpu"))[kind]

    # Assert: the step its runs take is timed in a rotation with the plain step, so that their ratio carries no drift
    # of the device's speed between two measurements
    assert any({"plain", path} <= names for names in rotations)
    if path == "vectorized":  # 1 s for one step of 4 clients, against 1 s for the plain step of one
        assert row["now_ms"] == row["vectorized_ms"] == 250.0 and row["plain_per_vectorized"] == 4.0
    else:
        assert row["now_ms"] == row["captured_ms"] == 1e3
    # and fedscape's evaluation in a rotation with the plain eval loop, each per image of its one batch
    assert {"eval", "plain_eval"} in rotations
    assert row["eval_ms"] == row["plain_eval_ms"] == 1e3 / kind.eval_batch_size


@pytest.mark.parametrize("batch_size", [7, 50, 64])  # a partial last batch, one batch, a batch beyond the images
def test_bench_gpu_plain_eval_loop_computes_what_evaluate_does(monkeypatch, batch_size):
    # Prepare: a network with batch norm left in training mode, its running statistics away from any batch's
    bench_gpu = _bench_gpu(monkeypatch)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    with torch.no_grad():
        model(3.0 + torch.randn(64, 12))
    x, y = torch.randn(50, 12), torch.randint(0, 3, (50,))
    expected = bench_gpu.evaluate(model, x, y, batch_size)

    # Execute
    total, correct = bench_gpu.plain_evaluate(model, x, y, batch_size)

    # Assert: the reference passes the same work forward (in eval mode, every image once) and returns what an
    # evaluation must: the summed loss and the correct count
    assert total == pytest.approx(expected.loss * expected.n, rel=1e-5)
    assert correct == round(expected.acc * expected.n)


@pytest.mark.parametrize(("repeats", "scale", "captured"), [(2, 1.0, True), (3, 1.0, True), (2, 2.0, False)])
def test_bench_gpu_times_the_sequential_step_on_the_models_own_forward(monkeypatch, repeats, scale, captured):
    # Prepare: a sequential kind that captures, as on a card: the capture tests' stand-in graph maker, exact (scale 1)
    # or refused by the check at capture (scale 2); the captures made, recorded
    import argparse

    from unit.test_capture import stand_in_maker

    bench_gpu = _bench_gpu(monkeypatch)
    made = []

    class StandIn(bench_gpu.CapturedForward):
        def __init__(self, model, batch_size):
            super().__init__(model, batch_size, make_graphed=stand_in_maker(scale))
            made.append(self)

    monkeypatch.setattr(bench_gpu, "CapturedForward", StandIn)
    monkeypatch.setattr(bench_gpu, "capture_blocker", lambda model, strategy, device_type: None)
    kind = bench_gpu.StepKind("cnn_small", (), 1, 8, 10, 16, 0.9, 0.0, "sequential", True, 0)
    args = argparse.Namespace(steps=2, repeats=repeats, clients=0)
    device = torch.device("cpu")
    data = bench_gpu.synthetic_clients(kind, 1, args.steps * kind.batch_size, device)
    cfg = bench_gpu.TrainConfig(local_epochs=1, batch_size=kind.batch_size, lr=0.01, momentum=0.9, seed=0,
                                client_chunk_size=0)

    # Execute
    row = bench_gpu.measure_local([kind], lambda: None, data, cfg, args, device)[kind]

    # Assert: the graphs replay every full batch of the captured step's calls (its warm-up and each repeat) and none
    # of the sequential step's, which is the eager step the captured one is compared with; a refused capture replays
    # nothing and says why
    assert len(made) == 1
    if captured:
        assert row["captured_ms"] is not None and row["why_not_captured"] is None
        assert made[0].replays == (repeats + 1) * args.steps
    else:
        assert row["captured_ms"] is None and row["why_not_captured"].startswith("the check at capture failed")
        assert made[0].replays == 0
    assert "forward" not in vars(made[0].model)  # the model's own forward back after the measurement


def test_bench_gpu_stacks_all_of_a_kinds_clients_in_one_measured_round(monkeypatch):
    # Prepare: a digits pilot kind whose runs stack 70 clients a round (more than TrainConfig's default chunk of 64),
    # the clients of each stacked step recorded
    import argparse
    import dataclasses

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "pilot_digits.yaml", bench_gpu.SCHEMA)
    per_kind, _, _ = bench_gpu.project(config, torch.device("cpu"), {})
    kind = dataclasses.replace(next(k for k in per_kind if k.model == "cnn_small"), clients=70)
    stacked: list[int] = []
    real_step = bench_gpu.VectorizedTrainer._step

    def counting_step(self, st, t, padded, lr, xb, *a, **kw):
        stacked.append(xb.shape[0])
        return real_step(self, st, t, padded, lr, xb, *a, **kw)

    monkeypatch.setattr(bench_gpu.VectorizedTrainer, "_step", counting_step)
    _timed_once(bench_gpu, monkeypatch)
    args = argparse.Namespace(steps=1, repeats=1, clients=0, precision="fp32")

    # Execute
    bench_gpu.measure([kind], args, torch.device("cpu"))

    # Assert: the measured round stacks the kind's 70 clients at once, as its runs do, not in chunks of 64
    assert stacked and max(stacked) == 70


@pytest.mark.parametrize(("chunk", "cap"), [(64, 0), (8, 0), (64, 3)])
def test_bench_gpu_stacks_as_many_clients_as_the_runs_train_together(monkeypatch, chunk, cap):
    # Prepare: the digits pilot (10 and 20 clients, participation 0.2-1.0), its chunk of stacked clients
    import argparse

    import torch

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "pilot_digits.yaml", bench_gpu.SCHEMA)
    config["training"]["client_chunk_size"] = chunk
    models: dict = {}

    # Execute
    kinds = {run: bench_gpu.run_work(config, run, torch.device("cpu"), models)[0]
             for run in bench_gpu.build_runs(config)}
    args = argparse.Namespace(clients=cap)

    # Assert: a vectorised kind's clients are its runs' clients per round, at most the chunk; the measured round
    # stacks them, at most --clients
    assert {kind.path for kind in kinds.values()} == {"vectorized"}
    for run, kind in kinds.items():
        per_round = max(1, round(float(run.participation) * run.num_clients))
        assert kind.clients == min(per_round, chunk) and f"vectorized over {kind.clients} clients" in kind.label
        assert bench_gpu.stacked_clients(kind, args) == (min(kind.clients, cap) if cap else kind.clients)
    assert len({kind.clients for kind in kinds.values()}) > 1


def test_the_gpu_session_runs_scripts_and_tests_that_exist_with_flags_they_take():
    # Prepare
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_session import CALL_FILES, CALL_SECONDS, CALLS, PARTS
    finally:
        sys.path.remove(str(BENCHMARKS))

    # Execute / Assert: every script is there and declares every flag passed to it; every test file is there
    for commands in PARTS.values():
        for _, argv, _ in commands:
            if argv[1] == "-m":
                assert all((ROOT / a).is_file() for a in argv if a.startswith("tests/"))
                continue
            if argv[1] == "-c":
                continue
            script = (ROOT / argv[1]).read_text()
            for flag in (a for a in argv[2:] if a.startswith("--")):
                assert f'"{flag}"' in script, (argv[1], flag)
    # every part in one call, each call within a device call's 600 s and the files it brings back
    assert sorted(p for call in CALLS for p in call) == sorted(PARTS)
    assert all(sum(limit for p in call for _, _, limit in PARTS[p]) <= CALL_SECONDS < 600 for call in CALLS)
    assert all(sum(len(PARTS[p]) for p in call) <= CALL_FILES for call in CALLS)


def test_the_gpu_session_lists_its_device_calls_most_wanted_first():
    # Prepare
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_session import CALLS
    finally:
        sys.path.remove(str(BENCHMARKS))

    # Execute
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_session.py"), "--list"], capture_output=True,
                          text=True, check=True)

    # Assert: one line per call, in CALLS' order, each a command that runs that call's parts on a card
    calls = [line for line in proc.stdout.splitlines() if line.startswith("call ")]
    assert len(calls) == len(CALLS) > 1
    for i, (line, parts) in enumerate(zip(calls, CALLS, strict=True), 1):
        assert line.startswith(f"call {i}: source .gpu/setup.sh && python3 benchmarks/gpu_session.py --budget ")
        assert line.endswith(f"--out $OUT {' '.join(parts)}")


def test_the_gpu_session_refuses_an_unknown_part():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_session.py"), "--out", "/tmp/x", "stepz"],
                          capture_output=True, text=True)

    assert proc.returncode == 2 and "unknown part or command 'stepz'; valid parts: tests, steps" in proc.stderr


def _gpu_session(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_session

    return gpu_session


@pytest.mark.parametrize(("env", "flag", "budget"), [
    (None, [], None),  # CALL_SECONDS: a call given all of its 600 s
    ("230", [], 230.0),  # the environment's, for a call the run tool cuts shorter
    ("230", ["--budget", "100"], 100.0),  # the flag's wins
])
def test_the_gpu_session_budget_is_the_flags_else_the_environments(monkeypatch, tmp_path, env, flag, budget):
    # Prepare: the commands not run, only the deadline they would be given kept, on a clock that stands still
    gpu_session = _gpu_session(monkeypatch)
    deadlines = []
    monkeypatch.setattr(gpu_session, "run_commands", lambda commands, out, deadline: deadlines.append(deadline) or 0)
    monkeypatch.setattr(gpu_session, "time", types.SimpleNamespace(perf_counter=lambda: 1000.0))
    monkeypatch.delenv("FEDSCAPE_GPU_BUDGET", raising=False)
    if env is not None:
        monkeypatch.setenv("FEDSCAPE_GPU_BUDGET", env)
    monkeypatch.setattr(sys, "argv", ["gpu_session.py", *flag, "--out", str(tmp_path), "environment"])

    # Execute
    with pytest.raises(SystemExit) as stop:
        gpu_session.main()

    # Assert
    assert stop.value.code == 0
    assert deadlines == [1000.0 + (gpu_session.CALL_SECONDS if budget is None else budget)]


def test_the_gpu_session_checks_its_environment_first_and_stacks_no_gradaug(monkeypatch):
    # Prepare
    gpu_session = _gpu_session(monkeypatch)
    tests = gpu_session.PARTS["tests"]

    # Assert: a quick check of the machine's packages and card before the CUDA tests, which go on past a file that
    # fails to collect; GradAug's stacked step, which no run takes on a GPU, is not timed
    (name, argv, limit), (_, pytest_argv, _) = tests
    assert name == "environment" and argv[1] == "-c" and limit <= 20
    assert "snakemake.iocontainers" in argv[2] and "torch.cuda.is_available()" in argv[2]
    assert pytest_argv[1:3] == ["-m", "pytest"] and "--continue-on-collection-errors" in pytest_argv
    commands = [c for commands in gpu_session.PARTS.values() for c in commands]
    assert not [n for n, argv, _ in commands if "gradaug" in n or "gradaug" in argv]


def test_the_gpu_session_dry_run_reads_every_commands_arguments():
    # Execute: every part's commands, read by their own scripts' parsers
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_session.py"), "--dry-run"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)

    # Assert: one line per command, each ok, nothing run (no output folder asked for)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_session import PARTS
    finally:
        sys.path.remove(str(BENCHMARKS))
    names = [name for commands in PARTS.values() for name, _, _ in commands]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [f"{name}: ok" for name in names]


def test_the_gpu_session_dry_run_names_a_command_its_script_refuses(monkeypatch, capsys):
    # Prepare: a part of commands that each run would refuse, and one it takes
    gpu_session = _gpu_session(monkeypatch)
    py = gpu_session.PY
    monkeypatch.setattr(gpu_session, "PARTS", {"broken": [
        ("good", [py, "benchmarks/bench_gpu.py", "--device", "cuda", "--steps", "3"], 10),
        ("flag", [py, "benchmarks/bench_gpu.py", "--device", "cuda", "--stepz", "3"], 10),
        ("value", [py, "benchmarks/bench_hvp.py", "--dataset", "cifar11"], 10),
        ("script", [py, "benchmarks/bench_nothing.py"], 10),
        ("pytest", [py, "-m", "pytest", "-q", "--no-such-flag", "tests/unit/test_data.py"], 10),
        ("code", [py, "-c", "import ("], 10),
    ]})
    monkeypatch.setattr(sys, "argv", ["gpu_session.py", "--dry-run", "broken"])
    argv, path = list(sys.argv), list(sys.path)

    # Execute
    with pytest.raises(SystemExit) as stop:
        gpu_session.main()

    # Assert: exit 1, one line per command naming it, each with its parser's error; nothing of the dry run's left
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert stop.value.code == 1
    assert list(lines) == ["good", "flag", "value", "script", "pytest", "code"]
    assert lines["good"] == "ok"
    assert lines["flag"] == "bench_gpu.py: error: unrecognized arguments: --stepz 3"
    assert "argument --dataset: invalid choice: 'cifar11'" in lines["value"]
    assert lines["script"] == "no script benchmarks/bench_nothing.py"
    assert lines["pytest"] == "pytest: error: unrecognized arguments: --no-such-flag"
    assert lines["code"].startswith("SyntaxError")
    assert sys.argv == argv and sys.path == path
    assert gpu_session.argparse.ArgumentParser.parse_known_args.__name__ == "parse_known_args"


def test_bench_gpu_closes_each_stacked_trainer_before_building_the_next(monkeypatch):
    # Prepare: the digits pilot's cnn_small kinds (rounds of 4, 10 and 16 clients), every trainer built recorded
    import argparse
    import weakref

    bench_gpu = _bench_gpu(monkeypatch)
    config = bench_gpu.load_config(bench_gpu.PAPERS / "pilot_digits.yaml", bench_gpu.SCHEMA)
    per_kind, _, _ = bench_gpu.project(config, torch.device("cpu"), {})
    group = [k for k in per_kind if k.model == "cnn_small"]
    built: list = []  # (weak reference, whether closed) of each trainer
    leftovers: list = []  # at each build: the earlier trainers still alive or not closed

    class Recording(bench_gpu.VectorizedTrainer):
        def __init__(self, *a, **kw):
            leftovers.append([i for i, (ref, closed) in enumerate(built) if ref() is not None or not closed[0]])
            super().__init__(*a, **kw)
            built.append((weakref.ref(self), closed := [False]))
            self._closed = closed

        def close(self):
            self._closed[0] = True
            super().close()

    monkeypatch.setattr(bench_gpu, "VectorizedTrainer", Recording)
    monkeypatch.setattr(bench_gpu, "timed_together",
                        lambda fns, device, repeats: {name: (fn(), 1.0)[1] for name, fn in fns.items()})
    args = argparse.Namespace(steps=1, repeats=1, clients=0, precision="fp32")

    # Execute
    rows = bench_gpu.measure(group, args, torch.device("cpu"))

    # Assert: one trainer per stack size, each closed and gone before the next one is built, and the last at the end
    assert sorted({k.clients for k in group}) == [4, 10, 16] and set(rows) == set(group)
    assert len(built) == 3 and leftovers == [[], [], []]
    assert all(closed[0] and ref() is None for ref, closed in built)


@pytest.mark.parametrize("fail", [False, True])
def test_bench_gpu_prints_each_configs_hours_once_its_kinds_are_measured(monkeypatch, capsys, fail):
    # Prepare: two configs sharing a kind (the digits pilot and meta), measured at made-up costs, or failing at the
    # second config's first kind of its own
    bench_gpu = _bench_gpu(monkeypatch)
    pilot, _, _ = bench_gpu.project(bench_gpu.load_config(bench_gpu.PAPERS / "pilot_digits.yaml",
                                                          bench_gpu.SCHEMA), torch.device("cpu"), {})
    measured: list = []

    def fake_measure(group, args, device):
        if fail and any(k not in pilot for k in group):
            raise RuntimeError("out of memory")
        measured.extend(group)
        return {k: {**bench_gpu.price(k, {"plain_ms": 2.0, "sequential_ms": 3.0}, None, "no card",
                                      {bench_gpu.stacked_clients(k, args): (1.0, 2.0)}, args, "cpu"), "eval_ms": 0.5,
                    "plain_eval_ms": 0.4}
                for k in group}

    monkeypatch.setattr(bench_gpu, "measure", fake_measure)
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--device", "cpu", "--steps", "1", "--repeats", "1",
                                      "--clients", "2", "--configs", "pilot_digits", "meta_digits"])

    # Execute
    if fail:
        with pytest.raises(RuntimeError, match="out of memory"):
            bench_gpu.main()
    else:
        bench_gpu.main()
    out = capsys.readouterr().out

    # Assert: each config's step costs, then its hours, before the next config's; a kind measured once (the
    # configs share one); a failure in the second config leaves the first one's hours printed
    blocks = [block.splitlines() for block in out.split("\n\n")]
    heads = [next(line for line in block if line.startswith(("# pilot", "# meta", "# projected"))) for block in blocks]
    expected = ["# pilot_digits: its step kinds", "# projected hours",
                "# meta_digits: its step kinds not measured above", "# projected hours"]
    assert [h[:len(e)] for h, e in zip(heads, expected, strict=False)] == expected[:len(heads)]
    assert len(heads) == (3 if fail else 4)
    assert len(measured) == len(set(measured)) and set(pilot) <= set(measured)
    hours = [[line.split(" | ")[0].strip("| ") for line in block if line.startswith("| ") and " | all | " in line]
             for block in blocks]
    assert hours[1] == ["pilot_digits"] and (hours[2:] == [[]] if fail else hours[3] == ["meta_digits"])
    if not fail:
        shared = [k for k in pilot if k.algorithm == "fedavg" and k.clients == 10 and k.model == "cnn_small"]
        assert shared and f"| meta_digits | {shared[0].label} |" in out  # priced by the pilot's measurement


def test_bench_hvp_prints_each_diagonal_form_before_its_float64_reference():
    # Execute
    out = _run("bench_hvp.py", "--samples", "32", "--exact-samples", "8", "--repeats", "1", "--device", "cpu",
               "--eigen", "0").splitlines()

    # Assert: each form's time, then the forms' ratio, then (last, on a line of its own) each one's difference from
    # the float64 diagonal
    forms = [i for i, line in enumerate(out) if line.startswith("exact diagonal (trace_estimator: exact), form ")]
    ratio = [i for i, line in enumerate(out) if line.startswith("exact diagonal, per_sample / per_class: ")]
    reference = [i for i, line in enumerate(out) if line.startswith("exact diagonal, largest difference from float64")]
    assert len(forms) == 2 and len(ratio) == 1 and reference == [len(out) - 1]
    assert forms[0] < forms[1] < ratio[0] < reference[0]
    assert "form per_class" in out[reference[0]] and "form per_sample" in out[reference[0]]
    assert all("float64" not in out[i] and " ms = " in out[i] for i in forms)
    # cnn_small's passes come in chunks of 1,461 samples: the whole batch of 32 is timed, not the 8 asked for
    assert "timed on 32 samples" in "\n".join(out)


def test_bench_hvp_reports_each_diagonal_form_before_its_float64_reference(monkeypatch):
    # Prepare: a float64 reference that never finishes (a call cut at its limit)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_hvp

    real = bench_hvp.gauss_newton_diagonal

    def diagonal(op, form):
        if op.dtype == torch.float64:
            raise TimeoutError("cut")
        return real(op, form)

    monkeypatch.setattr(bench_hvp, "gauss_newton_diagonal", diagonal)
    torch.manual_seed(0)
    model = bench_hvp.build_model("cnn_small", num_classes=10, in_channels=1, image_size=8)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    reported: list = []

    # Execute
    with pytest.raises(TimeoutError):
        bench_hvp.exact_diagonal_costs(model, x, y, torch.device("cpu"), lambda form, s: reported.append((form, s)))

    # Assert: both forms' times reported before the reference began
    assert [form for form, _ in reported] == list(bench_hvp.DIAGONAL_FORMS)
    assert all(s > 0 for _, s in reported)


def test_bench_algorithms_runs():
    out = _run("bench_algorithms.py", "--algorithms", "fedavg", "fedprox", "--clients", "2", "--rounds", "1")

    assert "fedprox" in out.lower()


def test_baseline_default_config_is_the_baselines_work():
    # Prepare: the workflow benchmark's equal-work config, and the baseline commit's own default config
    from fedscape.core.runs import build_runs
    from fedscape.plan.workflow import load_config

    path = BENCHMARKS / "configs" / "c3f29ef_default.yaml"
    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"

    # Execute
    config = load_config(path, schema)
    runs = build_runs(config)

    # Assert: it validates today and is c3f29ef's grid (8 runs, no FedSAM, no sharpness, warm-up of 5 rounds)
    assert len(runs) == 8
    assert {r.algorithm for r in runs} == {"fedavg", "fedprox"}
    assert not config["hessian"]["sharpness"]["enabled"]
    assert config["inits"]["warmup"]["rounds"] == 5


@pytest.mark.parametrize(("cap", "expected"), [(None, None), ("AVX2", "AVX2")])
def test_onednn_isa_reports_what_onednn_uses(monkeypatch, cap, expected):
    # Prepare: the benchmarks' machine module; capping oneDNN at AVX2 (every x86-64 CPU this project runs on has it)
    import torch

    if not torch.backends.mkldnn.is_available() or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("no oneDNN, or not an x86-64 CPU")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from machine import onednn_isa

    if cap is None:  # the CPU's own ISA, also where the suite runs under a cap (docs/architecture.md, Conventions)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)

    # Execute
    isa = onednn_isa()

    # Assert: oneDNN's own word for its ISA, and the cap obeyed (ATen's dispatch would still say AVX512)
    assert isa != "unknown" and "AVX" in isa
    if expected is not None:
        assert expected in isa and "512" not in isa


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\n"
     "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n", "AMD EPYC (family 25, model 1)"),
    ("processor\t: 0\nmodel name\t: Some CPU\n", "Some CPU"),  # no numbers given: the name alone
])
def test_cpu_model_tells_generations_of_one_name_apart(tmp_path, monkeypatch, cpuinfo, expected):
    # Prepare: a /proc/cpuinfo of two cores
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import machine

    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")

    # Execute / Assert
    assert machine.cpu_model() == expected


def test_bench_workflow_splits_job_time_from_the_jobs_logs(tmp_path, monkeypatch, restore_logging):
    # Prepare: a log written by the jobs' own `job_log` (split alone first), then beside it two written by hand (one
    # job failed: no 'done' line) and one of a commit from before jobs logged their start
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_workflow import process_split

    from fedscape.core.logs import job_log

    logs = tmp_path / "logs"
    (logs / "train").mkdir(parents=True)
    with job_log(logs / "train" / "real.log"):
        pass
    real_started, real_done, real_jobs = process_split(tmp_path)
    (logs / "train" / "a.log").write_text("2026 INFO fedscape: job started 1.75 s after its process\n"
                                          "2026 INFO fedscape.train: round 1/2\n"
                                          "2026 INFO fedscape: job done in 4.50 s\n")
    (logs / "figures").mkdir()
    (logs / "figures" / "failed.log").write_text("2026 INFO fedscape: job started 0.30 s after its process\n"
                                                 "2026 ERROR fedscape: job failed: ValueError: x\n")
    (logs / "old.log").write_text("round 1/2\n")

    # Execute
    started, done, jobs = process_split(tmp_path)

    # Assert: the real log's lines are read, and only jobs with both lines count, summed exactly
    assert real_jobs == 1 and real_started > 0
    assert jobs == 2
    assert started == pytest.approx(1.75 + real_started) and done == pytest.approx(4.50 + real_done)



@pytest.mark.parametrize("missing", [(), ("profiles",)])
def test_bench_workflow_runs_a_reference_without_every_part(tmp_path, monkeypatch, missing):
    # Prepare: a checkout's workflow parts, or an older commit's that has no profiles/ yet (a --compare reference);
    # Snakemake stood in for
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_workflow

    tree = tmp_path / "tree"
    for part in bench_workflow.WORKFLOW_PARTS:
        if part == "Snakefile":
            (tree / part).parent.mkdir(parents=True, exist_ok=True)
            (tree / part).write_text("rule all:\n")
        elif part not in missing:
            (tree / part).mkdir(parents=True)
            (tree / part / "file").write_text(part)
    monkeypatch.setattr(bench_workflow.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", ""))
    (tmp_path / "scratch").mkdir()

    # Execute
    _, workdir = bench_workflow.run_workflow(tree, 1, tmp_path / "scratch")

    # Assert: the parts it has are copied, a missing one left out
    copied = sorted(p.name for p in workdir.iterdir())
    assert copied == sorted(set(bench_workflow.WORKFLOW_PARTS) - set(missing))
    assert (workdir / "Snakefile").read_text() == "rule all:\n"


@pytest.mark.parametrize(("fields", "verdict", "why"), [
    ({"exit": 1, "names_file": True}, "OK", "stopped"),
    ({"exit": 1, "names_file": False}, "BAD", "does not name the file"),
    ({"exit": 1, "names_file": True, "deleted": ["results/tables/rounds.csv"]}, "BAD", "deleted"),
    ({"exit": 1, "names_file": True, "changed": ["results/tables/cost.csv"]}, "BAD", "made again on the damaged"),
    ({"exit": 0, "still_damaged": True}, "BAD", "exit 0 with the damaged file"),
    ({"exit": 0, "still_damaged": False}, "OK", "remade correctly"),
    ({"kind": "verify", "exit": 0, "verify_exit": 1, "names_file": True, "verify_forcerun": True}, "OK", "verify"),
    ({"kind": "verify", "exit": 0, "verify_exit": 0, "names_file": False}, "BAD", "make verify exits 0"),
    ({"kind": "verify", "exit": 0, "verify_exit": 1, "names_file": True}, "BAD", "--forcerun"),
    ({"kind": "reproduce", "exit": 0, "identical": True}, "OK", "byte-identical"),
    ({"kind": "reproduce", "exit": 0, "identical": False}, "BAD", "other bytes"),
])
def test_the_damage_audit_classifies_its_cases(monkeypatch, fields, verdict, why):
    """benchmarks/audit_damage.py's verdict on synthetic records (the audit itself runs the workflow ~20 times)."""
    # Prepare: the record of one case
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from audit_damage import Record, classify

    record = Record("case", **fields)

    # Execute
    found, reason = classify(record)

    # Assert
    assert found == verdict and why in reason


@pytest.mark.parametrize("change, expected", [
    ({}, []),
    ({"seconds": [9.0, 9.0], "peak_mem_vs_fedavg": [2.0, 2.0], "code_version": ["b", "b"]}, []),  # measurements
    ({"loss": [0.5, 0.25 + 1e-9]}, ["loss: differs by up to 1e-09"]),
    ({"loss": [0.5, float("nan")]}, ["loss: NaN in other rows"]),
    ({"run_id": ["a", "c"]}, ["run_id: text differs"]),
])
def test_compare_results_reports_what_a_refactor_moved(monkeypatch, change, expected):
    # Prepare
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import pandas as pd
    from compare_results import table_differences

    old = pd.DataFrame({"run_id": ["a", "b"], "loss": [0.5, 0.25], "seconds": [1.0, 2.0],
                        "peak_mem_vs_fedavg": [1.0, 1.0], "code_version": ["a", "a"]})

    # Execute
    lines = table_differences(old, old.assign(**change), atol=1e-12)

    # Assert
    assert lines == expected


# -- bench_trace.py: the exact reference and a run's checkpoint -----------------------------------
class _DenseOperator:
    """An explicit symmetric matrix behind the operator interface of the trace benchmark."""

    def __init__(self, matrix):
        self.matrix, self.dim, self.dtype, self.device = matrix, matrix.shape[0], matrix.dtype, matrix.device

    def hvp(self, v):
        return self.matrix @ v.to(self.dtype)


def test_bench_trace_exact_figures_are_those_of_the_matrix(monkeypatch):
    # Prepare: a symmetric matrix of known eigenvalues (a few dominant, some negative), plus an antisymmetric part
    import torch

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_trace import exact_columns, exact_figures

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    eig = torch.cat([torch.tensor([9.0, -6.0, 4.0]), torch.linspace(1.0, -0.5, 57)]).double()
    matrix = q @ torch.diag(eig) @ q.T
    skew = torch.randn(60, 60, generator=g, dtype=torch.float64) * 1e-4
    skew = skew - skew.T  # what the symmetrisation removes

    # Execute
    figures = exact_figures(exact_columns(_DenseOperator(matrix + skew)), top=10)

    # Assert: float32 storage, float64 sums
    by_magnitude = eig[eig.abs().argsort(descending=True)]
    assert figures.trace == pytest.approx(float(eig.sum()), abs=1e-5)
    assert torch.allclose(figures.diagonal, matrix.diagonal(), atol=1e-6)
    assert figures.frobenius == pytest.approx(float(eig.norm()), rel=1e-6)
    assert figures.diagonal_norm == pytest.approx(float(matrix.diagonal().norm()), rel=1e-6)
    assert figures.eigenvalues == pytest.approx(by_magnitude[:10].numpy(), abs=1e-5)
    assert figures.remainder(3) == pytest.approx(float(by_magnitude[3:].norm()), rel=1e-5)
    assert figures.remainder(0) == pytest.approx(figures.frobenius)
    assert math.isnan(figures.remainder(11))  # beyond the 10 eigenvalues computed
    assert figures.asymmetry == pytest.approx(float((2 * skew).abs().max() / (matrix + skew).abs().max()), rel=1e-3)


@pytest.mark.parametrize(("spectrum", "keeps_hutchpp"), [("low_rank", True), ("flat", False)])
def test_bench_trace_by_variance_keeps_the_trace_whose_estimated_error_is_smaller(monkeypatch, spectrum,
                                                                                  keeps_hutchpp):
    # Prepare: a few dominant eigenvalues (the sketch takes them exactly) or a flat spectrum of random
    # eigenvectors (the sketch removes little, and Hutch++ has fewer probes)
    import torch

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_trace import by_variance

    from fedscape.analysis.hessian.maths import _STREAM_PROBES, _STREAM_SKETCH, _generator, hutchpp, rademacher

    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(80, 80, generator=g, dtype=torch.float64))
    eig = torch.linspace(-1.0, 1.0, 80).double() + (torch.tensor([50.0, 30.0, 20.0] + [0.0] * 77).double()
                                                      if spectrum == "low_rank" else 0.0)
    op = _DenseOperator(q @ torch.diag(eig) @ q.T)
    products, k = 12, 4

    # Execute
    pp, chosen = hutchpp(op, products, seed=3), by_variance(op, products, seed=3)

    # Assert: Hutch++ kept as it is, or Hutchinson over the sketch's and the residual's Rademacher probes (the
    # seeded streams hutchpp draws them from), with the whole-vector standard error, and Hutch++'s diagonal
    probes = [rademacher(80, gen) for gen, n in ((_generator(3, _STREAM_SKETCH), k),
                                                (_generator(3, _STREAM_PROBES), products - 2 * k)) for _ in range(n)]
    samples = [float(z.double() @ op.matrix @ z.double()) for z in probes]
    assert torch.equal(chosen.diagonal, pp.diagonal)
    if keeps_hutchpp:
        assert (chosen.trace, chosen.stderr, list(chosen.samples)) == (pp.trace, pp.stderr, list(pp.samples))
    else:
        assert chosen.samples == pytest.approx(samples, rel=1e-12)
        assert chosen.trace == pytest.approx(sum(samples) / len(samples)) and chosen.stderr < pp.stderr


def _tiny_run(root):
    """One digits run of one round, its files where the workflow puts them below `root` (its working directory),
    and the config file naming it."""
    import yaml

    from fedscape.core.paths import Results
    from fedscape.core.runs import build_runs
    from fedscape.plan.init import init_settings
    from fedscape.plan.partition import partition_settings
    from fedscape.plan.train import train_settings
    from fedscape.plan.workflow import load_config
    from fedscape.stages.init import init_job
    from fedscape.stages.partition import partition_job
    from fedscape.stages.train import train_job

    raw = {"datasets": {"digits": {"test_fraction": 0.25}}, "models": ["mlp"],
           "inits": {"random": {"kind": "random", "seed": 0}}, "algorithms": {"fedavg": {"name": "fedavg"}},
           "alphas": ["iid"], "num_clients": [3], "participation": [1.0], "seeds": [0],
           "training": {"rounds": 1, "local_epochs": 1, "batch_size": 64, "device": "cpu"},
           "hessian": {"enabled": True, "eval_samples": 48}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    (run,) = build_runs(config)
    results = Results.of(config)
    partition = root / results.partition_file(run)
    partition.parent.mkdir(parents=True)
    partition_job(partition_settings(config, "digits", "iid", 3, 0), partition, partition.with_suffix(".csv"))
    init = root / results.init_file(dataset="digits", model="mlp", init="random")
    init.parent.mkdir(parents=True)
    init_job(init_settings(config, [run], "digits", "mlp", "random"), init)
    outputs = {name: root / results.train_file(name, **run.fields()) for name in
               ("trajectory", "clients", "metrics", "meta", "client_updates")}
    outputs["trajectory"].parent.mkdir(parents=True)
    train_job(train_settings(config, run), partition, init, outputs, outputs["trajectory"].parent / "_progress")
    return path, config, run, outputs["trajectory"], partition


def test_bench_trace_evaluates_a_checkpoint_on_its_hessian_jobs_samples(tmp_path, monkeypatch):
    # Prepare
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch
    from bench_trace import checkpoint_model

    from fedscape.analysis.hessian.maths import eval_subset
    from fedscape.data.datasets import dataset_from_options
    from fedscape.data.partition import load_partition
    from fedscape.data.specs import dataset_settings
    from fedscape.models.checkpoint import load_trajectory
    from fedscape.models.params import flatten_params

    path, config, run, checkpoint, partition = _tiny_run(tmp_path)
    monkeypatch.chdir(BENCHMARKS)  # the checkpoint's path names its working directory, not the current one

    # Execute
    model, x, y, what = checkpoint_model(checkpoint, path, None, None)
    _, x20, y20, _ = checkpoint_model(checkpoint, path, 0, 20)
    _, xc, yc, client = checkpoint_model(checkpoint, path, None, None, client=1)

    # Assert: the final round's model, and the job's seeded subset (eval_samples, hessian.seed) of the clients' union
    data = dataset_from_options("digits", dataset_settings("digits", config["datasets"]["digits"]))
    clients = [torch.as_tensor(ix) for ix in load_partition(partition, data.y_train.numpy()).client_indices]
    union = torch.cat(clients).sort().values
    idx = union[eval_subset(len(union), 48, 0, key=0)]
    assert what == f"{run.run_id} round 1" and len(y) == 48 and len(y20) == 20
    assert torch.equal(x, data.x_train[idx]) and torch.equal(y, data.y_train[idx])
    idx = clients[1][eval_subset(len(clients[1]), 48, 0, key=2)]  # the stage's stream key of client 1
    assert client == f"{run.run_id} round 1, client 1" and torch.equal(xc, data.x_train[idx])
    assert torch.equal(yc, data.y_train[idx])
    assert torch.equal(flatten_params(model), load_trajectory(checkpoint).params[-1])
    with pytest.raises(SystemExit, match="not the trajectory of any run"):
        checkpoint_model(tmp_path / "elsewhere" / "trajectory.pt", path, None, None)
    with pytest.raises(SystemExit, match=r"--client 3: the run has clients 0\.\.2"):
        checkpoint_model(checkpoint, path, None, None, client=3)


def test_bench_trace_runs_on_a_checkpoint(tmp_path):
    # Prepare
    config, _, _, checkpoint, _ = _tiny_run(tmp_path)

    # Execute: no exact Hessian (the mlp has 8,970 parameters), a Hutch++ reference
    out = _run("bench_trace.py", "--checkpoint", str(checkpoint), "--config", str(config), "--samples", "16",
               "--budgets", "4", "10", "--seeds", "2", "--exact-max", "0", "--reference", "30", "--threads", "1")

    # Assert: one row per budget and estimator, and the ratio
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["4"], ["10"])]
    assert [(r[0], r[2] if r[1] == "2" else r[1]) for r in rows] == [
        ("4", "hutchinson"), ("4", "hutchpp"), ("4", "by"), ("4", "ratio"), ("10", "hutchinson"), ("10", "hutchpp"),
        ("10", "by"), ("10", "ratio")]
    assert "16 samples" in out and "reference trace" in out


def test_a_gpu_session_command_cut_at_its_limit_keeps_what_it_printed(tmp_path, monkeypatch):
    # Prepare: a command that prints, then outlives its limit, in an environment that buffers a piped stdout
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_session import run_commands
    finally:
        sys.path.remove(str(BENCHMARKS))
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    slow = [sys.executable, "-c", "import time; print('measured'); time.sleep(60)"]

    # Execute: cut at its own limit, and a second command skipped for want of the call's budget
    code = run_commands([("slow", slow, 2), ("next", slow, 60)], tmp_path, time.perf_counter() + 8)

    # Assert
    assert code == 124
    assert "measured" in (tmp_path / "slow.txt").read_text() and "stopped after" in (tmp_path / "slow.txt").read_text()
    assert not (tmp_path / "next.txt").exists()


def test_bench_gpu_times_its_steps_side_by_side_in_rotating_order(monkeypatch):
    # Prepare: calls that take the seconds a scripted clock gives them, recording their order
    bench_gpu = _bench_gpu(monkeypatch)
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(bench_gpu.time, "perf_counter", lambda: next(clock) * 1.0)
    fns = {name: (lambda name=name: calls.append(name)) for name in ("plain", "sequential", "captured")}

    # Execute
    seconds = bench_gpu.timed_together(fns, bench_gpu.torch.device("cpu"), 4)

    # Assert: one untimed warm-up call of each, then rounds that call each once in a rotating order
    assert calls[:3] == ["plain", "sequential", "captured"]
    rounds = [calls[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert rounds == [["plain", "sequential", "captured"], ["sequential", "captured", "plain"],
                      ["captured", "plain", "sequential"], ["plain", "sequential", "captured"]]
    assert seconds == {name: 1.0 for name in fns}  # each call spans one tick of the clock
