"""Every GPU measurement the project still owes, in a few calls of at most 10 minutes each.

A GPU machine is lent now and then, for 15 minutes of device time, and goes back after half a minute idle; its
`python3` has torch but not Snakemake (`.gpu/setup.sh`, a copy of `../shared/gpu/setup.sh`, adds it). So the checks
and benchmarks that need a card are listed here once, grouped into parts that each fit one call, and each writes its
output to a file of its own under `--out` (a part that runs past its time limit keeps what it wrote; a call brings
back at most 8 files, so a call's parts write fewer). Single commands may be named instead of parts, and `--budget`
cuts the last ones short so that a call ends in time. It counts from this script's own start, after setup.sh, and the
run tool may cut a call shorter than the timeout_s it was given (to the device time left: status's budget_left_s), so
pass the call's limit less 40 s, `--budget <limit_s - 40>` (default: FEDSCAPE_GPU_BUDGET, else CALL_SECONDS):

    cp -r ../shared/gpu .gpu    # once, in the checkout (git-ignored); each call carries it (run tool: carry [".gpu"])
    python benchmarks/gpu_session.py --list      # the device calls, most wanted first (CALLS), and what each part runs
    source .gpu/setup.sh && python3 benchmarks/gpu_session.py --budget <limit_s - 40> --out $OUT <one call's parts>
    python benchmarks/gpu_session.py --dry-run                  # each command's arguments read by its own parser

`--dry-run` runs nothing: each command's script reads its arguments with its own argparse parser and stops there
(pytest's with pytest's, `python -c` code is compiled), so that a flag a script no longer takes, or a value it refuses,
shows here before it costs a device call.

Record what they print in benchmarks/README.md with the GPU's name and the torch version (each script prints both).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import runpy
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
    # with recomputed batch-norm statistics, the server step's column-blocked sums against one product on the card;
    # a train job's and a Hessian job's records and numbers on the card against the CPU's (and the Hessian job's
    # resume there), APGD's sharpness and the tied GPT's stacked AdamW in float64 (tests/unit/test_on_a_card.py).
    # First, in seconds, whether the machine's environment is whole (setup.sh's packages, a visible card): a missing
    # one would otherwise show only as the tests' collection errors or every CUDA test skipped. A test file that fails
    # to collect stops neither the others nor the call.
    "tests": [("environment", [PY, "-c", "import attrs, jsonschema, snakemake.iocontainers, torch; "
                                         "assert torch.cuda.is_available()"], 20),
              ("cuda_tests", [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              "--continue-on-collection-errors", "-k", "cuda or gpu",
                              "tests/unit/test_capture.py", "tests/unit/test_precision.py",
                              "tests/unit/test_vectorized.py", "tests/unit/test_vectorized_bn.py",
                              "tests/unit/test_data.py", "tests/unit/test_resources.py",
                              "tests/unit/test_moon_reference_mode.py", "tests/unit/test_alignment.py",
                              "tests/unit/test_capture_stacked.py", "tests/unit/test_stored_images.py",
                              "tests/unit/test_vectorized_moon.py", "tests/unit/test_vectorized_gradaug.py",
                              "tests/unit/test_bn_stats.py", "tests/unit/test_aggregate_blocks.py",
                              "tests/unit/test_on_a_card.py"], 150)],
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
    # The exact diagonal's two forms (`maths.DIAGONAL_FORMS`) on a card, timed on a part of the batch after the HVP
    # modes (`per_sample` is the CUDA default, `maths.default_diagonal_form`: 0.63x `per_class` on resnet20-BN).
    # FedAlign's bottleneck ResNet56 at 100 classes first, not yet measured (in 120 s on an H200 it had printed
    # nothing: the diagonal was timed before the products were printed), then resnet20 with batch norm, with its top
    # eigenvalues against float64
    # (goal 1e-4). The HVP modes were measured on an H200 (forward-over-reverse 0.82x the cached graph on resnet20,
    # 1.21x on meta.yaml's resnet18 with group norm: the cached graph stays the default, `maths.default_hvp_mode`).
    "hvp": [("hvp_resnet56_bottleneck", [PY, "benchmarks/bench_hvp.py", "--model", "resnet56_bottleneck", "--norm",
                                         "batch", "--dataset", "cifar100", "--samples", "512", "--repeats", "5",
                                         "--exact-samples", "64", "--eigen", "0", "--device", "cuda"], 240),
            ("hvp_resnet20_bn", [PY, "benchmarks/bench_hvp.py", "--model", "resnet20", "--norm", "batch",
                                 "--dataset", "cifar10", "--samples", "1024", "--exact-samples", "256", "--device",
                                 "cuda"], 200)],
    # FedAlign and its baselines vectorised on its bottleneck ResNet56 (batch 64, 16 clients, MOON on its projection
    # head, as in fedalign.yaml): their stacked rounds against one client after another. GradAug is not among them:
    # on an H200 its round took 16.4 s stacked, 14.0 s one client after another, and `client_parallel: auto` now
    # trains it one client after another on a GPU, so no run takes its stacked step.
    "algorithms": [(f"vectorized_resnet56_{algorithm}",
                    [PY, "benchmarks/bench_vectorized.py", "--device", "cuda", "--model", "resnet56_bottleneck",
                     "--norm", "batch", "--batch-size", "64", "--samples-per-client", "640", "--local-epochs", "1",
                     "--alpha", "iid", "--clients", "16", "--algorithm", algorithm, "--hparams", hparams,
                     "--repeats", "2"], 65)
                   for algorithm, hparams in (("fedalign", "{}"), ("stochdepth", "{}"), ("mixup", "{}"),
                                              ("moon", "{head: projection}"))],
    # The device memory of fedalign.yaml's largest stack, 64 clients of batch 64 on its bottleneck ResNet56 (Table 4's
    # C = 64 runs; client_chunk_size 0 stacks every sampled client): one step each, for the peak of a round (on a
    # CPU, 561 MB of saved activations per client's full pass, about 35 GiB for 64).
    "memory": [(f"memory_resnet56_{algorithm}",
                [PY, "benchmarks/bench_vectorized.py", "--device", "cuda", "--model", "resnet56_bottleneck", "--norm",
                 "batch", "--batch-size", "64", "--samples-per-client", "64", "--local-epochs", "1", "--alpha", "iid",
                 "--clients", "64", "--algorithm", algorithm, "--repeats", "1", "--warmup", "0"], limit)
               # on an H200: 25 s and 33 s (GradAug, which its runs train sequentially on a GPU, is not stacked)
               for algorithm, limit in (("fedavg", 40), ("fedalign", 50))],
}
# The parts as device calls, most wanted first: each call's limits add up to less than a call's 600 s, with room for
# setup.sh. A session's 15 minutes of device time hold about one full call and a short one after the machine's start.
# What is still unmeasured comes first: the CUDA tests (the capture recovery; the paths no card ran) and
# fedalign.yaml's hours; then meta.yaml's GradAug and FedAlign stacked on group norm and evaluation against a plain
# loop (`steps`), the 64-client memory; the bottleneck ResNet56's diagonal forms; FedAlign's algorithms stacked and
# resnet56-BN on Dirichlet shards. The goals met on a card at 9e07a40 come last (benchmarks/README.md), but for
# surface evaluation, which fills the second call.
CALLS = (("tests", "steps_fedalign"), ("steps", "memory", "surface"), ("hvp",), ("algorithms", "resnet56"),
         ("vectorized", "conv"))


def call_command(parts: tuple[str, ...]) -> str:
    """The device call's command line that runs `parts` (one of CALLS) on a card."""
    return ("source .gpu/setup.sh && python3 benchmarks/gpu_session.py --budget <limit_s - 40> --out $OUT "
            + " ".join(parts))


