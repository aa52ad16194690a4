"""Checkpoints of a federated run: the global trajectory and client models at chosen rounds.

Format (a dict of tensors and plain values, saved with `torch.save` and always loaded with
`torch.load(weights_only=True)`, so loading never unpickles arbitrary objects):

* ``trajectory.pt``: ``params`` [R+1, P] (row t = global model after round t, row 0 = the init),
  ``buffers`` [R+1, B] (floating buffers such as batch-norm statistics, B may be 0),
  ``rounds`` [R+1] and ``meta`` (model name, options, data shape, parameter names and shapes, and in files written
  since they are recorded the floating buffers' names and shapes). A run with
  ``training.save_every`` k > 1 keeps only some rounds (fedscape.fl.settings.TrainConfig.kept_rounds): its rows
  are those rounds, named by ``rounds``, and asking for another round is an error naming the kept ones.
* ``clients.pt``: for each round in ``save_clients_at`` the participating clients' models after
  local training: ``client_ids`` [m], ``num_samples`` [m], ``params`` [m, P], ``buffers`` [m, B].

A run with server-side SWA (fedscape.fl.swa) also stores its SWA model in ``trajectory.pt``:
``swa_params`` [P], ``swa_buffers`` [B] and ``swa_rounds`` (the rounds whose global models it averages);
files of other runs have no such keys. The global models stay the trajectory's rows; the SWA model is the
run's final model: `Trajectory.point(round_)` (and `model_at`) give it for the final round, so every
analysis of a run's final model reads it.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from fedscape.core.io import atomic_path, remake_hint
from fedscape.core.names import nearest_text
from fedscape.core.provenance import check_belongs
from fedscape.core.runs import parse_run_id
from fedscape.data.specs import DATASETS, fits_dataset
from fedscape.models.params import buffer_specs, load_buffers, load_params
from fedscape.models.registry import build_model
from fedscape.models.specs import CHECKPOINT_FORMAT, with_old_defaults

FORMAT = CHECKPOINT_FORMAT
CHECKPOINT_SUFFIX = ".pt"  # every checkpoint a job writes (trajectory.pt, clients.pt, init.pt)
LOADERS = {"trajectory": "load_trajectory", "clients": "load_clients"}  # each checkpoint kind's reader


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated or not a fedscape checkpoint."""


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to rebuild the model a flat vector belongs to."""

    model: str
    num_classes: int
    in_channels: int
    image_size: int
    model_options: dict = field(default_factory=dict)
    param_names: tuple[str, ...] = ()
    param_shapes: tuple[tuple[int, ...], ...] = ()
    # The floating buffers' names and shapes, in order (`fedscape.models.params.buffer_specs`, what a row of buffers
    # holds); None in a file written before they were recorded.
    buffer_names: tuple[str, ...] | None = None
    buffer_shapes: tuple[tuple[int, ...], ...] | None = None
    source: str = field(default="", compare=False, repr=False)  # the file it was read from (named in errors)
    # The buffer entries per model of the file it was read from (None: not read from one), which `check_layout`
    # compares with the model's where the file records no buffer names.
    stored_buffers: int | None = field(default=None, compare=False, repr=False)

    @property
    def num_params(self) -> int:
        """The parameter count its `param_shapes` declare (0 when the file records none)."""
        return sum(math.prod(int(s) for s in shape) for shape in self.param_shapes)

    @property
    def num_buffers(self) -> int | None:
        """The buffer entries its `buffer_shapes` declare (None when the file records none)."""
        if self.buffer_shapes is None:
            return None
        return sum(math.prod(int(s) for s in shape) for shape in self.buffer_shapes)

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of each parameter, in order: the recorded `param_shapes`, else (a file that records none, or
        only the names) those of the model `build` makes, into which the jobs load its vectors by position."""
        return self.param_shapes or tuple(tuple(p.shape) for p in self.build().parameters())

    def describe(self) -> str:
        """'cnn_small for 10 classes of 1x8x8 inputs' (with its options when it has any)."""
        options = f" with options {self.model_options}" if self.model_options else ""
        return (f"{self.model}{options} for {self.num_classes} classes of "
                f"{self.in_channels}x{self.image_size}x{self.image_size} inputs")

    def with_options(self, options: dict, model: nn.Module) -> ModelMeta:
        """This meta with an algorithm's model `options` added (`ServerSGDConfig.model_options`) and the layout of
        `model`, the model built with them (`with_layout`)."""
        return replace(self, model_options={**self.model_options, **options}).with_layout(model)

    def with_layout(self, model: nn.Module) -> ModelMeta:
        """This meta recording the layout of `model`, the model its vectors are flattened from: its parameters' and
        floating buffers' names and shapes, in order."""
        buffers = buffer_specs(model)
        return replace(self, param_names=tuple(n for n, _ in model.named_parameters()),
                       param_shapes=tuple(tuple(p.shape) for p in model.parameters()),
                       buffer_names=tuple(b.name for b in buffers), buffer_shapes=tuple(b.shape for b in buffers))

    def build(self) -> nn.Module:
        """The model, built by this version of its code; CheckpointError where the file records another parameter
        layout (`check_layout`). An option the file leaves out whose default has changed is built at its baseline
        (`with_old_defaults`): the file was written before the new default, since which the inits write such an
        option out (`with_new_defaults`), and it is kept where the config writes the old value."""
        model = build_model(self.model, num_classes=self.num_classes, in_channels=self.in_channels,
                            image_size=self.image_size, **with_old_defaults(self.model, dict(self.model_options)))
        self.check_layout(model)
        return model

    def check_layout(self, model: nn.Module) -> None:
        """CheckpointError unless `model`'s parameters and floating buffers have the names and shapes, in order, that
        this meta records.

        A flat vector is loaded into a freshly built model by position, so a change to a model's code that renamed,
        reordered or reshaped its parameters at the same count would load an older file's vectors scrambled without
        any error; the count alone (`_check_model`) cannot see it. Checked once per built model, not per vector
        loaded into it. A file that records no names (written before they were recorded) is not checked. Its buffers
        likewise: a file whose model options name another norm than the one its buffers were flattened from (batch
        norm's running statistics read as group norm's, which has the same parameters and no buffers) would fail at
        the first load with a bare count; a file that records no buffer names has its buffer count checked, where it
        was read from one (`stored_buffers`).
        """
        fix = remake_hint(self.source) if self.source else "make it again with this version of the code"
        where = f"{self.source or 'checkpoint'}: its model ({self.describe()})"
        if self.param_names:
            names = tuple(name for name, _ in model.named_parameters())
            shapes = tuple(tuple(p.shape) for p in model.parameters())
            if names != self.param_names or (self.param_shapes and shapes != self.param_shapes):
                want, got = _first_difference(_layout(self.param_names, self.param_shapes),
                                              _layout(names, shapes if self.param_shapes else ()), "parameter")
                raise CheckpointError(f"{where} records {want}, but this version of the model's code builds {got} "
                                      "there: the checkpoint was written by another version of the model's code, "
                                      f"whose parameters would load into this one scrambled; {fix}")
        buffers = buffer_specs(model)
        if self.buffer_names is not None:
            names, shapes = tuple(b.name for b in buffers), tuple(b.shape for b in buffers)
            if names != self.buffer_names or shapes != self.buffer_shapes:
                want, got = _first_difference(_layout(self.buffer_names, self.buffer_shapes or ()),
                                              _layout(names, shapes), "buffer")
                raise CheckpointError(f"{where} records {want}, but the model built from its name and options has "
                                      f"{got} there: its buffers were flattened from another model (other options, or "
                                      f"another version of the model's code) and would not load into this one; {fix}")
        elif self.stored_buffers is not None:
            count = sum(b.numel for b in buffers)
            if count != self.stored_buffers:
                raise CheckpointError(f"{where} holds {self.stored_buffers} buffer entries per model, but the model "
                                      f"built from its name and options has {count}: its buffers were flattened from "
                                      "another model (other options, or another version of the model's code) and "
                                      f"would not load into this one; {fix}")

    def to_dict(self) -> dict:
        """The meta as a file records it; the buffer keys only where recorded, so that a meta read from a file written
        before them writes the keys it read."""
        buffers = {} if self.buffer_names is None else {
            "buffer_names": list(self.buffer_names), "buffer_shapes": [list(s) for s in self.buffer_shapes or ()]}
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "model_options": dict(self.model_options),
            "param_names": list(self.param_names),
            "param_shapes": [list(s) for s in self.param_shapes],
            **buffers,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        recorded = "buffer_names" in d
        return cls(
            model=d["model"],
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            image_size=int(d["image_size"]),
            model_options=dict(d.get("model_options", {})),
            param_names=tuple(d.get("param_names", ())),
            param_shapes=tuple(tuple(int(n) for n in s) for s in d.get("param_shapes", ())),
            buffer_names=tuple(d["buffer_names"]) if recorded else None,
            buffer_shapes=tuple(tuple(int(n) for n in s) for s in d.get("buffer_shapes", ())) if recorded else None,
        )


