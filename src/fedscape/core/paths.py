"""Every path of fedscape's results: templates below ``results_dir``, shared by the rules and the library.

A template holds Snakemake wildcards in braces (``{dataset}``, ``{pair}``); `Results` puts a template
below the configured results directory and fills the fields it is given, leaving the others as
wildcards. Logs mirror the results' layout below ``logs/`` of the working directory: those of the default
``results`` directly, those of any other results directory below ``logs/<results_dir>/``, so that two
configs with different results directories never write the same log.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from fedscape.core.names import suggest
from fedscape.core.runs import RUN_ID, Run

LOGS = "logs"
DEFAULT_RESULTS = "results"  # the schema's default `results_dir`: its logs keep the plain logs/ layout

TRAIN_DIR = f"train/{RUN_ID}"
TRAIN_FILES = ("trajectory", "clients", "metrics", "meta", "client_updates")  # the train rule's named outputs
TRAIN_FILE_NAMES = {"trajectory": "trajectory.pt", "clients": "clients.pt", "metrics": "metrics.csv",
                    "meta": "meta.json", "client_updates": "client_updates.csv"}
# below results_dir: the digests of the data files its jobs read, by path, size and date (core.fingerprints)
DATA_HASHES = "_data_hashes"
PROGRESS = "_progress"  # per-round progress of a job, beside its outputs (not an output: it survives a kill)
PARTITION_DIR = "partitions/{dataset}/clients~{num_clients}/alpha~{alpha}/seed~{seed}"
PARTITION_FILE = f"{PARTITION_DIR}/partition.npz"  # the split a run trains on
INIT_DIR = "init/{dataset}/{model}/init~{init}"
HESSIAN_DIR = f"hessian/{RUN_ID}/round~{{round}}"
INTERPOLATION_DIR = "barriers/interpolation/{pair}"
LAYERWISE_DIR = "barriers/layerwise/{pair}/round~{round}"
LANDSCAPE_DIR = "landscape/{dataset}/{model}/{surface}"
SURFACE_DIR = f"{LANDSCAPE_DIR}/{{data}}"
TABLE = "tables/{table}.csv"
FIGURES = "figures"
FIGURE_FORMATS = ("png", "pdf", "csv")  # every figure: the picture twice and the data it draws
# Every figure's path below figures/, by what it draws (`Results.figure` adds each format's suffix).
CURVES_FIGURE = "curves/{dataset}/{model}/{metric}"
ACCURACY_FIGURE = "accuracy/{dataset}/{model}/{kind}"
COST_FIGURE = "cost/{dataset}/{model}/cost"
CLIENT_STATS_FIGURE = "client_stats/client_stats"
HESSIAN_FIGURE = "hessian/{name}"
INTERPOLATION_FIGURE = "barriers/interpolation"
LAYER_FIGURE = "barriers/layerwise/{pair}/{split}"
LAYER_DISTANCE_FIGURE = "barriers/layerwise/{pair}/distances"
LAYER_CUMULATION_FIGURE = "barriers/layerwise/{pair}/cumulation_{split}"  # Fig. 4: modes random and ends
LAYER_ALIGNED_FIGURE = "barriers/layerwise/{pair}/aligned_{split}"  # the heatmaps after weight matching
LAYER_TRAINING_FIGURE = "barriers/layerwise/{pair}/over_training"  # Fig. 1b: full barrier and distances

# Every rule's log, below the logs of its results directory (`Results.job_log`): a job's log mirrors its results
# (its job directory, or the table or figure it makes). A log path never changes with the code: a moved log would
# rerun nothing but leave users' logs where nobody looks for them.
JOB_LOGS: dict[str, str] = {
    # partition, init and train: one log in each job's directory
    "partition": f"{PARTITION_DIR}/partition.log",
    "init": f"{INIT_DIR}/init.log",
    "train": f"{TRAIN_DIR}/train.log",
    "partitions_table": "tables/partitions.log",
    "rounds_table": "tables/rounds.log",
    "cost_table": "tables/cost.log",
    # client statistics
    "client_stats": "tables/client_stats.log",
    "client_stats_figure": f"{FIGURES}/client_stats.log",
    # Hessian
    "hessian": f"{HESSIAN_DIR}/hessian.log",
    "hessian_plane": f"{HESSIAN_DIR}/eigen_plane.log",
    "hessian_tables": "tables/hessian.log",
    "hessian_by_algorithm_figure": f"{FIGURES}/hessian/lambda_trace_by_algorithm.log",
    "hessian_by_init_figure": f"{FIGURES}/hessian/lambda_trace_by_init.log",
    "hessian_density_figure": f"{FIGURES}/hessian/spectral_density.log",
    # barriers: a pair's job logs are named after its job directory
    "interpolation": f"{INTERPOLATION_DIR}.log",
    "interpolation_tables": "tables/interpolation.log",
    "interpolation_figure": f"{FIGURES}/barriers/interpolation.log",
    "layer_barriers": f"{LAYERWISE_DIR}.log",
    "layer_barrier_tables": "tables/layer_barriers.log",
    "layer_consecutive_table": "tables/layer_consecutive.log",
    "layer_barrier_figures": f"{FIGURES}/barriers/layerwise/{{pair}}.log",
    "layer_distance_figure": f"{FIGURES}/barriers/layerwise/{{pair}}_distances.log",
    "layer_cumulation_figures": f"{FIGURES}/barriers/layerwise/{{pair}}_cumulation.log",
    "layer_aligned_figures": f"{FIGURES}/barriers/layerwise/{{pair}}_aligned.log",
    "layer_training_figure": f"{FIGURES}/barriers/layerwise/{{pair}}_over_training.log",
    # landscapes
    "landscape_plane": f"{LANDSCAPE_DIR}/plane.log",
    "landscape_chunk": f"{SURFACE_DIR}/chunk~{{chunk}}.log",
    "landscape_gather": f"{SURFACE_DIR}/gather.log",
    "landscape_figure": f"{SURFACE_DIR}/figure.log",
    "surfaces_table": "tables/surfaces.log",
    # the report
    "final_table": "tables/final.log",
    "summary_table": "tables/summary.log",
    "paired_differences_table": "tables/paired_differences.log",
    "curves_figure": f"{FIGURES}/curves/{{dataset}}/{{model}}/{{metric}}.log",
    "accuracy_figure": f"{FIGURES}/accuracy/{{dataset}}/{{model}}/{{kind}}.log",
    "cost_figure": f"{FIGURES}/cost/{{dataset}}/{{model}}.log",
}
# The folders below logs/ that the default results' job logs take (the first part of each JOB_LOGS template): another
# results directory's logs (`Results.logs`) must not lie in one of them, or the two would share it (`make clean`
# deletes these folders with the default run's logs; the Makefile's DEFAULT_LOGS lists them again).
DEFAULT_LOG_PARTS = frozenset(template.split("/")[0] for template in JOB_LOGS.values())

_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, **fields) -> str:
    """`template` with the given fields filled in; other ``{wildcards}`` stay as they are."""
    return _FIELD.sub(lambda m: str(fields[m[1]]) if m[1] in fields else m[0], template)


def parse_path(template: str, path: str | os.PathLike) -> dict[str, str] | None:
    """The fields of `path` when it ends with `template` (each field one path part), else None:
    `parse_path(f"{PARTITION_DIR}/partition.npz", ".../partitions/digits/clients~10/alpha~0.1/seed~0/partition.npz")`
    gives {'dataset': 'digits', 'num_clients': '10', 'alpha': '0.1', 'seed': '0'}."""
    parts = re.split(r"(\{\w+\})", template)
    pattern = "".join(f"(?P<{p[1:-1]}>[^/]+)" if _FIELD.fullmatch(p) else re.escape(p) for p in parts)
    match = re.search(f"(?:^|/){pattern}$", os.fspath(path))
    return None if match is None else match.groupdict()


def run_of_path(path: str | os.PathLike) -> dict[str, str]:
    """{'run_id': ...} for a file of a per-run job directory (a train job's), and its 'round' too for a Hessian job's
    (below round~<r>): what its rows, or its record, must all hold; {} for any other path."""
    directory = os.path.dirname(os.fspath(path))
    fields = parse_path(HESSIAN_DIR, directory)
    if fields is not None:
        return {"run_id": fill(RUN_ID, **fields), "round": fields["round"]}
    fields = parse_path(TRAIN_DIR, directory)
    return {} if fields is None else {"run_id": fill(RUN_ID, **fields)}


def results_root(config: dict) -> str:
    """The configured results directory, normalised (``results/`` and ``./results`` are ``results``)."""
    return os.path.normpath(config.get("results_dir", DEFAULT_RESULTS))


@dataclass(frozen=True)
class Results:
    """The results directory of one config: templates below it, and the logs mirroring them."""

    root: str

    @classmethod
    def of(cls, config: dict) -> Results:
        """The results directory of `config` (its `results_dir`)."""
        return cls(results_root(config))

    def __call__(self, template: str, **fields) -> str:
        """`template` below the results directory, with `fields` filled in."""
        return f"{self.root}/{fill(template, **fields)}"

    def log(self, template: str, **fields) -> str:
        """`template` below the logs of this results directory (a results path's mirror), `fields` filled in."""
        return f"{self.logs}/{fill(template, **fields)}"

    def job_log(self, rule: str) -> str:
        """The log of a job of `rule` (its template in `JOB_LOGS`), wildcards left for Snakemake to fill."""
        if rule not in JOB_LOGS:
            raise ValueError(f"rule {rule!r} has no log template: add one to JOB_LOGS in fedscape.core.paths."
                             f"{suggest(rule, JOB_LOGS)}")
        return self.log(JOB_LOGS[rule])

    @property
    def logs(self) -> str:
        """logs/ for the default results directory, logs/<results_dir>/ for any other (an absolute one
        without its leading /): a table's log (logs/tables/...) names no run, so two results directories
        sharing one logs/ would write each other's."""
        if self.root == DEFAULT_RESULTS:
            return LOGS
        return f"{LOGS}/{self.root.lstrip(os.sep)}"

    def table(self, name: str) -> str:
        """results/tables/<name>.csv."""
        return self(TABLE, table=name)

    def figure(self, prefix: str, **fields) -> dict[str, str]:
        """The png, pdf and csv files of a figure whose path without extension is `prefix` below figures/."""
        base = self(f"{FIGURES}/{prefix}", **fields)
        return {ext: f"{base}.{ext}" for ext in FIGURE_FORMATS}

    def figure_outputs(self, report, prefix: str, caption: str, category: str, fields: dict | None = None,
                       **report_options) -> dict:
        """A figure rule's outputs in one call: the png in the HTML report (`report`: Snakemake's `report` function,
        with the caption, category and any other of its options), the pdf and the data behind it as csv."""
        files = self.figure(prefix, **(fields or {}))
        return {"png": report(files["png"], caption=caption, category=category, **report_options),
                **{ext: path for ext, path in files.items() if ext != "png"}}

    def train_file(self, name: str, **fields) -> str:
        """A train output (`TRAIN_FILE_NAMES`: trajectory, clients, metrics, meta, client_updates) of the run
        whose fields are given (wildcards for the others)."""
        return f"{self(TRAIN_DIR, **fields)}/{TRAIN_FILE_NAMES[name]}"

    def run_file(self, run: Run, name: str) -> str:
        """One of a run's train outputs."""
        return self.train_file(name, **run.fields())

    def partition_file(self, run: Run, name: str = "partition.npz") -> str:
        """The run's client split (partition.npz) or its label counts (counts.csv)."""
        return f"{self(PARTITION_DIR, **run.partition_fields)}/{name}"

    def init_file(self, **fields) -> str:
        """The initial model (a one-row trajectory) of an init label, dataset and model."""
        return f"{self(INIT_DIR, **fields)}/init.pt"
