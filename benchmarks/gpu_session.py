"""Every GPU measurement the project still owes, in a few calls of at most 10 minutes each.

A GPU machine is lent now and then, for 15 minutes of device time, and goes back after half a minute idle; its
`python3` has torch but not Snakemake (`.gpu/setup.sh`, a copy of `../shared/gpu/setup.sh`, adds it). So the checks
and benchmarks that need a card are listed here once, grouped into parts that each fit one call, and each writes its
output to a file of its own under `--out` (a part that runs past its time limit keeps what it wrote; a call brings
back at most 8 files, so a call's parts write fewer):

    source .gpu/setup.sh && python3 benchmarks/gpu_session.py --out $OUT tests steps resnet56   # one call (CALLS)
    source .gpu/setup.sh && python3 benchmarks/gpu_session.py --out $OUT algorithms surface
    source .gpu/setup.sh && python3 benchmarks/gpu_session.py --out $OUT steps_fedalign vectorized
    source .gpu/setup.sh && python3 benchmarks/gpu_session.py --out $OUT hvp memory
    source .gpu/setup.sh && python3 benchmarks/gpu_session.py --out $OUT conv
    python benchmarks/gpu_session.py --list                                                     # what each part runs

Record what they print in benchmarks/README.md with the GPU's name and the torch version (each script prints both).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable



def bn_rounds(model: str, *extra: str) -> list[str]:
    """bench_vectorized's rounds of `model` with batch norm at M = 50 on the card."""
    return [PY, "benchmarks/bench_vectorized.py", "--device", "cuda", "--model", model, "--norm", "batch", "--clients",
            "50", *extra]


