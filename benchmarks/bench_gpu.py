"""The papers' training cost in device-hours, projected from step costs measured on this device.

For every (model, batch size) that the paper configs train (pilot.yaml, fedalign.yaml and meta.yaml by default), it
measures in one process, on seeded synthetic data of the data set's shape (N(0, 1) images, uniform labels: the work
per step is that of CIFAR for CIFAR's models):

- plain: a plain-torch SGD step of the same network (forward, cross-entropy, backward, `torch.optim.SGD.step`), the
  reference;
- sequential: fedscape's local training of one client (`fedscape.fl.sequential.local_train`), per step, timed side by
  side with plain (each repeat calls both, in an order that rotates: `timed_together`), so that their ratio does not
  carry a drift of the device's speed between two measurements;
- captured: the same with its forward and backward passes replayed from CUDA graphs (`fedscape.fl.capture`), per
  step, timed in the same rotation as plain and sequential; only for the kinds whose runs capture on this device
  (`resolve_capture`, as the sequential trainer decides: their own algorithm, model and `training.capture`; MOON,
  Mixup, FedAlign and the other algorithms with their own local objective step eagerly), and only on a CUDA device;
- evaluation: `fedscape.models.evaluate.evaluate` of the network on one batch of the runs' `eval_batch_size`, per
  image (a forward pass in eval mode, as the engine evaluates its global model), timed side by side with a plain eval
  loop over the same batch (`plain_evaluate`: the reference; one rotation, `timed_together`);
- vectorized: fedscape's vectorised round (`fedscape.fl.vectorized`), per client step, timed side by side with plain
  (a rotation of its own per stack size: one stack's memory is freed before the next is built), where the runs of
  that kind train vectorised on this device (`resolve_client_parallel` of each run's own algorithm and training
  settings: a run set to `client_parallel: sequential`, or whose augmentation or algorithm cannot be stacked, trains
  one client after another, and its kind is not measured stacked). The round stacks as many clients as the kind's
  runs train together: their clients per round, at most `client_chunk_size`: the stacked round's fixed cost per
  step is shared by its clients, so its cost per client step depends on how many (cnn_small on a CPU: 4.2 / 2.6 /
  2.1 ms at 2 / 10 / 50 clients; benchmarks/README.md). `--clients N` caps it at N to save time; the table's
  footnote then names the kinds measured at fewer clients than their runs train together (usually dearer per client
  step: upper bounds there).

The plain reference is FedAvg's step (SGD on cross-entropy) of the plain network. fedscape's steps are each run's own
algorithm's, with its hyperparameters (FedAlign's slimmed pass, MOON's reference passes and projection head, GradAug's
sub-networks, Mixup's and Stochastic Depth's draws...): an algorithm whose clients train exactly as FedAvg's do
(`Strategy.local_step_is_fedavgs`: FedAvgM, FedAdam, FedYogi, FedAdagrad, FedNova) is priced at FedAvg's steps, so
those share a kind. Augmentation is left out. Runs of a data set that is not made of images (meta.yaml's Reddit,
layerwise.yaml's Shakespeare) are not measured; the script names them.

Config by config, as soon as its kinds are measured (a kind an earlier config measured is not measured again), it
then projects that config's local training into hours, so that a run cut short keeps the configs before the cut:
every run the workflow plans, its rounds x the clients sampled in each round (`sample_clients`, the engine's draw)
x each client's local steps (epochs x the batches of an epoch over its own shard, as the trainers plan them:
`fedscape.fl.schedule.client_steps`, so `training.drop_last` drops a last partial batch as the runs do; or the
configured steps), all counted by `fedscape.plan.cost.run_steps`. The shards are those of the run's own partition,
made here by the partitioner from the training pool's class counts (`client_sizes`: a split by class depends on the
labels through their counts alone; CIFAR's and ImageNet-200's training splits are balanced, the digits are
bundled); where the pool's labels need the data set's files or the split its writers or a file (FEMNIST), the
shards are taken equal (pool / clients) and a footnote names those runs. A sequential run pays for its clients'
own steps ("client steps").
A vectorised round stacks its clients longest first in chunks of at most `client_chunk_size`, and every
chunk steps as long as its longest client, the others leaving the stack as they finish: it is priced at its chunks'
clients x their longest client's steps (`fedscape.fl.schedule.stacked_client_steps`, the column "client steps now")
at the measured cost per client step of a full stack. A stacked step's cost on a card is mostly fixed (launches,
small kernels), not in proportion to the clients left in the stack; where it is in proportion, this is an upper
bound, and the clients' own steps the bound from below. On CIFAR-10's Dirichlet(0.1) splits among 10 clients the
largest client holds 1.6-1.9x the mean (seeds 0-9), so equal shards priced those runs' stacked rounds that much too
low. "before" prices every client step at the sequential cost; "now" the client steps of the path its runs take on
this device (vectorised at their clients per round, else a sequential step, captured where their runs capture and
the check at capture passes); "now, shards equal" as "now" was priced before the stacks' padding was (every shard
pool / clients, every client step at the path's cost); "plain" the reference step.

Evaluation is priced too, as its own column added to "now": the engine evaluates the global model at round 0, every
`eval_every`-th round and the last (`TrainConfig.evaluates`) on the union of the clients' data and the test set
(`fl.engine`'s `evaluate_row`), so a run's evaluated images are its evaluations x (its shards' samples + the test
set's, `eval_images`), at the measured cost per evaluated image. It is no small share: at `eval_every` 1, meta.yaml's
CIFAR-10 runs evaluate about 11x the images they train on (some 3.6x local training's arithmetic: a forward pass
against a training step's three), its FEMNIST runs at `eval_every` 100 about 1.3x the arithmetic, pilot.yaml's
0.08-0.09x and fedalign.yaml's 0.03-0.05x (their many local epochs a round). Initialisation (pre-training, warm-up)
and the analysis jobs (Hessian, landscapes, barriers) are not included.

A chunk smaller than `client_chunk_size` (the last of a round whose clients exceed it; none of the paper configs has
one: 64 clients at most) is priced at a full chunk's cost per client step.

    python benchmarks/bench_gpu.py --device cuda                       # the papers' configs
    python benchmarks/bench_gpu.py --device cpu --steps 2 --repeats 1 --clients 2 --configs pilot   # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from machine import device_label, torch_line

from fedscape.core.runs import Run, build_runs
from fedscape.data import imagenet200
from fedscape.data.federated import FederatedData
from fedscape.data.partition import PARTITION_KINDS, make_kind_partition, setting_entry
from fedscape.data.sources import source_from_options, stratified_split
from fedscape.data.specs import DATASETS
from fedscape.fl.capture import CapturedForward, capture_blocker, resolve_capture
from fedscape.fl.hparams.registry import algorithm_config
from fedscape.fl.sequential import local_train
from fedscape.fl.settings import TrainConfig, sample_clients
from fedscape.fl.strategies.base import Strategy
from fedscape.fl.strategies.registry import make_strategy, strategy_class
from fedscape.fl.vectorized import VectorizedTrainer, resolve_client_parallel
from fedscape.models.device import precision_used, use_precision
from fedscape.models.evaluate import evaluate
from fedscape.models.params import FlatParams, flatten_buffers
from fedscape.models.registry import build_model
from fedscape.models.specs import EVAL_BATCH_SIZE
from fedscape.plan.cost import RunSteps, run_steps
from fedscape.plan.partition import planned_partition
from fedscape.plan.train import planned_train
from fedscape.plan.workflow import load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPERS = ROOT / "config" / "papers"
# The data sets whose official training split holds train_samples / num_classes images of every class (CIFAR-10:
# 5,000, CIFAR-100: 500, ImageNet-200: imagenet200.TRAIN_PER_CLASS): their partitions are made here from those
# counts, without their files.
BALANCED_TRAINING_SPLITS = ("cifar10", "cifar100", "imagenet200")
# The test sets of the image data sets read from files (a bundled data set's is its source's own): CIFAR's test batch
# (Krizhevsky 2009: 10,000 images), ImageNet-200's validation images (ImageNet's 50 of each class; imagenet200's
# docstring), and FEMNIST's about a tenth of its samples: LEAF's `-t sample` split keeps 90% of every writer's
# samples for training (its `--tf` default, 0.9), so this one is an estimate until its files are read.
TEST_SET_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "imagenet200": 50 * len(imagenet200.CLASSES),
                "femnist": round(0.1 * DATASETS["femnist"].train_samples)}


@dataclass(frozen=True)
class StepKind:
    """What one local step costs depends on: the network, its classes and the batch (and the optimiser's work), the
    local step of the runs' algorithm, and the path its runs take on the measuring device."""

    model: str
    options: tuple[tuple[str, object], ...]
    in_channels: int
    image_size: int
    num_classes: int
    batch_size: int
    momentum: float
    weight_decay: float
    path: str  # "vectorized" or "sequential": how its runs train their clients on the measuring device
    capture: bool  # whether its runs' sequential steps try capturing there (resolve_capture); False when vectorised
    clients: int  # clients its runs train in one stacked round (per round, at most client_chunk_size); 0: sequential
    algorithm: str = "fedavg"  # whose local step its runs take (`local_step`)
    hyperparameters: Any = None  # that algorithm's hyperparameter dataclass (None: its defaults)
    eval_batch_size: int = EVAL_BATCH_SIZE  # its runs' `training.eval_batch_size`: the batch their evaluations take

    @property
    def local(self) -> tuple[str, Any]:
        """The algorithm and hyperparameters of its local step: the strategy `local_strategy` builds."""
        return self.algorithm, self.hyperparameters

    @property
    def shape(self) -> tuple:
        """The fields the plain and sequential steps depend on: one measurement serves every kind of a shape."""
        return (self.model, self.options, self.in_channels, self.image_size, self.num_classes, self.batch_size,
                self.momentum, self.weight_decay)

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k} {v}" for k, v in self.options)
        how = (f"vectorized over {self.clients} clients" if self.path == "vectorized"
               else f"sequential, {'captured' if self.capture else 'eager'}")
        return (f"{self.model}{f' ({opts})' if opts else ''}, {self.in_channels}x{self.image_size}x{self.image_size} "
                f"images of {self.num_classes} classes, batch {self.batch_size}, {algorithm_label(*self.local)}, {how}")

    def build(self) -> torch.nn.Module:
        return network(self.model, self.options, self.in_channels, self.image_size, self.num_classes)


