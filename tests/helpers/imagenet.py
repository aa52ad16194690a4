"""Write a small ImageNet in the folder layout fedscape.data.imagenet200 reads: ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG`` (the validation images sorted into class folders, as valprep.sh leaves them); and a small
down-sampled ImageNet in the published .npz files fedscape.data.imagenet32 reads (`write_imagenet32`).

Every one of ImageNet-200's 200 class folders exists (a real copy has them all; the reader checks), most with one
image; a few classes hold several images of different sizes and orientations, and two ImageNet-1k classes that are
not among the 200 sit beside them (the reader must skip them). The JPEGs are random noise, encoded once per shape
and copied, so writing the ~500 files takes a fraction of a second.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fedscape.data.imagenet200 import WNIDS

# ImageNet-1k classes that are not among the 200 (tench, goldfish)
OTHER_WNIDS = ("n01440764", "n01443537")
# (width, height) of the images: landscape, portrait, square 256 (no resize), small (upscaled), odd sizes
SHAPES = ((300, 260), (260, 400), (256, 256), (120, 90), (333, 257))


def jpeg_bytes(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    """A random image of that size encoded as JPEG (``mode`` L: grey scale, which the loader converts to RGB)."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    # smooth noise (a low-resolution field upscaled): JPEG keeps it close and the resize has structure to filter
    small = rng.integers(0, 256, size=(max(height // 16, 2), max(width // 16, 2), *shape[2:]), dtype=np.uint8)
    img = Image.fromarray(small, mode).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-20, 21, size=shape)
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8), mode)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_imagenet(root: Path, rich: dict[str, int] | None = None, val_per_class: int = 1,
                   others: bool = True) -> Path:
    """Write ``root/train`` and ``root/val`` and return ``root`` (a data_dir).

    ``rich``: the training images of a few classes (default: the first three drawn wnids with 3, 4 and 5 images);
    every other class gets one. Images cycle through `SHAPES`; one is grey scale (as a few ImageNet JPEGs are).
    ``others``: also write two classes outside the 200.
    """
    rich = {WNIDS[0]: 3, WNIDS[1]: 4, WNIDS[2]: 5} if rich is None else rich
    blobs = [jpeg_bytes(w, h, seed=i) for i, (w, h) in enumerate(SHAPES)] + [jpeg_bytes(280, 240, 99, "L")]
    for split in ("train", "val"):
        for c, wnid in enumerate(WNIDS + (OTHER_WNIDS if others else ())):
            folder = Path(root) / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            n = rich.get(wnid, 1) if split == "train" else val_per_class
            for i in range(n):
                k = c * 8 + i  # the same file for a class whatever the other classes hold
                name = f"{wnid}_{i + 1}.JPEG" if split == "train" else f"ILSVRC2012_val_{k + 1:08d}.JPEG"
                (folder / name).write_bytes(blobs[(k + (split == "val")) % len(blobs)])
    return Path(root)


def flatten_val(root: Path, solution_dir: Path | None = None) -> Path:
    """Move ``root/val/<wnid>/*`` into ``root/val/`` itself, as ImageNet-1k ships its validation images, and write
    their labels as its LOC_val_solution.csv does (ImageId,PredictionString: the wnid, then a box, per object; two
    objects for every third image) into ``solution_dir`` (default: ``root``). Returns the CSV's path."""
    lines = ["ImageId,PredictionString"]
    for folder in sorted((Path(root) / "val").iterdir()):
        for k, image in enumerate(sorted(folder.iterdir())):
            image.rename(Path(root) / "val" / image.name)
            objects = f"{folder.name} 10 20 200 180 " * (2 if k % 3 == 2 else 1)
            lines.append(f"{image.stem},{objects}")
        folder.rmdir()
    path = Path(solution_dir or root) / "LOC_val_solution.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # not in file order: the reader sorts
    return path


def write_imagenet32(directory: Path, sizes: tuple[int, ...] = (7, 5, 9), compressed: bool = False,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Files train_data_batch_<i>.npz as published (`data` uint8 [n, 3072], `labels` 1..1000, `mean`), one per
    size; the images [N, 3, 32, 32] and labels they hold."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    data, labels = [], []
    for i, n in enumerate(sizes):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(1, 1001, n).tolist()  # the published files hold a list of ints
        save(directory / f"train_data_batch_{i + 1}.npz", data=x, labels=y, mean=x.mean(0))
        data.append(x)
        labels.append(np.asarray(y))
    return np.concatenate(data).reshape(-1, 3, 32, 32), np.concatenate(labels)