# part -> [(name, argv, time limit in seconds)]: argv[1] is a script under the repository root, run from the root.
PARTS: dict[str, list[tuple[str, list[str], int]]] = {
    # The CUDA tests: captured steps equal to eager ones, fp32 CUDA rounds against the CPU, vectorised batch norm,
    # crop-flip on the device, the precision switches, the cards' claims by UUID, a card's UUID in a job's record,
    # MOON's eval-mode references with batch norm, flat points on the card, stacked steps replayed from graphs, surfaces
    # with recomputed batch-norm statistics.
    "tests": [("cuda_tests", [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda or gpu",
                              "tests/unit/test_capture.py", "tests/unit/test_precision.py",
                              "tests/unit/test_vectorized.py", "tests/unit/test_vectorized_bn.py",
                              "tests/unit/test_data.py", "tests/unit/test_resources.py",
                              "tests/unit/test_moon_reference_mode.py", "tests/unit/test_alignment.py",
                              "tests/unit/test_capture_stacked.py", "tests/unit/test_stored_images.py",
                              "tests/unit/test_vectorized_moon.py", "tests/unit/test_vectorized_gradaug.py",
                              "tests/unit/test_bn_stats.py"], 90)],
    # The papers' step costs (plain; sequential, captured and vectorised at each run's own algorithm's local step)
    # and their projected hours. fedalign.yaml has the most local steps (23 of its bottleneck ResNet56: FedAlign at
    # four mu and four widths, GradAug at four sub-network counts...), measured at fewer steps to fit its own call.
    "steps": [("bench_gpu", [PY, "benchmarks/bench_gpu.py", "--device", "cuda", "--configs", "pilot", "meta"], 220)],
    "steps_fedalign": [("bench_gpu_fedalign", [PY, "benchmarks/bench_gpu.py", "--device", "cuda", "--configs",
                                               "fedalign", "--steps", "10", "--repeats", "3"], 300)],
    # Vectorised rounds of the batch-norm ResNets against sequential ones (goal >= 10x at M=50). A Dirichlet split's
    # step shapes recur a few times a round, and are captured once met 8 times over the rounds so far: 9 untimed
    # rounds time a long run's steady state. iid shards of 64 make every step one shape, replayed from the first
    # round (fedscape.fl.capture.StackedStepGraphs). Then the forms of a stacked convolution, layer by layer.
    "vectorized": [("vectorized_resnet20_bn", bn_rounds("resnet20", "--warmup", "9", "--repeats", "3"), 90),
                   ("vectorized_resnet20_bn_iid", bn_rounds("resnet20", "--alpha", "iid", "--repeats", "3"), 60)],
    # resnet56 with batch norm (basic blocks, 56 layers) at the pilot's batch 16 and M = 50: 8.9x on iid shards on an
    # H200, short of 10x. A Dirichlet split's shapes each recur about once a round and are captured from the eighth
    # round on: 9 untimed rounds reach the steady state that 6 did not.
    "resnet56": [("vectorized_resnet56_bn_iid", bn_rounds("resnet56", "--alpha", "iid", "--repeats", "2"), 75),
                 ("vectorized_resnet56_bn", bn_rounds("resnet56", "--warmup", "9", "--repeats", "2"), 170)],
    # The forms of a stacked convolution, layer by layer, and the TFLOP/s each reaches: the pilot's resnet20 and
    # FedAlign's bottleneck ResNet56 (compute-bound at batch 64, where stacking gained 2.5-3.3x, not the goal's 10x;
    # `grouped_cf_bmm` says whether its 1x1 convolutions, half its arithmetic, would gain as batched matrix products).
    "conv": [("stacked_conv_resnet20", [PY, "benchmarks/bench_stacked_conv.py", "--device", "cuda"], 60),
             ("stacked_conv_resnet56", [PY, "benchmarks/bench_stacked_conv.py", "--device", "cuda", "--model",
                                        "resnet56_bottleneck"], 90),
             # the same whole: FedAlign's vectorised rounds with the stacked 1x1 convolutions in both forms
             ("vectorized_resnet56_pointwise", [PY, "benchmarks/bench_vectorized.py", "--device", "cuda", "--model",
                                                "resnet56_bottleneck", "--norm", "batch", "--batch-size", "64",
                                                "--samples-per-client", "640", "--local-epochs", "1", "--alpha", "iid",
                                                "--clients", "16", "--pointwise", "grouped", "bmm", "--repeats", "2"],
              90)],
    # Surface evaluation against a plain eval loop (goal >= 0.9x its images/s in fp32).
    "surface": [("surface_resnet20_bn", [PY, "benchmarks/bench_surface.py", "--model", "resnet20", "--norm", "batch",
                                         "--samples", "8000", "--batch-size", "2048", "--device", "cuda"], 150)],
    # HVP against a gradient (goal <= 3x) in both modes, and the top eigenvalues against float64 (goal 1e-4).
    # Then the modes' times on the other papers' models (meta.yaml's resnet18 with group norm, fedalign.yaml's
    # bottleneck ResNet56): forward-over-reverse was 0.81-0.82x the cached product on resnet20 on an H200, and becomes
    # the CUDA default (`maths.default_hvp_mode`) only if it wins on these too. Each also times the exact diagonal's
    # two forms (`maths.DIAGONAL_FORMS`) on a part of the batch: `per_sample` becomes the CUDA default
    # (`maths.default_diagonal_form`) if it wins on these.
    "hvp": [("hvp_resnet20_bn", [PY, "benchmarks/bench_hvp.py", "--model", "resnet20", "--norm", "batch",
                                 "--dataset", "cifar10", "--samples", "1024", "--exact-samples", "256", "--device",
                                 "cuda"], 200),
            ("hvp_resnet18_gn", [PY, "benchmarks/bench_hvp.py", "--model", "resnet18", "--norm", "group",
                                 "--dataset", "cifar10", "--samples", "512", "--repeats", "5", "--eigen", "0",
                                 "--device", "cuda"], 120),
            ("hvp_resnet56_bottleneck", [PY, "benchmarks/bench_hvp.py", "--model", "resnet56_bottleneck", "--norm",
                                         "batch", "--dataset", "cifar100", "--samples", "512", "--repeats", "5",
                                         "--exact-samples", "64", "--eigen", "0", "--device", "cuda"], 120)],
    # FedAlign and its baselines vectorised on its bottleneck ResNet56 (batch 64, 16 clients, MOON on its projection
    # head, as in fedalign.yaml): their stacked rounds against one client after another. GradAug's stacked step
    # runs each sub-network pass at its widest client's width (narrower clients' cut channels held at 0), and is never
    # captured: whether it beats one client after another at this compute-bound size is what its line measures.
    "algorithms": [(f"vectorized_resnet56_{algorithm}",
                    [PY, "benchmarks/bench_vectorized.py", "--device", "cuda", "--model", "resnet56_bottleneck",
                     "--norm", "batch", "--batch-size", "64", "--samples-per-client", "640", "--local-epochs", "1",
                     "--alpha", "iid", "--clients", "16", "--algorithm", algorithm, "--hparams", hparams,
                     "--repeats", "2"], 65)
                   for algorithm, hparams in (("fedalign", "{}"), ("stochdepth", "{}"), ("mixup", "{}"),
                                              ("moon", "{head: projection}"), ("gradaug", "{}"))],
    # The device memory of fedalign.yaml's largest stack, 64 clients of batch 64 on its bottleneck ResNet56 (Table 4's
    # C = 64 runs; client_chunk_size 0 stacks every sampled client): one step each, for the peak of a round (on a
    # CPU, 561 MB of saved activations per client's full pass, about 35 GiB for 64).
    "memory": [(f"memory_resnet56_{algorithm}",
                [PY, "benchmarks/bench_vectorized.py", "--device", "cuda", "--model", "resnet56_bottleneck", "--norm",
                 "batch", "--batch-size", "64", "--samples-per-client", "64", "--local-epochs", "1", "--alpha", "iid",
                 "--clients", "64", "--algorithm", algorithm, "--repeats", "1", "--warmup", "0"], 35)
               for algorithm in ("fedavg", "fedalign", "gradaug")],
}
# The parts as device calls, most wanted first: each call's limits add up to less than a call's 600 s, with room for
# setup.sh. A session's 15 minutes of device time hold about two calls as they usually run (well under their limits).
# The goals already met on a card come after what is new: surface evaluation fills the second call, resnet20's
# vectorised rounds the third.
CALLS = (("tests", "steps", "resnet56"), ("algorithms", "surface"), ("steps_fedalign", "vectorized"), ("hvp", "memory"),
         ("conv",))