def local_step(algorithm: str, hyperparameters: Any) -> tuple[str, Any]:
    """The algorithm and hyperparameters whose local step a run of `algorithm` takes: FedAvg's defaults where its
    clients train as FedAvg's (`Strategy.local_step_is_fedavgs`), else its own."""
    if strategy_class(algorithm).local_step_is_fedavgs():
        return "fedavg", algorithm_config("fedavg")
    return algorithm, hyperparameters


def local_strategy(algorithm: str, hyperparameters: Any) -> Strategy:
    """The strategy of a kind's local step (`StepKind.local`)."""
    config = algorithm_config(algorithm) if hyperparameters is None else hyperparameters
    return strategy_class(algorithm)(config, algorithm)


def algorithm_label(algorithm: str, hyperparameters: Any) -> str:
    """`algorithm` with the hyperparameters it sets away from their defaults, e.g. "fedalign (width 0.6)"."""
    if hyperparameters is None:
        return algorithm
    default = type(hyperparameters)()
    changed = [f"{f.name} {getattr(hyperparameters, f.name)}" for f in fields(hyperparameters)
               if getattr(hyperparameters, f.name) != getattr(default, f.name)]
    return f"{algorithm} ({', '.join(changed)})" if changed else algorithm


def network(model: str, options: tuple, in_channels: int, image_size: int, num_classes: int) -> torch.nn.Module:
    """The network of a step kind's shape (its first five fields)."""
    return build_model(model, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **dict(options))