def _layout(names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...]) -> list[str]:
    """Each tensor as "'name' [shape]" (its name alone where no shape is given), for `ModelMeta.check_layout`."""
    return [f"{name!r} {list(shapes[i])}" if i < len(shapes) else repr(name) for i, name in enumerate(names)]


def _first_difference(recorded: list[str], built: list[str], what: str) -> tuple[str, str]:
    """("<what> i as <recorded i>", "<built i>") at the first position i where the two layouts differ (`_layout`),
    "no <what>" on the side that ends there."""
    i = next((i for i, (a, b) in enumerate(zip(recorded, built, strict=False)) if a != b),
             min(len(recorded), len(built)))
    return (f"{what} {i} as {recorded[i] if i < len(recorded) else f'no {what}'}",
            built[i] if i < len(built) else f"no {what}")


@dataclass(frozen=True)
class Trajectory:
    """The global model after every round of one run."""

    params: torch.Tensor  # [R+1, P]
    buffers: torch.Tensor  # [R+1, B]
    rounds: torch.Tensor  # [R+1]
    model_meta: ModelMeta
    meta: dict  # run settings, seeds, status
    path: str = ""  # the file it was read from (named in errors)
    swa_params: torch.Tensor | None = None  # [P] the SWA model of a run with SWA, else None
    swa_buffers: torch.Tensor | None = None  # [B]
    swa_rounds: tuple[int, ...] = ()  # the rounds whose global models the SWA model averages

    @property
    def has_swa(self) -> bool:
        """Whether the run has an SWA model (its reported final model)."""
        return self.swa_params is not None

    def point(self, round_: int | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(params, buffers) of the model analysed at `round_` (an int or 'final'): the global model after that
        round, except at the final round of a run with SWA, where it is the SWA model (the run's reported final
        model)."""
        round_ = self.round_number(round_)
        global_model = self.global_point(round_)  # (a KeyError for a round the trajectory lacks, SWA or not)
        if self.has_swa and round_ == self.final_round:
            return self.swa_params, self.swa_buffers
        return global_model

    def global_point(self, round_: int | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(params, buffers) of the global model after `round_`, also at the final round of a run with SWA (whose
        reported final model, `point`, is its SWA model)."""
        row = self.row(round_)
        return self.params[row], self.buffers[row]

    def model_at(self, round_: int | str, device: str | torch.device = "cpu", global_model: bool = False) -> nn.Module:
        """The model after round `round_` (0 = init, 'final' = the final round; `point`: the SWA model at the final
        round of a run with SWA, unless `global_model`: `global_point`), in eval mode."""
        params, buffers = self.global_point(round_) if global_model else self.point(round_)
        model = self.model_meta.build().to(device)
        load_params(model, params.to(device))
        load_buffers(model, buffers.to(device))
        return model.eval()

    @property
    def save_every(self) -> int:
        """The run's `training.save_every`: 1 (every round kept) unless the run kept every k-th round."""
        return int(self.meta.get("settings", {}).get("training", {}).get("save_every", 1))

    def round_number(self, round_: int | str) -> int:
        """`round_` as a round: an int as it is, 'final' the trajectory's final round (as the config means it);
        TypeError for anything else (a round given as text, '2', is a mistake, not a round)."""
        if isinstance(round_, str) and round_ == "final":
            return self.final_round
        if not isinstance(round_, bool):
            try:
                return operator.index(round_)  # an int, numpy's or a one-element integer tensor
            except TypeError:
                pass
        raise TypeError(f"round is an int or 'final', got {round_!r}")

    def row(self, round_: int | str) -> int:
        """The row of the global model after round `round_` (an int or 'final'); KeyError for a round it lacks."""
        round_ = self.round_number(round_)
        hits = (self.rounds == round_).nonzero()
        if len(hits) == 0:
            if self.save_every > 1 and 0 <= round_ <= self.final_round:
                raise KeyError(self._not_kept(round_))
            raise KeyError(f"round {round_} is not in this trajectory (rounds 0..{int(self.rounds.max())})")
        return int(hits[0, 0])

    def _not_kept(self, round_: int) -> str:
        """The error for a round that the run trained but did not keep (training.save_every)."""
        kept = nearest_text([int(r) for r in self.rounds.tolist()], round_)
        return (f"{self.path or 'trajectory'}: the global model of round {round_} is not kept: the run (training."
                f"save_every {self.save_every}) kept rounds {kept}; analyse a kept round")

    @property
    def final_round(self) -> int:
        return int(self.rounds.max())

    @property
    def status(self) -> str:
        """The run's status: 'ok', or 'diverged' when training stopped early on a non-finite loss."""
        return str(self.meta.get("status", "ok"))

    def unusable(self, round_: int | str, global_model: bool = False) -> str | None:
        """Why the model of `round_` (`point`, or with `global_model` the global model: `global_point`) cannot be
        analysed (the run diverged), or None when it can.

        A diverged run's trajectory ends at the round where its training loss became NaN/inf
        (fedscape.fl.engine): later rounds are missing, and that last model is not analysed even when
        its parameters happen to be finite. A round missing from a run that did not diverge is an
        error (KeyError), not a reason to skip.
        """
        round_ = self.round_number(round_)
        if not bool((self.rounds == round_).any()):
            if self.save_every > 1 and 0 <= round_ <= self.final_round:
                raise KeyError(self._not_kept(round_))
            if self.status == "ok":
                raise KeyError(f"{self.path or 'trajectory'}: round {round_} is not in it (rounds "
                               f"0..{self.final_round}) although the run did not diverge; "
                               f"{remake_hint(self.path or 'trajectory.pt')}")
            return (f"round {round_} is not in the trajectory (it ends at round {self.final_round}, status "
                    f"{self.status!r}: the run stopped early)")
        row = self.row(round_)
        params, buffers = self.global_point(round_) if global_model else self.point(round_)
        if not (bool(torch.isfinite(params).all()) and bool(torch.isfinite(buffers).all())):
            if self.status == "ok":  # training never saves a non-finite model of a run it calls ok: damage
                raise CheckpointError(f"{self.path or 'trajectory'}: the model of round {round_} has NaN/inf "
                                      "parameters although the run is marked ok, so the file is damaged; "
                                      f"{remake_hint(self.path or 'trajectory.pt')}")
            return f"the model of round {round_} has NaN/inf parameters (status {self.status!r})"
        if self.status != "ok" and row == len(self.rounds) - 1:
            return (f"round {round_} is where the run diverged (status {self.status!r}: its training loss is not "
                    "finite or above the divergence bound)")
        return None


@dataclass(frozen=True)
class ClientRound:
    """The participating clients' models after local training in one round."""

    round: int
    client_ids: torch.Tensor  # [m]
    num_samples: torch.Tensor  # [m]
    params: torch.Tensor  # [m, P]
    buffers: torch.Tensor  # [m, B]


class SavedRounds(dict):
    """What `load_clients` gives: a dict {round: ClientRound} whose missing round is a KeyError naming the file and
    the rounds it holds (a plain dict's names only the key)."""

    def __init__(self, rounds: dict[int, ClientRound], path: str = "") -> None:
        super().__init__(rounds)
        self.path = path

    def __missing__(self, round_):
        saved = ", ".join(str(r) for r in sorted(self)) or "none"
        raise KeyError(f"{self.path or 'clients checkpoint'}: the clients of round {round_!r} are not saved; it holds "
                       f"rounds {saved} (training.save_clients_at)")


def save_trajectory(path: str | Path, params: torch.Tensor, buffers: torch.Tensor, rounds: torch.Tensor,
                    model_meta: ModelMeta, meta: dict, swa: dict | None = None) -> None:
    """Write a trajectory atomically; `swa` ({'params', 'buffers', 'rounds'}) adds the run's SWA model."""
    extra = {} if swa is None else {
        "swa_params": swa["params"].detach().cpu().float().contiguous(),
        "swa_buffers": swa["buffers"].detach().cpu().float().contiguous(),
        "swa_rounds": torch.tensor(list(swa["rounds"]), dtype=torch.long),
    }
    _save(path, {
        **extra,
        "format": FORMAT,
        "kind": "trajectory",
        "params": params.detach().cpu().float().contiguous(),
        "buffers": buffers.detach().cpu().float().contiguous(),
        "rounds": rounds.detach().cpu().long(),
        "model_meta": json.dumps(model_meta.to_dict()),
        "meta": json.dumps(meta),
    })


def load_trajectory(path: str | Path, map_location: str = "cpu", run_id: str | None = None) -> Trajectory:
    """Load a whole trajectory with one call; with `run_id`, check that it holds that run's model."""
    obj = _load(path, "trajectory", map_location)
    model_meta = replace(ModelMeta.from_dict(json.loads(obj["model_meta"])), source=str(path),
                         stored_buffers=_width(obj["buffers"]))
    meta = json.loads(obj["meta"])
    _check_model(path, model_meta, obj["params"], obj["buffers"], run_id, meta)
    swa_rounds = tuple(int(r) for r in obj["swa_rounds"].tolist()) if "swa_rounds" in obj else ()
    return Trajectory(obj["params"], obj["buffers"], obj["rounds"], model_meta, meta, str(path),
                      obj.get("swa_params"), obj.get("swa_buffers"), swa_rounds)


def save_clients(path: str | Path, rounds: dict[int, ClientRound], model_meta: ModelMeta, meta: dict) -> None:
    """Write the client checkpoints of every saved round atomically."""
    _save(path, {
        "format": FORMAT,
        "kind": "clients",
        "model_meta": json.dumps(model_meta.to_dict()),
        "meta": json.dumps(meta),
        "rounds": {
            str(r): {
                "client_ids": c.client_ids.cpu().long(),
                "num_samples": c.num_samples.cpu().long(),
                "params": c.params.detach().cpu().float().contiguous(),
                "buffers": c.buffers.detach().cpu().float().contiguous(),
            }
            for r, c in sorted(rounds.items())
        },
    })


def load_clients(path: str | Path, map_location: str = "cpu", run_id: str | None = None) -> SavedRounds:
    """Load the client checkpoints: {round: ClientRound} (`SavedRounds`: an unsaved round's KeyError names the saved
    ones); with `run_id`, check that they hold that run's model."""
    obj = _load(path, "clients", map_location)
    model_meta = ModelMeta.from_dict(json.loads(obj["model_meta"]))
    meta = json.loads(obj["meta"])
    for saved in obj["rounds"].values():
        _check_model(path, model_meta, saved["params"], saved["buffers"], run_id, meta)
    return SavedRounds({
        int(r): ClientRound(int(r), d["client_ids"], d["num_samples"], d["params"], d["buffers"])
        for r, d in obj["rounds"].items()
    }, str(path))


def _width(rows: torch.Tensor) -> int:
    """The entries per model of a checkpoint's rows of flat vectors ([R, N] or one [N])."""
    return int(rows.shape[-1]) if rows.dim() else 0


def _check_model(path: str | Path, model_meta: ModelMeta, params: torch.Tensor, buffers: torch.Tensor,
                 run_id: str | None, meta: dict) -> None:
    """One line naming the file when its parameters or buffers do not fit its own model's recorded layout, or it is
    not `run_id`'s: another model, or (where the file records its run, as a train job's do) another run's.

    A checkpoint copied from another run (another model, or the same model for another dataset, alpha or seed)
    would otherwise fail deep in a job with a shape error, or be analysed silently as this run's model.
    """
    width = _width(params)
    if model_meta.param_shapes and width != model_meta.num_params:
        raise CheckpointError(f"{path}: holds {width} parameters per model, but its own model "
                              f"({model_meta.describe()}) has {model_meta.num_params}: the file is damaged; "
                              f"{remake_hint(path)}")
    if model_meta.num_buffers is not None and _width(buffers) != model_meta.num_buffers:
        raise CheckpointError(f"{path}: holds {_width(buffers)} buffer entries per model, but its own model "
                              f"({model_meta.describe()}) records {model_meta.num_buffers}: the file is damaged; "
                              f"{remake_hint(path)}")
    if run_id is None:
        return
    if "run_id" in meta:  # an init's one-row trajectory records no run: several runs start from it
        check_belongs(path, f"a checkpoint of run {run_id}", {"run_id": run_id}, {"run_id": meta["run_id"]},
                      remake_hint(path), CheckpointError)
    fields = parse_run_id(run_id)
    info = DATASETS.get(fields.get("dataset", ""))
    if info is None or (model_meta.model == fields.get("model") and fits_dataset(
            fields["dataset"], model_meta.num_classes, model_meta.in_channels, model_meta.image_size)):
        return  # (a dataset read with other settings, Shakespeare's raw texts, has another shape: fits_dataset)
    want = ModelMeta(fields["model"], info.num_classes, info.in_channels, info.image_size)
    try:
        want_params = f"{sum(p.numel() for p in want.build().parameters())} parameters"
    except (ValueError, KeyError, TypeError, RuntimeError):  # a name or input shape the model cannot take
        want_params = "a parameter count that cannot be computed"
    raise CheckpointError(f"{path}: expected the model of run {run_id}, {want.describe()} ({want_params} with "
                          f"default options), found {model_meta.describe()} ({width} parameters): the file "
                          f"belongs to another run; {remake_hint(path)}")


def _save(path: str | Path, obj: dict) -> None:
    """Write `obj` atomically, the same bytes for the same content: through an open file object, because a zip
    archive that torch.save writes to a file *name* is named after that file (here a random temporary name), while
    one written to a file object is named as one written to memory. Not serialised in memory first: a run's kept
    models (ResNet18 at every one of 500 rounds: 21 GB) would be held twice."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def _load(path: str | Path, kind: str, map_location: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # Mapped rather than read where it stays on the CPU: a job that reads a few rounds of a long trajectory
        # (meta.yaml's CIFAR-10 runs keep 501 ResNet18s, 21 GB) holds those pages alone, and they are the file's,
        # which the kernel may drop under memory pressure rather than kill the job (MAP_PRIVATE: writes stay private)
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=map_location == "cpu")
    except Exception as exc:  # truncated, foreign or unsafe content
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); "
            f"it is truncated or not a fedscape checkpoint; {_damage_fix(path)}"
        ) from exc
    found = obj.get("kind") if isinstance(obj, dict) and obj.get("format") == FORMAT else None
    if found in LOADERS and found != kind:  # a healthy checkpoint of another kind: remaking it would change nothing
        raise CheckpointError(f"{path} is not a fedscape {kind} checkpoint: this is a {found} checkpoint: read it "
                              f"with {LOADERS[found]}")
    if found != kind:
        raise CheckpointError(
            f"{path} is not a fedscape {kind} checkpoint ({FORMAT}); {_damage_fix(path)}"
        )
    return obj


def _damage_fix(path: Path) -> str:
    """What to do about a file that is no readable checkpoint: a .pt file (what jobs write checkpoints as) is made
    again by its job; a file of another kind (e.g. a table given by mistake) was never a checkpoint."""
    if path.suffix == CHECKPOINT_SUFFIX:
        return remake_hint(path)
    return f"no job makes it: fedscape's checkpoints are the {CHECKPOINT_SUFFIX} files its train and init jobs write"
