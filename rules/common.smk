# Shared set-up and input functions of the rule files.
# Planning is torch-free: import settings and plans only from fedscape.plan and the torch-free
# fedscape.*_plan modules (tests/test_config.py checks that none of them imports torch).

from fedscape.plan import (
    WILDCARD_CONSTRAINTS,
    Run,
    build_runs,
    check_config,
    init_settings,
    partition_settings,
    results_root,
    train_settings,
)
from fedscape.config import load_schema

check_config(
    config, load_schema(workflow.source_path("../workflow/schemas/config.schema.yaml"))
)
RUNS = build_runs(config)
# Every output goes below the configured results directory; logs mirror its layout under logs/.
RESULTS = results_root(config)
LOGS = "logs"


def results_path(path):
    """`path` (relative to the results directory) below the configured results directory."""
    return f"{RESULTS}/{path}"


def log_path(path):
    """The log path mirroring an output path: the results directory replaced by logs/."""
    return (
        f"{LOGS}/{path[len(RESULTS) + 1:]}" if path.startswith(f"{RESULTS}/") else path
    )


TRAIN_DIR = results_path(
    "train/{dataset}/{model}/init~{init}/algo~{algorithm}/alpha~{alpha}/"
    "clients~{num_clients}/part~{participation}/seed~{seed}"
)
TRAIN_LOG = log_path(TRAIN_DIR)
PARTITION_DIR = results_path(
    "partitions/{dataset}/clients~{num_clients}/alpha~{alpha}/seed~{seed}"
)
INIT_FILE = results_path("init/{dataset}/{model}/init~{init}/init.pt")


wildcard_constraints:
    **WILDCARD_CONSTRAINTS,


def run_dir(run):
    return f"{RESULTS}/train/{run.run_id}"


# Final targets of `rule all`; every stage's rule file extends this list.
TARGETS = [results_path("tables/partitions.csv"), results_path("tables/rounds.csv")]


def partition_params(wildcards):
    return partition_settings(
        config,
        wildcards.dataset,
        wildcards.alpha,
        int(wildcards.num_clients),
        int(wildcards.seed),
    )


def init_params(wildcards):
    return init_settings(config, wildcards.dataset, wildcards.model, wildcards.init)


def train_params(wildcards):
    return train_settings(config, Run.from_wildcards(wildcards))


def partition_counts_of_runs(wildcards):
    ids = sorted({run.partition_id for run in RUNS})
    return [f"{RESULTS}/partitions/{pid}/counts.csv" for pid in ids]


def metrics_of_runs(wildcards):
    return [f"{run_dir(run)}/metrics.csv" for run in RUNS]


# -- issue 3: inits (iid_warmup / continue inputs) and cost accounting ---------------------------
def init_inputs(wildcards):
    """The IID partition of an iid_warmup init, the source trajectory of a continue init."""
    from fedscape.init_plan import init_input_paths

    return init_input_paths(
        config, RUNS, wildcards.dataset, wildcards.model, wildcards.init
    )


def cost_metrics_of_runs(wildcards):
    return [f"{run_dir(run)}/metrics.csv" for run in RUNS]


def cost_metas_of_runs(wildcards):
    return [f"{run_dir(run)}/meta.json" for run in RUNS]


# -- barriers (rules/barriers.smk): interpolation and layer-wise pairs, client statistics -----------
from fedscape.barrier_plan import (
    interpolation_pairs,
    interpolation_settings,
    layer_pairs,
    layer_settings,
)

INTERPOLATION_PAIRS = {p.label: p for p in interpolation_pairs(config, RUNS)}
LAYER_PAIRS = {p.label: p for p in layer_pairs(config, RUNS)}
BARRIER_LABEL = r"[A-Za-z0-9_.-]+"
INTERPOLATION_DIR = results_path("barriers/interpolation/{pair}")
LAYERWISE_DIR = results_path("barriers/layerwise/{pair}/round~{round}")
LAYER_FIGURE = results_path("figures/barriers/layerwise/{pair}/{split}")
LAYER_DISTANCE_FIGURE = results_path("figures/barriers/layerwise/{pair}/distances")


def _partition_file(run):
    return f"{RESULTS}/partitions/{run.partition_id}/partition.npz"


def interpolation_inputs(wildcards):
    pair = INTERPOLATION_PAIRS[wildcards.pair]
    return {
        "trajectory_a": f"{run_dir(pair.run_a)}/trajectory.pt",
        "trajectory_b": f"{run_dir(pair.run_b)}/trajectory.pt",
        "partition": _partition_file(pair.run_a),
    }


def interpolation_params(wildcards):
    return interpolation_settings(config, INTERPOLATION_PAIRS[wildcards.pair])


def layerwise_inputs(wildcards):
    pair = LAYER_PAIRS[wildcards.pair]
    inputs = {
        "trajectory_a": f"{run_dir(pair.run_a)}/trajectory.pt",
        "partition": _partition_file(pair.run_a),
    }
    if pair.kind == "clients":
        inputs["clients"] = f"{run_dir(pair.run_a)}/clients.pt"
    else:
        inputs["trajectory_b"] = f"{run_dir(pair.run_b)}/trajectory.pt"
    return inputs


def layerwise_params(wildcards):
    return layer_settings(config, LAYER_PAIRS[wildcards.pair], int(wildcards.round))