CALL_SECONDS = 570  # `--budget`'s default where FEDSCAPE_GPU_BUDGET is unset: a call given all of its 600 s
CALL_FILES = 8  # what a device call brings back from $OUT: one file per command, so at most this many per call


def run_commands(commands: list[tuple[str, list[str], int]], out: Path, deadline: float) -> int:
    """Run commands in order, each output in out/<name>.txt, each cut at its own limit or at the deadline (a
    time.perf_counter() value), whichever comes first; the worst exit status. A command is skipped (exit 124) where
    less is left than its own limit and 10 s, so that a call's last seconds go to bringing back what the others
    wrote."""
    worst = 0
    for name, argv, own_limit in commands:
        left = deadline - time.perf_counter()
        limit = int(min(own_limit, left))
        if left < min(own_limit, 10):
            print(f"{name}: skipped, {left:.0f} s left of the call's budget", flush=True)
            worst = max(worst, 124)
            continue
        part = next((p for p, cs in PARTS.items() if any(c[0] == name for c in cs)), "command")
        path = out / f"{name}.txt"
        print(f"[{part}] {name}: {' '.join(argv[1:])} (limit {limit} s) -> {path}", flush=True)
        t0 = time.perf_counter()
        with path.open("w") as f:
            f.write(f"$ {' '.join(argv[1:])}\n")
            f.flush()
            try:
                # unbuffered: a command cut at its limit is killed, and what it printed must be in its file
                code = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
            except subprocess.TimeoutExpired:
                code = 124
                f.write(f"\n(stopped after its limit of {limit} s)\n")
        print(f"[{part}] {name}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
        worst = max(worst, code)
    return worst


class _Parsed(Exception):
    """Raised where a script's parser has read its arguments, in place of the script going on; args: the arguments
    the parser did not recognise."""


# pytest's own reading of its arguments (plugins, ini and initial conftests included), no collection; its usage error
PYTEST_PARSE = """import sys
from _pytest.config import UsageError, get_config
sys.argv[0] = "pytest"  # its errors' name for itself
try:
    get_config(sys.argv[1:]).parse(sys.argv[1:], addopts=False)
except UsageError as error:  # its usage, "<prog>: error: <why>", then the ini file and root folder
    lines = str(error).strip().splitlines()
    sys.exit(next((line.strip() for line in lines if "error:" in line), lines[-1]))
"""


def check_arguments(argv: list[str]) -> str | None:
    """Whether a command's own arguments are what its script takes, without running it: None, else the error its
    parser gives (`python -c` code: whether it compiles; `-m pytest`: pytest's parser, and its test files exist)."""
    if argv[1] == "-c":
        try:
            compile(argv[2], "-c", "exec")
        except SyntaxError as error:
            return f"SyntaxError: {error}"
        return None
    if argv[1:3] == ["-m", "pytest"]:
        missing = [a for a in argv[3:] if a.startswith("tests/") and not (ROOT / a.split("::")[0]).exists()]
        if missing:
            return f"no test file {missing[0]}"
        proc = subprocess.run([PY, "-c", PYTEST_PARSE, *argv[3:]], cwd=ROOT, capture_output=True, text=True)
        return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return script_arguments(ROOT / argv[1], argv[2:])


def script_arguments(script: Path, args: list[str]) -> str | None:
    """Run `script` as `python script args...` would, up to its parser's reading of `args` (argparse's
    parse_known_args, which parse_args calls too, stops it there): None, else the parser's error."""
    if not script.is_file():
        return f"no script {script.relative_to(ROOT) if script.is_relative_to(ROOT) else script}"
    parse_known_args = argparse.ArgumentParser.parse_known_args

    def parse_only(parser: argparse.ArgumentParser, *a, **kw):
        raise _Parsed(parse_known_args(parser, *a, **kw)[1])

    saved = sys.argv, list(sys.path), os.getcwd()
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))  # as for `python script`: its own folder's modules
    os.chdir(ROOT)
    errors = io.StringIO()
    argparse.ArgumentParser.parse_known_args = parse_only
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(script), run_name="__main__")
    except _Parsed as parsed:
        # what parse_args would refuse, in its words
        return f"{script.name}: error: unrecognized arguments: {' '.join(parsed.args[0])}" if parsed.args[0] else None
    except SystemExit as stop:  # argparse's error: usage, then "<prog>: error: <why>"
        return (errors.getvalue().strip().splitlines() or [f"exit {stop.code}"])[-1]
    except Exception as error:  # a script that fails before its parser reads its arguments: that command's error
        return f"{type(error).__name__}: {error}"
    finally:
        argparse.ArgumentParser.parse_known_args = parse_known_args
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[2])
    return "it ran to its end without reading its arguments"


