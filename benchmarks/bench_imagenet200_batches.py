"""ImageNet-200's training set on the device: its bytes held, and the time to make one training batch.

Prints the device bytes of FedAlign's ImageNet-200 (100,000 training and 10,000 test images), computed, not
allocated: as float32 224x224 (before: normalised once), as uint8 224x224 (`StoredImages`, augment none or
crop_flip) and with the training images as uint8 256x256 (augment resized_crop, the crops drawn from them). Then
times, on a pool of ``--pool`` random images, the making of ``--batches`` training batches of ``--batch-size`` rows
at random: indexing the float32 pool plus crop_flip (before), the uint8 store's per-batch normalisation plus
crop_flip, and resized_crop (the FedAlign code's RandomResizedCrop + ColorJitter + flip, then the normalisation),
each the median over the batches after one warm-up batch (CUDA: synchronised).

    python benchmarks/bench_imagenet200_batches.py --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import cpu_model

from fedscape.data import imagenet200
from fedscape.data.datasets import StoredImages, augment_batch, augmented_batch

TRAIN, TEST = imagenet200.TRAIN_PER_CLASS * len(imagenet200.CLASSES), 10_000
SIZE, STORED = imagenet200.IMAGE_SIZE, imagenet200.RESIZE


def device_bytes() -> list[tuple[str, int, int]]:
    """(layout, training bytes, test bytes) of the three ways of holding ImageNet-200."""
    return [("float32 224x224 (before)", TRAIN * 3 * SIZE**2 * 4, TEST * 3 * SIZE**2 * 4),
            ("uint8 224x224 (augment none, crop_flip)", TRAIN * 3 * SIZE**2, TEST * 3 * SIZE**2),
            ("uint8 256x256 train (augment resized_crop)", TRAIN * 3 * STORED**2, TEST * 3 * SIZE**2)]


def _timed(make, batches: list[torch.Tensor], device: torch.device) -> float:
    """Median milliseconds of make(index) over the batches (the first one a warm-up)."""
    times = []
    for k, index in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        make(index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if k:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pool", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)  # the FedAlign code's batch size
    parser.add_argument("--batches", type=int, default=21)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"{name}; torch {torch.__version__}; {torch.get_num_threads()} threads; batch {args.batch_size}; "
          f"pool {args.pool}")
    for layout, train, test in device_bytes():
        print(f"  {layout:<44} train {train / 1e9:6.2f} GB  test {test / 1e9:5.2f} GB  "
              f"total {(train + test) / 1e9:6.2f} GB ({(train + test) / 2**30:6.2f} GiB)")

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (args.pool, 3, STORED, STORED), generator=g, dtype=torch.uint8).to(device)
    mean, std = torch.tensor(imagenet200.MEAN), torch.tensor(imagenet200.STD)
    small = StoredImages(pixels[..., 16:-16, 16:-16].contiguous(), mean, std)
    large = StoredImages(pixels, mean, std, SIZE)
    pool = small.materialise()
    batches = [torch.randint(0, args.pool, (args.batch_size,), generator=g).to(device)
               for _ in range(args.batches + 1)]
    aug = torch.Generator().manual_seed(1)
    rows = [("float32 pool + crop_flip (before)", lambda b: augment_batch(pool[b], "crop_flip", aug)),
            ("uint8 store: normalise + crop_flip", lambda b: augmented_batch(small, b, "crop_flip", aug)),
            ("uint8 store: normalise only (evaluation)", lambda b: small[b]),
            ("uint8 256 store: resized_crop", lambda b: augmented_batch(large, b, "resized_crop", aug))]
    for label, make in rows:
        ms = _timed(make, batches, device)
        print(f"  {label:<44} {ms:8.2f} ms per batch  ({ms / args.batch_size:6.3f} ms per image)")


if __name__ == "__main__":
    main()