CALL_SECONDS = 570
CALL_FILES = 8  # what a device call brings back from $OUT: one file per command, so at most this many per call


def run_part(part: str, out: Path) -> int:
    """Run a part's commands, each output in out/<name>.txt; the worst exit status."""
    worst = 0
    for name, argv, limit in PARTS[part]:
        path = out / f"{name}.txt"
        print(f"[{part}] {name}: {' '.join(argv[1:])} (limit {limit} s) -> {path}", flush=True)
        t0 = time.perf_counter()
        with path.open("w") as f:
            f.write(f"$ {' '.join(argv[1:])}\n")
            f.flush()
            try:
                code = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
            except subprocess.TimeoutExpired:
                code = 124
                f.write(f"\n(stopped after its limit of {limit} s)\n")
        print(f"[{part}] {name}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
        worst = max(worst, code)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help=f"parts to run, in order: {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, help="folder of the outputs (created)")
    parser.add_argument("--list", action="store_true", help="print each part's commands and exit")
    args = parser.parse_args()
    if args.list or not args.parts:
        for part, commands in PARTS.items():
            for name, argv, limit in commands:
                print(f"{part}: {name}: {' '.join(argv[1:])}  (limit {limit} s)")
        return
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}; valid: {', '.join(PARTS)}")
    if args.out is None:
        parser.error("--out is needed to run parts")
    args.out.mkdir(parents=True, exist_ok=True)
    sys.exit(max(run_part(part, args.out) for part in args.parts))


if __name__ == "__main__":
    main()