def size_of_test_set(dataset: str, options: dict) -> int:
    """The samples of a data set's test set: a bundled data set's own test part (its `test_fraction` of the
    samples), else `TEST_SET_SIZES`."""
    if not DATASETS[dataset].needs_data_dir:
        return len(source_from_options(dataset, options).test_index)
    return TEST_SET_SIZES[dataset]


def client_share(run: Run, options: dict) -> int:
    """Each client's samples, the clients' shares of the training pool taken equal."""
    info = DATASETS[run.dataset]
    pool = info.client_pool_bound(options.get("test_fraction", 0.25), options.get("proxy_fraction", 0.0))
    return max(1, (pool - info.num_classes) // run.num_clients)  # client_pool_bound adds a class per rounding


def pool_labels(dataset: str, options: dict) -> np.ndarray | None:
    """The labels of a data set's training pool (what its partitions split), where they are known without its files:
    a bundled data set's own (the digits), or a balanced training split's (BALANCED_TRAINING_SPLITS, in class order)
    less its stratified proxy part, drawn as `fedscape.data.sources` draws it from `split_seed` (how many of each
    class it holds out depends on the counts alone); None elsewhere."""
    info = DATASETS[dataset]
    if not info.needs_data_dir:
        return source_from_options(dataset, options).labels
    if dataset not in BALANCED_TRAINING_SPLITS:
        return None
    labels = np.repeat(np.arange(info.num_classes), info.train_samples // info.num_classes)
    keep, _ = stratified_split(labels, options.get("proxy_fraction", 0.0),
                               np.random.default_rng(options.get("split_seed", 0)))
    return labels[keep]


# each partition once per process: many runs (inits, algorithms) share one
_SIZES: dict[str, tuple[list[int] | None, str | None]] = {}


def client_sizes(config: dict, run: Run) -> tuple[list[int] | None, str | None]:
    """The samples of each client of the partition `run` trains on, made as its partition job makes it
    (`make_kind_partition` with the job's settings) from `pool_labels`: a split by class draws its numbers from the
    class counts alone (each class's indices shuffled, their count deciding the draws), so labels in class order give
    the sizes of the split of the real labels. (None, why) where the labels need the data set's files or the split
    its writers or a file."""
    job = planned_partition(config, run.dataset, run.setting, run.num_clients, run.seed)
    key = repr(job)
    if key not in _SIZES:
        entry, label = setting_entry(job.alpha, job.kind)
        spec = PARTITION_KINDS[entry["kind"]]
        if spec.needs_writers or spec.files is not None:
            _SIZES[key] = None, f"the {spec.name} partition reads {'writers' if spec.needs_writers else 'a file'}"
        elif (labels := pool_labels(run.dataset, job.dataset_options)) is None:
            _SIZES[key] = None, f"{run.dataset}'s class counts need its files"
        else:
            part = make_kind_partition(entry, labels, job.num_clients, job.seed, job.min_size, job.max_tries,
                                       dataset=job.dataset, label=label)
            _SIZES[key] = part.sizes.tolist(), None
    return _SIZES[key]


@dataclass(frozen=True)
class RunWork:
    """A run's local training in client steps: from its partition's shards (`steps`; shares taken equal where that is
    not known here: `equal_because` says why) and with every shard pool / clients (`equal`); and the images its
    evaluations pass forward (`evaluated`, `eval_images`)."""

    steps: RunSteps
    equal: RunSteps
    evaluated: int
    equal_because: str | None = None


@dataclass
class KindWork:
    """The runs of one step kind and their client steps (`RunWork`), summed."""

    runs: int = 0
    client: int = 0  # what their clients step (a sequential run's cost)
    stacked: int = 0  # what their vectorised rounds pay for (each chunk of clients as long as its longest client)
    equal: int = 0  # client steps with every shard pool / clients (the projection before the stacks' padding)
    evaluated: int = 0  # images their evaluations pass forward

    def add(self, work: RunWork) -> None:
        self.runs += 1
        self.client += work.steps.client
        self.stacked += work.steps.stacked
        self.equal += work.equal.client
        self.evaluated += work.evaluated

    def now(self, kind: StepKind) -> int:
        """The client steps its runs pay for on their path: a vectorised kind's stacked ones, else their own."""
        return self.stacked if kind.path == "vectorized" else self.client


def run_work(config: dict, run: Run, device: torch.device, models: dict) -> tuple[StepKind, TrainConfig, RunWork]:
    """The step kind of an image run, its training settings and its client steps over all rounds. `models`: one
    network per (model, options, shape), and per algorithm where it changes the network (MOON's projection head),
    built once to decide the runs' path."""
    job = planned_train(config, run)
    cfg = job.train_config()
    info = DATASETS[run.dataset]
    share = client_share(run, job.dataset_options)
    shape = (run.model, tuple(sorted(config.get("model_options", {}).get(run.model, {}).items())), info.in_channels,
             info.image_size, info.num_classes)
    strategy = make_strategy(job.algorithm, job.hyperparameters)
    # The network the run trains: its algorithm's (MOON's projection head) where the algorithm changes it.
    key = shape if type(strategy).prepare_model is Strategy.prepare_model else (shape, job.algorithm, strategy.config)
    if key not in models:
        models[key] = strategy.prepare_model(network(*shape), seed=0)
    net = models[key]
    path = resolve_client_parallel(net, strategy, cfg, device.type)
    # As the engine decides: the vectorised trainer never captures; the sequential one where resolve_capture says so
    # for the run's own algorithm (one with its own local objective steps eagerly) and training.capture.
    capture = path == "sequential" and resolve_capture(net, strategy, cfg, device.type)
    clients = 0
    if path == "vectorized":
        clients = len(sample_clients(cfg.seed, 1, run.num_clients, cfg.participation))  # the same every round
        clients = min(clients, cfg.client_chunk_size or clients)
    kind = StepKind(*shape, cfg.batch_size, cfg.momentum, cfg.weight_decay, path, capture, clients,
                    *local_step(job.algorithm, strategy.config), eval_batch_size=cfg.eval_batch_size)
    sizes, why = client_sizes(config, run)
    equal = run_steps(cfg, [share] * run.num_clients)
    pool = share * run.num_clients if sizes is None else sum(sizes)
    evaluated = eval_images(cfg, pool, size_of_test_set(run.dataset, job.dataset_options))
    return kind, cfg, RunWork(equal if sizes is None else run_steps(cfg, sizes), equal, evaluated, why)


def eval_images(cfg: TrainConfig, pool: int, test: int) -> int:
    """The images a run's evaluations pass forward: the engine evaluates the global model of every round that
    `TrainConfig.evaluates` (round 0 among them) on the union of the clients' data (`pool` samples) and on the test
    set (`test`): `fedscape.fl.engine`'s `evaluate_row`."""
    return sum(cfg.evaluates(t) for t in range(cfg.rounds + 1)) * (pool + test)


def project(config: dict, device: torch.device, models: dict
            ) -> tuple[dict[StepKind, KindWork], dict[str, int], dict[str, int]]:
    """A config's image runs and their client steps per step kind, how many runs of each other data set it has (not
    measured), and how many of its image runs take their shares equal, by why (their partition not made here)."""
    per_kind: dict[StepKind, KindWork] = {}
    others: dict[str, int] = {}
    equal: dict[str, int] = {}
    for run in build_runs(config):
        if DATASETS[run.dataset].inputs != "image":
            others[run.dataset] = others.get(run.dataset, 0) + 1
            continue
        kind, _, work = run_work(config, run, device, models)
        per_kind.setdefault(kind, KindWork()).add(work)
        if work.equal_because is not None:
            equal[work.equal_because] = equal.get(work.equal_because, 0) + 1
    return per_kind, others, equal


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_together(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """The median seconds of each of `fns` over `repeats` rounds, after one untimed warm-up call of each; every round
    calls each once, in an order that rotates from round to round. A ratio between them then compares calls made
    side by side: a drift of the device's speed during the measurement (its clocks, another process on it) slows
    them alike instead of showing as the one measured later being dearer."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def plain_evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """The reference of `evaluate`: a plain eval loop's summed cross-entropy and correct count of `model` on the
    device-resident `x`, `y` in batches of `batch_size`, both kept on the device and read once at the end (what any
    eval loop must return). Neither `evaluate`'s float64 sums nor its second, wide pass after an overflow: a minimal
    loop, so that "evaluation / plain" is what fedscape's evaluation adds."""
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    total, right = torch.stack((loss, correct.to(loss.dtype))).tolist()
    return total, right


def synthetic_clients(kind: StepKind, num_clients: int, samples: int, device: torch.device) -> FederatedData:
    """`samples` seeded N(0, 1) images with uniform labels for each of `num_clients` clients."""
    gen = torch.Generator().manual_seed(0)
    n = num_clients * samples
    x = torch.randn(n, kind.in_channels, kind.image_size, kind.image_size, generator=gen).to(device)
    y = torch.randint(0, kind.num_classes, (n,), generator=gen).to(device)
    indices = [torch.arange(c * samples, (c + 1) * samples, device=device) for c in range(num_clients)]
    return FederatedData(x, y, indices, x[:256], y[:256])


def stacked_clients(kind: StepKind, args: argparse.Namespace) -> int:
    """The clients of the measured vectorised round of a vectorised kind: its runs' own, at most `--clients`."""
    return min(kind.clients, args.clients) if args.clients else kind.clients


def measure(kinds: list[StepKind], args: argparse.Namespace, device: torch.device) -> dict[StepKind, dict]:
    """The rows of the kinds of one shape: ms per step of the plain reference (measured once for the shape), and for
    each local step among them (`StepKind.local`) of fedscape's sequential step, of its captured step (where a kind's
    runs capture), and per client step of a vectorised round of each vectorised kind's clients (None, with the reason,
    where a kind does not take that path); what each kind's runs cost "now"; and ms per image of an evaluation at
    each of the kinds' eval batch sizes ("eval_ms"), and of the plain eval loop timed beside it ("plain_eval_ms")."""
    kind = kinds[0]
    samples = args.steps * kind.batch_size
    # client_chunk_size 0 (one chunk): a measured round stacks the clients its kind's runs stack together, which
    # `run_work` has already cut to their own client_chunk_size (TrainConfig's default would cut them at 64).
    cfg = TrainConfig(local_epochs=1, batch_size=kind.batch_size, lr=0.01, momentum=kind.momentum,
                      weight_decay=kind.weight_decay, precision=args.precision, seed=0, client_chunk_size=0)
    rows: dict[StepKind, dict] = {}
    with use_precision(args.precision, device):
        # The reference: the same network, the same batches, torch's own loop.
        data = synthetic_clients(kind, 1, samples, device)
        torch.manual_seed(0)
        plain_model = kind.build().to(device).train()
        start = [p.detach().clone() for p in plain_model.parameters()]

        def plain_epoch():
            # From the same weights every call, as a client starts from the global model: a model trained on
            # through the repeats drifts (on random labels towards tiny, even subnormal, values: slow on a CPU).
            with torch.no_grad():
                for p, p0 in zip(plain_model.parameters(), start, strict=True):
                    p.copy_(p0)
            opt = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=kind.momentum,
                                  weight_decay=kind.weight_decay)
            for b in range(args.steps):
                sl = slice(b * kind.batch_size, (b + 1) * kind.batch_size)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(plain_model(data.x_train[sl]), data.y_train[sl]).backward()
                opt.step()

        by_local: dict[tuple, list[StepKind]] = {}
        for k in kinds:
            by_local.setdefault(k.local, []).append(k)
        for group in by_local.values():
            rows.update(measure_local(group, plain_epoch, data, cfg, args, device))
        # An evaluation as the engine's: one full batch of the runs' eval batch size, per image; the plain eval loop
        # in the same rotation, so that their ratio carries no drift of the device's speed.
        for batch in sorted({k.eval_batch_size for k in kinds}):
            images = synthetic_clients(kind, 1, batch, device)
            x, y = images.x_train, images.y_train
            fns = {"eval": lambda x=x, y=y, batch=batch: evaluate(plain_model, x, y, batch),
                   "plain_eval": lambda x=x, y=y, batch=batch: plain_evaluate(plain_model, x, y, batch)}
            seconds = timed_together(fns, device, args.repeats)
            for k in kinds:
                if k.eval_batch_size == batch:
                    rows[k].update({f"{name}_ms": s / batch * 1e3 for name, s in seconds.items()})
            del images, x, y, fns  # this batch's images freed before the next batch's are made
    return rows


def measure_local(group: list[StepKind], plain_epoch: Callable[[], None], data: FederatedData, cfg: TrainConfig,
                  args: argparse.Namespace, device: torch.device) -> dict[StepKind, dict]:
    """The rows of the kinds of one shape and one local step: its sequential step on `data` (one client) and its
    captured step where a kind's runs capture, timed side by side with the plain reference (`plain_epoch`:
    `timed_together`), and its vectorised rounds, each timed side by side with the plain reference too."""
    kind = group[0]
    strategy = local_strategy(*kind.local)
    torch.manual_seed(0)
    model = strategy.prepare_model(kind.build().to(device).train(), seed=0)  # MOON's projection head
    flat = FlatParams(model)
    global_params, global_buffers = flat.get(), flatten_buffers(model).to(device)
    strategy.setup(1, global_params.numel(), device, model=model, seed=0)

    def sequential():
        # The model's own forward: the captured step's warm-up installs the graphs' dispatch on this model instance
        # (CapturedForward), which would otherwise replay them in this step too and price it as the captured one.
        installed = model.__dict__.pop("forward", None)
        try:
            local_train(model, flat, global_params, global_buffers, data, 0, 1, strategy, cfg)
        finally:
            if installed is not None:
                model.forward = installed

    steps = {"plain": plain_epoch, "sequential": sequential}
    # The strategy's step on this device first: on a CPU that is why no kind is captured.
    capture, why_not_captured = None, capture_blocker(model, strategy, device.type)
    if why_not_captured is None and any(k.capture for k in group):
        capture = CapturedForward(model, kind.batch_size)  # captured and checked in the untimed warm-up call
        steps["captured"] = lambda: local_train(model, flat, global_params, global_buffers, data, 0, 1, strategy, cfg,
                                                capture=capture)
    seconds = timed_together(steps, device, args.repeats)
    shared = {f"{name}_ms": seconds[name] / args.steps * 1e3 for name in ("plain", "sequential")}
    captured_ms = None
    if capture is not None:
        if capture.on:
            captured_ms = seconds["captured"] / args.steps * 1e3
        else:
            why_not_captured = f"the check at capture failed: {capture.difference}"
        capture.close()
    # Each stack size's round with the plain reference beside it: their ratio carries no drift of the device's speed.
    # The stacks are not timed in one rotation, since one stack's memory is freed before the next is built.
    vectorized: dict[int, tuple[float, float]] = {}
    for m in sorted({stacked_clients(k, args) for k in group if k.path == "vectorized"}):
        clients = synthetic_clients(kind, m, args.steps * kind.batch_size, device)
        strategy.setup(m, global_params.numel(), device, model=model, seed=0)
        trainer = VectorizedTrainer(model, clients, strategy, cfg)
        sampled = list(range(m))
        seconds = timed_together({"plain": plain_epoch, "vectorized": lambda trainer=trainer, sampled=sampled:
                                  trainer.train_round(global_params, global_buffers, sampled, 1)}, device, args.repeats)
        ms = seconds["vectorized"] / (args.steps * m) * 1e3
        vectorized[m] = ms, seconds["plain"] / args.steps * 1e3 / ms
        # one stack's captured graphs (on a card, a memory pool of a stacked step each) freed before the next is built
        trainer.close()
        del trainer, clients
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {k: price(k, shared, captured_ms, why_not_captured, vectorized, args, device.type) for k in group}


def price(kind: StepKind, shared: dict, captured_ms: float | None, why_not_captured: str | None,
          vectorized: dict[int, tuple[float, float]], args: argparse.Namespace, device_type: str) -> dict:
    """A kind's row from its shape's measurements (`shared`: plain_ms, sequential_ms; the captured step where it was
    measured, else why not; the vectorised rounds' ms per client step by their clients, each with the plain step's
    ms over it, timed beside it): "now_ms" is the step its runs take, captured only where they capture themselves."""
    row = {"kind": kind, **shared, "captured_ms": None, "why_not_captured": why_not_captured, "vectorized_ms": None,
           "plain_per_vectorized": None, "why_not": None, "stacked": 0}
    if why_not_captured is None:
        if kind.path == "vectorized":
            row["why_not_captured"] = "its runs train vectorised"
        elif not kind.capture:
            row["why_not_captured"] = ("its runs step eagerly (resolve_capture: their algorithm's own local "
                                       "objective, or training.capture: eager)")
        else:
            row["captured_ms"] = captured_ms
    if kind.path == "vectorized":
        row["stacked"] = stacked_clients(kind, args)
        row["vectorized_ms"], row["plain_per_vectorized"] = vectorized[row["stacked"]]
        row["now_ms"] = row["vectorized_ms"]
    else:
        row["why_not"] = f"its runs train sequentially on {device_type}"
        row["now_ms"] = row["sequential_ms"] if row["captured_ms"] is None else row["captured_ms"]
    return row


def hours(steps: int, ms: float) -> float:
    return steps * ms / 3.6e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["pilot", "fedalign", "meta"],
                        help="paper configs (names under config/papers, or paths)")
    parser.add_argument("--clients", type=int, default=0,
                        help="at most this many clients in a measured vectorised round (0: each kind's runs' own "
                             "clients per round, at most client_chunk_size)")
    parser.add_argument("--steps", type=int, default=20, help="local steps per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median reported)")
    parser.add_argument("--precision", default="fp32", help="training.precision of the measured steps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = device_label(device)

    projections: dict[str, dict[StepKind, KindWork]] = {}
    not_measured: list[str] = []
    equal_shares: list[str] = []
    models: dict = {}
    for entry in args.configs:
        path = Path(entry) if entry.endswith((".yaml", ".yml")) else PAPERS / f"{entry}.yaml"
        projections[path.stem], others, equal = project(load_config(path, SCHEMA), device, models)
        not_measured += [f"{path.stem}: {n} runs of {dataset} ({DATASETS[dataset].inputs} inputs)"
                         for dataset, n in sorted(others.items())]
        equal_shares += [f"{path.stem}: {n} runs ({why})" for why, n in sorted(equal.items())]

    stacked = f"at most {args.clients}" if args.clients else "its runs' own clients per round"
    print(f"# local training step costs on {name}, precision {precision_used(args.precision, device)}, "
          f"{torch_line()}; {args.steps} steps x {args.repeats} repeats, vectorised rounds of {stacked}")
    if not_measured:
        print(f"# not measured (image models only): {'; '.join(not_measured)}")
    if equal_shares:
        print(f"# shards taken equal (pool / clients), their partition not made here: {'; '.join(equal_shares)}")
    # One config after another, each one's hours printed as soon as its kinds are measured: a call cut at its limit
    # (or a kind that fails) still brings back the hours of the configs before it. A kind an earlier config has
    # measured is priced at that measurement.
    costs: dict[StepKind, dict] = {}
    for i, (config_name, per_kind) in enumerate(projections.items()):
        new = [k for k in per_kind if k not in costs]
        if new:
            # the first table follows the heading above; a later one starts a paragraph of its own
            print(f"\n# {config_name}: its step kinds not measured above" if i else f"# {config_name}: its step kinds",
                  flush=True)
            costs.update(measure_kinds(new, args, device))
        print_hours(config_name, per_kind, costs, name)


def measure_kinds(kinds: list[StepKind], args: argparse.Namespace, device: torch.device) -> dict[StepKind, dict]:
    """The rows of `kinds`, measured shape by shape, each shape's rows printed (as a table of step costs) as soon as
    they are measured."""
    kinds = sorted(kinds, key=lambda k: (k.label.split(', batch')[0], k.batch_size, k.path, k.clients, k.capture))
    capped = sorted({k.clients for k in kinds if k.path == "vectorized" and stacked_clients(k, args) < k.clients})
    print("| model | plain ms/step | fedscape sequential ms/step | sequential / plain | vectorised ms/client step | "
          "plain / vectorised | runs' path | captured ms/step | plain / captured | evaluation ms/1,000 images | "
          "plain evaluation ms/1,000 images | evaluation / plain |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    costs: dict[StepKind, dict] = {}
    shapes: dict[tuple, list[StepKind]] = {}
    for kind in kinds:
        shapes.setdefault(kind.shape, []).append(kind)
    for group in shapes.values():
        costs.update(measure(group, args, device))
        for kind in group:
            row = costs[kind]
            vec = (f"{row['vectorized_ms']:.4g} ({row['stacked']} clients) | {row['plain_per_vectorized']:.1f}x"
                   if row["vectorized_ms"] is not None else f"n/a: {row['why_not']} | ")
            cap = (f"{row['captured_ms']:.4g} | {row['plain_ms'] / row['captured_ms']:.1f}x"
                   if row["captured_ms"] is not None else f"n/a: {row['why_not_captured']} | ")
            print(f"| {kind.label} | {row['plain_ms']:.4g} | {row['sequential_ms']:.4g} | "
                  f"{row['sequential_ms'] / row['plain_ms']:.2f}x | {vec} | {kind.path} | {cap} | "
                  f"{row['eval_ms'] * 1e3:.4g} | {row['plain_eval_ms'] * 1e3:.4g} | "
                  f"{row['eval_ms'] / row['plain_eval_ms']:.2f}x |", flush=True)
    if capped:
        # The stacked round's fixed cost per step is shared by its clients: fewer clients cost more per client step.
        print(f"# --clients {args.clients} measured fewer clients than the runs of {', '.join(map(str, capped))} "
              "clients per round train together: their vectorised figures (and hours now) are not their runs' own, "
              "usually dearer per client step")
    return costs


def print_hours(config_name: str, per_kind: dict[StepKind, KindWork], costs: dict[StepKind, dict],
                name: str) -> None:
    """A config's projected hours of local training and evaluation, per kind and in all, from the kinds' measured
    `costs`: plain and before at its runs' client steps, now at the client steps their path pays for (`KindWork.now`:
    a vectorised kind's stacked ones, each chunk of clients as long as its longest client), now as if every shard
    were pool / clients; the runs' evaluations at the measured cost per evaluated image, and now with them."""
    print(f"\n# projected hours of local training and evaluation on {name} (not inits or the analysis jobs)")
    print("| config | model | runs | client steps | client steps now (vectorised: stacked) | hours at plain steps | "
          "hours before (sequential) | hours now | hours now, shards equal | images evaluated | hours evaluating | "
          "hours now with evaluation |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    total = {"plain": 0.0, "before": 0.0, "now": 0.0, "equal": 0.0, "eval": 0.0}
    for kind, work in per_kind.items():
        row = costs[kind]
        now = work.now(kind)
        h = {"plain": hours(work.client, row["plain_ms"]), "before": hours(work.client, row["sequential_ms"]),
             "now": hours(now, row["now_ms"]), "equal": hours(work.equal, row["now_ms"]),
             "eval": hours(work.evaluated, row["eval_ms"])}
        for key in total:
            total[key] += h[key]
        print(f"| {config_name} | {kind.label} | {work.runs} | {work.client} | {now} | {h['plain']:.4g} | "
              f"{h['before']:.4g} | {h['now']:.4g} | {h['equal']:.4g} | {work.evaluated} | {h['eval']:.4g} | "
              f"{h['now'] + h['eval']:.4g} |")
    print(f"| {config_name} | all | {sum(w.runs for w in per_kind.values())} | "
          f"{sum(w.client for w in per_kind.values())} | {sum(w.now(k) for k, w in per_kind.items())} | "
          f"{total['plain']:.4g} | {total['before']:.4g} | {total['now']:.4g} | {total['equal']:.4g} | "
          f"{sum(w.evaluated for w in per_kind.values())} | {total['eval']:.4g} | {total['now'] + total['eval']:.4g} |",
          flush=True)


if __name__ == "__main__":
    main()