def interpolation_curves(wildcards):
    return [
        f"{INTERPOLATION_DIR.format(pair=label)}/curve.csv"
        for label in INTERPOLATION_PAIRS
    ]


def layerwise_outputs(name):
    def files(wildcards):
        return [
            f"{LAYERWISE_DIR.format(pair=p.label, round=r)}/{name}.csv"
            for p in LAYER_PAIRS.values()
            for r in p.rounds
        ]

    return files


def client_updates_of_runs(wildcards):
    return [f"{run_dir(run)}/client_updates.csv" for run in RUNS]


def trajectories_of_runs(wildcards):
    return [f"{run_dir(run)}/trajectory.pt" for run in RUNS]


def figure_files(prefix):
    return {"png": f"{prefix}.png", "pdf": f"{prefix}.pdf", "csv": f"{prefix}.csv"}


# -- loss landscapes (rules/landscape.smk): planes, chunks, surfaces --------------------------------
from fedscape.landscape_plan import (
    chunk_settings,
    figure_settings,
    hessian_plane_path,
    landscape_plans,
    overlay_data,
    plane_settings,
    surface_settings,
)

LANDSCAPES = {plan.label: plan for plan in landscape_plans(config, RUNS)}
LANDSCAPE_DIR = results_path("landscape/{dataset}/{model}/{surface}")
SURFACE_DIR = f"{LANDSCAPE_DIR}/{{data}}"
LANDSCAPE_LOG = log_path(LANDSCAPE_DIR)
LANDSCAPE_WILDCARDS = {
    "surface": r"[A-Za-z0-9_.-]+",
    "data": r"train|test|client~[0-9]+",
    "chunk": r"[0-9]+",
}


def _landscape(wildcards):
    return LANDSCAPES[wildcards.surface]


def landscape_plane_inputs(wildcards):
    plan = _landscape(wildcards)
    runs = plan.runs
    inputs = {"trajectories": [f"{run_dir(run)}/trajectory.pt" for run in runs]}
    if plan.kind == "local":
        inputs["clients"] = f"{run_dir(runs[0])}/clients.pt"
    if plan.kind == "hessian":
        inputs["hessian_plane"] = hessian_plane_path(plan, RESULTS)
    return inputs


def landscape_plane_params(wildcards):
    return plane_settings(config, _landscape(wildcards))


def landscape_chunk_inputs(wildcards):
    plan = _landscape(wildcards)
    plane_dir = LANDSCAPE_DIR.format(**wildcards)
    inputs = {"plane": f"{plane_dir}/plane.npz", "grid": f"{plane_dir}/grid.json"}
    if wildcards.data != "test":
        inputs["partition"] = (
            f"{RESULTS}/partitions/{plan.data_run.partition_id}/partition.npz"
        )
    return inputs


def landscape_chunk_params(wildcards):
    return chunk_settings(
        config, _landscape(wildcards), wildcards.data, int(wildcards.chunk)
    )


def landscape_chunks(wildcards):
    plan = _landscape(wildcards)
    surface_dir = SURFACE_DIR.format(**wildcards)
    return [f"{surface_dir}/chunks/chunk~{i}.npz" for i in range(plan.spec["chunks"])]


def landscape_surface_params(wildcards):
    return surface_settings(config, _landscape(wildcards), wildcards.data)


def landscape_figure_inputs(wildcards):
    plan = _landscape(wildcards)
    inputs = {"surface": f"{SURFACE_DIR.format(**wildcards)}/surface.npz"}
    other = overlay_data(plan, wildcards.data)
    if other is not None:
        inputs["overlay"] = f"{LANDSCAPE_DIR.format(**wildcards)}/{other}/surface.npz"
    return inputs


def landscape_figure_params(wildcards):
    return figure_settings(config, _landscape(wildcards), wildcards.data)


def landscape_surface_files(name):
    def files(wildcards=None):
        return [
            f"{RESULTS}/{plan.directory}/{data}/{name}"
            for plan in LANDSCAPES.values()
            for data in plan.data
        ]

    return files


# -- tables and figures (rules/figures.smk) ---------------------------------------------------------
DATASET_MODELS = sorted({(run.dataset, run.model) for run in RUNS})
CURVES_FIGURE = results_path("figures/curves/{dataset}/{model}/{metric}")
ACCURACY_FIGURE = results_path("figures/accuracy/{dataset}/{model}/{kind}")
COST_FIGURE = results_path("figures/cost/{dataset}/{model}/cost")


def final_table_inputs(wildcards):
    inputs = {"rounds": results_path("tables/rounds.csv")}
    if globals().get("INTERPOLATION_PAIRS"):
        inputs["barriers"] = results_path("tables/barriers.csv")
        inputs["interpolation"] = results_path("tables/interpolation.csv")
    if globals().get("HESSIAN_JOBS"):
        inputs["hessian"] = results_path("tables/hessian.csv")
        inputs["hessian_clients"] = results_path("tables/hessian_clients.csv")
    return inputs


def figure_outputs(prefix, caption, category, subcategory=None, labels=None):
    """PNG (in the report), PDF and CSV outputs of a figure rule."""
    return {
        "png": report(
            f"{prefix}.png",
            caption=f"../workflow/report/{caption}",
            category=category,
            subcategory=subcategory,
            labels=labels,
        ),
        "pdf": f"{prefix}.pdf",
        "csv": f"{prefix}.csv",
    }