def dry_run(commands: list[tuple[str, list[str], int]]) -> int:
    """Print each command's name and ok, or the error of its arguments (`check_arguments`); 1 where any fails."""
    worst = 0
    for name, argv, _ in commands:
        error = check_arguments(argv)
        print(f"{name}: {'ok' if error is None else error}", flush=True)
        worst = max(worst, int(error is not None))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help=f"parts to run, in order: {', '.join(PARTS)}; or single commands "
                        "by name (--list)")
    parser.add_argument("--out", type=Path, help="folder of the outputs (created)")
    parser.add_argument("--list", action="store_true", help="print each part's commands and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="run nothing: read each command's arguments (of the parts named, else of all) with its "
                             "script's own parser, print ok or the parser's error, exit 1 on any error")
    # (argparse reads a default given as text as it reads the flag: an unreadable FEDSCAPE_GPU_BUDGET is its error)
    parser.add_argument("--budget", type=float, default=os.environ.get("FEDSCAPE_GPU_BUDGET", CALL_SECONDS),
                        help="seconds for all the commands together, from this script's start; a command is cut at "
                             "what is left of them. Give the device call's limit less 40 s (setup.sh, bringing the "
                             f"files back). Default: FEDSCAPE_GPU_BUDGET, else {CALL_SECONDS}")
    args = parser.parse_args()
    if args.list or not (args.parts or args.dry_run):
        for i, call in enumerate(CALLS, 1):
            print(f"call {i}: {call_command(call)}")
        for part, commands in PARTS.items():
            for name, argv, limit in commands:
                print(f"{part}: {name}: {' '.join(argv[1:])}  (limit {limit} s)")
        return
    by_name = {c[0]: c for commands in PARTS.values() for c in commands}
    unknown = [p for p in args.parts if p not in PARTS and p not in by_name]
    if unknown:
        parser.error(f"unknown part or command {unknown[0]!r}; valid parts: {', '.join(PARTS)}; commands: --list")
    commands = [c for p in args.parts or PARTS for c in (PARTS[p] if p in PARTS else [by_name[p]])]
    if args.dry_run:
        sys.exit(dry_run(commands))
    if args.out is None:
        parser.error("--out is needed to run parts")
    args.out.mkdir(parents=True, exist_ok=True)
    if len(commands) > CALL_FILES:
        print(f"warning: {len(commands)} outputs, a device call brings back {CALL_FILES}", flush=True)
    sys.exit(run_commands(commands, args.out, time.perf_counter() + args.budget))


if __name__ == "__main__":
    main()
