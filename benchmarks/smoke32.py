"""The data of `make smoke32`: the synthetic CIFAR-10-shaped set (fedscape.data.synthetic) in the config's data_dir.

    python benchmarks/smoke32.py                        # data for config/smoke32.yaml, when not already there
    python benchmarks/smoke32.py --configfile my.yaml   # for another config reading cifar10 from its data_dir

Run it where Snakemake runs (the repository root): a relative data_dir is taken from there, as Snakemake takes it.

It writes only when the data_dir does not already hold this very data set (same sizes and seed), then `make smoke32`
runs the workflow on config/smoke32.yaml: every stage of the default workflow on resnet20 and 32x32 images. The
data is not CIFAR-10: shapes and costs are CIFAR's, accuracies and landscapes are not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from fedscape.data.synthetic import synthetic_cifar10_written, write_synthetic_cifar10

# Sizes: small enough for the CPU run to stay well under 15 minutes, since the analyses evaluate the whole client
# data and test set at every landscape point, layer mix and interpolation point (these two numbers set most of the
# run's time); large enough for the smoke config's 10 clients to hold 32 images on average after the proxy split
# (80 images), alpha=0.1 still giving each at least partition.min_size, and for the test accuracy to move in 1%.
N_TRAIN = 400
N_TEST = 100
SEED = 0  # any seed gives a data set of the same difficulty; 0 as the config's other seeds


def data_dir(configfile: Path) -> Path:
    """`datasets.cifar10.data_dir` of the config (a relative one from the working directory, as Snakemake reads it)."""
    config = yaml.safe_load(configfile.read_text())
    try:
        path = config["datasets"]["cifar10"]["data_dir"]
    except (KeyError, TypeError):
        path = None
    if not path:
        raise SystemExit(f"{configfile}: no datasets.cifar10.data_dir to write the synthetic data into")
    return Path(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=Path("config", "smoke32.yaml"),
                        help="config whose datasets.cifar10.data_dir receives the data (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help="training images (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=N_TEST, help="test images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of templates and images (default: %(default)s)")
    args = parser.parse_args()
    root = data_dir(args.configfile)
    what = f"synthetic CIFAR-10 ({args.n_train} train, {args.n_test} test images, seed {args.seed})"
    if synthetic_cifar10_written(root, args.n_train, args.n_test, args.seed):
        print(f"{what} already in {root}")
        return 0
    write_synthetic_cifar10(root, args.n_train, args.n_test, args.seed)
    print(f"wrote {what} to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
