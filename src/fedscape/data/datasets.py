"""Datasets (CIFAR-10/100, scikit-learn digits, LEAF's FEMNIST and Shakespeare, ImageNet-200) as in-memory tensors,
plus augmentation.

`fedscape.data.sources` reads the files and splits them (torch-free); here a source becomes a
:class:`Dataset`. Images become float32 ``[N, C, H, W]``: digits and FEMNIST standardised with the
train part's mean and std, CIFAR and ImageNet-200 scaled to [0, 1] and normalised per channel with
their published statistics. A dataset declared ``stored: uint8`` (`fedscape.data.specs.DatasetInfo`; ImageNet-200,
whose float32 training pool at 224x224 is 60 GB) keeps its decoded pixels instead, a `StoredImages` that normalises
the rows each batch reads on their device: the same float32 numbers at a quarter of the memory. ImageNet-200's
images are decoded from disk in chunks, so building it never holds a second copy of the pool. Text (Shakespeare)
becomes int64 token ids ``[N, T]`` with int64 targets ``[N]`` (the id of the next character), so models give logits
``[N, vocabulary]`` and the loss is unchanged; with ``targets="every"`` the targets are ``[N, T]``, the next
character at every position (`next_token_targets`, a sequence task of `fedscape.models.loss`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedscape.core.names import unknown_name_error
from fedscape.data.sources import Source, load_source, normalisation, source_from_options
from fedscape.data.specs import (
    AUGMENTATIONS,
    COLOR_JITTER,
    CROP_PADDING,
    DATASETS,
    RESIZED_CROP_RATIO,
    RESIZED_CROP_SCALE,
    STORED_IMAGE_AUGMENTATIONS,
    TARGETS,
    resolved_targets,
)

# Grey-scale datasets without published statistics: standardised with their train part's mean and std.
_STANDARDISED = ("digits", "femnist")
_DECODE_CHUNK = 1024  # images normalised at once (147 MB of uint8 at 224x224, where a source decodes when indexed)


def unit_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """float32 ``pixels / 255`` of uint8 pixels, by true division on every device: CUDA divides by a Python number
    as a multiplication by its float32 reciprocal, 1 ulp off for about half the byte values, so a batch made on a
    card would not hold the numbers of one made on the CPU. A 0-dim tensor on the pixels' device is divided by."""
    return pixels.to(torch.float32).div_(torch.full((), 255.0, device=pixels.device))


class StoredImages:
    """Images held as their decoded uint8 pixels ``[N, C, H, W]`` and handed out as the float32 tensors they stand
    for: indexing gives ``(pixels / 255 - mean) / std`` per channel, computed on the pixels' device for the rows
    asked for, with the same float32 operations in the same order as a float pool normalised once
    (`from_source`), so every batch is bitwise the rows of that pool at a quarter of its memory.

    It stands in for an image tensor wherever the stages read one: ``x[index]`` (a batch), ``len(x)``, ``x.shape``,
    ``x.device``, ``x.dtype`` (float32: what a batch is) and ``x.to(device)``. Selecting a large subset (a
    client's shard, the union) goes through `take_rows`, which keeps the pixels (`rows`); `materialise` gives the
    whole float tensor (for a transform that rewrites the pool, such as feature_noise's).

    ``size``: the side of the images it stands for where the stored ones are larger (``resized_crop`` crops those,
    `resized_crop_batch`); indexing gives their centre ``size`` x ``size`` crop (torchvision's CenterCrop offsets),
    which for ImageNet-200's 256x256 training images is exactly the code's Resize(256) and CenterCrop(224).
    """

    def __init__(self, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size: int | None = None) -> None:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"StoredImages holds uint8 images [N, C, H, W], got {pixels.dtype} "
                             f"{list(pixels.shape)}")
        c, h, w = pixels.shape[1:]
        self.size = min(h, w) if size is None else int(size)
        if self.size > min(h, w):
            raise ValueError(f"StoredImages of {h}x{w} pixels cannot stand for {self.size}x{self.size} images")
        self.top, self.left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        self.cropped = (h, w) != (self.size, self.size)
        self.pixels = pixels
        self.mean = mean.to(device=pixels.device, dtype=torch.float32).reshape(c, 1, 1)  # [C, 1, 1]: any batch
        self.std = std.to(device=pixels.device, dtype=torch.float32).reshape(c, 1, 1)  # shape ends in C, H, W

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def __repr__(self) -> str:
        return f"StoredImages({list(self.pixels.shape)} uint8 on {self.device})"

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.pixels.shape[:2], self.size, self.size))

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def dim(self) -> int:
        return self.pixels.dim()

    @property
    def nbytes(self) -> int:
        """The bytes held (the pixels)."""
        return self.pixels.numel() * self.pixels.element_size()

    def is_floating_point(self) -> bool:
        return True  # what indexing gives

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """float32 ``(pixels / 255 - mean) / std`` of uint8 pixels ``[..., C, H, W]`` on this store's device."""
        return unit_pixels(pixels).sub_(self.mean).div_(self.std)

    def __getitem__(self, index) -> torch.Tensor:
        pixels = self.pixels[index]
        if self.cropped:
            pixels = pixels[..., self.top : self.top + self.size, self.left : self.left + self.size]
        return self.normalise(pixels)

    def rows(self, index: torch.Tensor) -> StoredImages:
        """The rows ``index`` as a store of their pixels (no float copy)."""
        return StoredImages(self.pixels[index], self.mean, self.std, self.size)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StoredImages:
        """On ``device`` (the pixels moved, once)."""
        if torch.device(device) == self.device:
            return self
        return StoredImages(self.pixels.to(device, non_blocking=non_blocking), self.mean, self.std, self.size)

    def materialise(self, chunk: int = _DECODE_CHUNK) -> torch.Tensor:
        """Every row as one float32 tensor (four times the memory), normalised chunk by chunk."""
        out = torch.empty(tuple(self.shape), dtype=torch.float32, device=self.device)
        for start in range(0, len(self), chunk):
            out[start : start + chunk] = self[start : start + chunk]
        return out


Images = torch.Tensor | StoredImages


def take_rows(x: Images, index: torch.Tensor) -> Images:
    """Rows ``index`` of a tensor, or of a `StoredImages` as a store (its pixels, not a float copy)."""
    return x.rows(index) if isinstance(x, StoredImages) else x[index]


def batch_slices(x: Images, y: torch.Tensor, batch_size: int,
                 memory_format: torch.memory_format | None = None) -> list[tuple[torch.Tensor, torch.Tensor]] | Batches:
    """The consecutive batches ``(x[s:s+b], y[s:s+b])`` of a data set that a loop passes over many times: views of a
    tensor (a list), or of a `StoredImages` each normalised when it is read (the float pool is never held).
    ``memory_format``: the inputs' layout (e.g. channels_last)."""
    if isinstance(x, StoredImages):
        return Batches(x, y, batch_size, memory_format)
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    return [(x[s : s + batch_size], y[s : s + batch_size]) for s in range(0, len(y), batch_size)]


class Batches:
    """`batch_slices` of a `StoredImages`: a sequence of (inputs, labels) whose inputs are normalised when read."""

    def __init__(self, x: StoredImages, y: torch.Tensor, batch_size: int,
                 memory_format: torch.memory_format | None) -> None:
        self.x, self.y, self.batch_size, self.memory_format = x, y, batch_size, memory_format
        self.starts = range(0, len(y), batch_size)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.starts[i]
        xb = self.x[s : s + self.batch_size]
        if self.memory_format is not None:
            xb = xb.contiguous(memory_format=self.memory_format)
        return xb, self.y[s : s + self.batch_size]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class Dataset:
    """Normalised image tensors ``[N, C, H, W]`` (float32; a `StoredImages` for a dataset declared ``stored:
    uint8``) or token ids ``[N, T]`` (int64), int64 labels.

    ``vocabulary`` is the character of each token id for text, None for images.
    ``train_index``/``test_index``/``proxy_index`` give, for provenance, each row's index in the
    source data (digits: ``load_digits()`` rows; CIFAR and LEAF: rows of the train resp. test set).
    They are ``None`` for datasets built in memory. ``eval_rows``: the rows of ``x_train`` that evaluations of the
    training data score, sorted (None: every row; Shakespeare from its raw texts: its windows at the evaluation
    stride, `fedscape.data.specs.resolved_eval_stride`, where training draws from every window). ``never_correct``:
    the classes whose prediction its accuracy never credits, though their targets count (Reddit's <PAD> and <UNK>, as
    LEAF scores it: `fedscape.data.leaf.RedditVocab.never_correct`); every evaluation of its data takes them
    (`fedscape.models.evaluate.evaluate`, the landscape's `SurfaceEvaluator`).
    """

    name: str
    x_train: Images
    y_train: torch.Tensor
    x_test: Images
    y_test: torch.Tensor
    x_proxy: Images
    y_proxy: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()
    train_index: np.ndarray | None = None
    test_index: np.ndarray | None = None
    proxy_index: np.ndarray | None = None
    vocabulary: str | tuple[str, ...] | None = None
    eval_rows: np.ndarray | None = None
    never_correct: tuple[int, ...] = ()

    @property
    def inputs(self) -> str:
        """'tokens' for text, 'image' otherwise (`fedscape.data.specs.INPUT_KINDS`)."""
        return "image" if self.vocabulary is None else "tokens"

    @property
    def in_channels(self) -> int:
        """Image channels; for text the vocabulary size (as `DatasetInfo` counts it)."""
        return int(self.x_train.shape[1]) if self.vocabulary is None else len(self.vocabulary)

    @property
    def image_size(self) -> int:
        """Image side; for text the sequence length."""
        return int(self.x_train.shape[-1])

    def sample_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The labels as the partition job read them from the source: a sequence task's every-position targets
        [N, T] end with the next token, the label of its `targets: next` sample; a word data set's are its labels."""
        info = DATASETS.get(self.name)
        return y if y.ndim == 1 or (info is not None and info.sequence_labels) else y[:, -1]

    def evaluated_train(self) -> tuple[Images, torch.Tensor]:
        """The training rows that evaluations score (`eval_rows`) and their labels."""
        if self.eval_rows is None:
            return self.x_train, self.y_train
        rows = torch.from_numpy(self.eval_rows).to(self.y_train.device)
        return take_rows(self.x_train, rows), self.y_train[rows]

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor moved to ``device`` (once, up front)."""
        tensors = ("x_train", "y_train", "x_test", "y_test", "x_proxy", "y_proxy")
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in tensors})


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0, test_fraction: float = 0.25,
                 proxy_fraction: float = 0.0, download: bool = False, source: str = "preprocessed",
                 seq_len: int | None = None, targets: str | None = None) -> Dataset:
    """Load dataset ``name`` as tensors (arguments as `fedscape.data.sources.load_source`; `targets` as
    `from_source`, None: the data set's own)."""
    return from_source(load_source(name, data_dir=data_dir, seed=seed, test_fraction=test_fraction,
                                   proxy_fraction=proxy_fraction, download=download, source=source,
                                   seq_len=seq_len), resolved_targets(name, {"targets": targets}))


def dataset_from_options(name: str, options: dict) -> Dataset:
    """Dataset `name` loaded with a config's `datasets.<name>` settings (a job's: keys at their baseline left out)."""
    return from_source(source_from_options(name, options), resolved_targets(name, options), options)


def _mean_std(images: np.ndarray, index: np.ndarray, chunk: int = 65536) -> tuple[float, float]:
    """Mean and standard deviation of ``images[index]`` over every value: two float64 passes in chunks, no copy."""
    chunks = [index[start : start + chunk] for start in range(0, len(index), chunk)]
    n = len(index) * int(np.prod(images.shape[1:]))
    mean = sum(float(images[c].astype(np.float64).sum()) for c in chunks) / max(n, 1)
    var = sum(float(np.square(images[c].astype(np.float64) - mean).sum()) for c in chunks) / max(n, 1)
    return mean, float(np.sqrt(var))


def next_token_targets(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every position's targets [N, T] of next-token samples: the input shifted by one, the next token last.

    A sample's inputs x [N, T] and next token y [N] are T + 1 consecutive tokens of a text (LEAF and the raw cut
    slide their window one token at a time), so position t's target is token t + 1 of the T + 1.
    """
    return torch.cat([x[:, 1:], y[:, None].to(x.dtype)], dim=1)


def from_source(src: Source, targets: str = TARGETS[0], options: dict | None = None) -> Dataset:
    """The tensors of a source's train, test and proxy parts (images normalised, tokens as int64).

    `targets` (`fedscape.data.specs.TARGETS`): ``next``, a label per sample; ``every`` (text only), the next token at
    every position (`next_token_targets`, or the word data sets' own labels [N, T]). `options`: its `datasets.<name>`
    settings, whose `channel_mean` / `channel_std` replace an RGB dataset's published statistics where set.
    """
    if targets not in TARGETS:
        raise ValueError(f"datasets.{src.name}.targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    if targets != TARGETS[0] and src.vocabulary is None:
        raise ValueError(f"datasets.{src.name}.targets: {targets} needs a text data set; {src.name} has images")
    if src.train_labels.ndim == 2 and targets != TARGETS[1]:
        raise ValueError(f"datasets.{src.name}.targets: {targets}, but its labels are every position's next token")
    if src.vocabulary is not None:

        def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = torch.from_numpy(images[index].astype(np.int64)), torch.from_numpy(labels[index])
            return (x, next_token_targets(x, y)) if targets == "every" and y.ndim == 1 else (x, y)
    elif src.name in _STANDARDISED:
        mean, std = _mean_std(src.train_images, src.train_index)

        def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x = ((images[index] - mean) / std).astype(np.float32)
            return torch.from_numpy(x), torch.from_numpy(labels[index])
    elif DATASETS[src.name].stored == "uint8":
        m, s = normalisation(src.name, options)

        def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[StoredImages, torch.Tensor]:
            # decoded chunk by chunk into the uint8 tensor (images decoded when indexed are never held twice)
            pixels = torch.empty((len(index), *images.shape[1:]), dtype=torch.uint8)
            for start in range(0, len(index), _DECODE_CHUNK):
                rows = index[start : start + _DECODE_CHUNK]
                pixels[start : start + len(rows)] = torch.from_numpy(np.asarray(images[rows], dtype=np.uint8))
            # training images stored larger (for resized_crop) stand for their centre crop of the dataset's size
            size = DATASETS[src.name].image_size
            return (StoredImages(pixels, torch.tensor(m), torch.tensor(s), size if pixels.shape[-1] > size else None),
                    torch.from_numpy(labels[index]))
    else:
        m, s = normalisation(src.name, options)
        mean_t, std_t = torch.tensor(m).view(1, 3, 1, 1), torch.tensor(s).view(1, 3, 1, 1)

        def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            # chunk by chunk into the tensor (elementwise, so the same numbers as at once): images decoded when
            # indexed (ImageNet-200) are never all held as uint8 beside the floats
            x = torch.empty((len(index), *images.shape[1:]), dtype=torch.float32)
            for start in range(0, len(index), _DECODE_CHUNK):
                rows = index[start : start + _DECODE_CHUNK]
                x[start : start + len(rows)] = unit_pixels(torch.from_numpy(images[rows])).sub_(mean_t).div_(std_t)
            return x, torch.from_numpy(labels[index])

    return Dataset(
        src.name,
        *part(src.train_images, src.train_labels, src.train_index),
        *part(src.test_images, src.test_labels, src.test_index),
        *part(src.train_images, src.train_labels, src.proxy_index),
        num_classes=src.num_classes,
        class_names=src.class_names,
        train_index=src.train_index,
        test_index=src.test_index,
        proxy_index=src.proxy_index,
        vocabulary=src.vocabulary,
        eval_rows=None if src.eval_rows is None else np.flatnonzero(np.isin(src.train_index, src.eval_rows)),
        never_correct=src.never_correct,
    )


# ---------------------------------------------------------------------------------------------
# Augmentation


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU tensor on `device`, copied without stopping the host.

    From pageable memory CUDA first waits for all work queued on the stream, so a per-step copy of batch indices or
    augmentation draws keeps the host from queueing the next step while the GPU runs this one (a local step cost
    11.6 ms against a plain loop's 8 ms on an H100). From pinned memory (torch's caching host allocator: no
    allocation per call once warm) the copy is queued like a kernel. Other devices: a plain `.to`.
    """
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch ``[N, C, H, W]`` on its device; ``kind`` is one of ``AUGMENTATIONS``.

    ``crop_flip`` (the CIFAR standard): pad by 4 pixels with zeros (on normalised data: the dataset
    mean), crop a random HxW window and flip it horizontally with probability 1/2, per image. The
    random numbers are drawn from ``generator`` on the CPU, so a seeded CPU generator gives the same
    result for CPU and CUDA batches.
    """
    if kind == "none":
        return x
    if kind in STORED_IMAGE_AUGMENTATIONS:
        raise ValueError(f"augmentation {kind} crops the larger stored images of a dataset that keeps them (a "
                         f"StoredImages: `augmented_batch`), not a batch of float images {list(x.shape)}")
    if kind != "crop_flip":
        raise unknown_name_error("augmentation", kind, AUGMENTATIONS)
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augmentation crop_flip moves pixels of images [N, C, H, W]; got {x.dtype} inputs of shape "
                         f"{list(x.shape)} (token ids?): set the dataset's augment to none")
    n, c, h, w = x.shape
    pad = CROP_PADDING
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    device = x.device
    draws = host_to_device(torch.cat([dy, dx, flip.long()], dim=1), device)  # [n, 3]: one copy per batch
    rows = draws[:, 0:1] + torch.arange(h, device=device)  # [n, h] rows of the padded image
    cols = draws[:, 1:2] + torch.arange(w, device=device)
    cols = torch.where(draws[:, 2:3].bool(), cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded[
        torch.arange(n, device=device).view(n, 1, 1, 1),
        torch.arange(c, device=device).view(1, c, 1, 1),
        rows.view(n, 1, h, 1),
        cols.view(n, 1, 1, w),
    ]


def augmented_batch(x: Images, index: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """The rows ``index`` of a training set augmented with ``kind`` (one of ``AUGMENTATIONS``): `augment_batch` of
    ``x[index]``, or for an augmentation of the stored images (resized_crop) `resized_crop_batch` of a
    `StoredImages` that keeps larger ones."""
    if kind not in STORED_IMAGE_AUGMENTATIONS:
        return augment_batch(x[index], kind, generator)
    if not isinstance(x, StoredImages) or not x.cropped:
        raise ValueError(f"augmentation {kind} draws crops from training images stored larger than the images "
                         f"trained on (datasets.<name>.augment: {kind} admits only a dataset that stores them, "
                         f"imagenet200); these are {type(x).__name__} of shape {list(x.shape)}")
    return resized_crop_batch(x, index, generator)


@dataclass(frozen=True)
class ResizedCropDraws:
    """The random numbers of `resized_crop_batch` for a batch of n: each crop's top, left, height and width (int64
    [n]), the colour jitter's order (int64 [n, 3]: 0 brightness, 1 contrast, 2 saturation) and factors (float32
    [n, 3], same columns), and the flips (bool [n])."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    order: torch.Tensor
    factors: torch.Tensor
    flip: torch.Tensor


def resized_crop_draws(n: int, height: int, width: int, generator: torch.Generator,
                       attempts: int = 10) -> ResizedCropDraws:
    """torchvision's RandomResizedCrop.get_params (scale RESIZED_CROP_SCALE, ratio RESIZED_CROP_RATIO: the FedAlign
    code's) for n images of height x width, drawn from ``generator`` at once: ``attempts`` tries of an area share
    uniform in the scale and a log-uniform aspect ratio, the first whose rounded crop fits, at a uniform position;
    none fitting, the centre crop of the image clamped to the ratios. Then ColorJitter(COLOR_JITTER)'s draws (a random
    order of brightness, contrast and saturation, each factor uniform in [1 - j, 1 + j]; no hue) and
    RandomHorizontalFlip's (probability 1/2)."""
    area = height * width
    scale = torch.empty(n, attempts).uniform_(*RESIZED_CROP_SCALE, generator=generator)
    log_ratio = torch.empty(n, attempts).uniform_(*[float(np.log(r)) for r in RESIZED_CROP_RATIO],
                                                  generator=generator)
    target, ratio = area * scale.double(), torch.exp(log_ratio.double())
    w = torch.round(torch.sqrt(target * ratio)).long()
    h = torch.round(torch.sqrt(target / ratio)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.long().argmax(1), 0)
    found = fits.any(1)
    ch, cw = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
    # the fallback: the whole image clamped to the ratios, centred
    in_ratio, (lo, hi) = width / height, RESIZED_CROP_RATIO
    fh, fw = ((int(round(width / lo)), width) if in_ratio < lo else (height, int(round(height * hi)))
              if in_ratio > hi else (height, width))
    ch, cw = torch.where(found, ch, fh), torch.where(found, cw, fw)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (height - ch + 1)).long(), (height - fh) // 2)
    left = torch.where(found, (u[:, 1] * (width - cw + 1)).long(), (width - fw) // 2)
    order = torch.rand(n, 3, generator=generator).argsort(1)
    factors = torch.empty(n, 3).uniform_(1 - COLOR_JITTER, 1 + COLOR_JITTER, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return ResizedCropDraws(top, left, ch, cw, order, factors, flip)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale of float images [..., 3, H, W], as [..., 1, H, W] (ITU-R 601-2 luma)."""
    r, g, b = x.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(dim=-3)


def colour_jitter(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter of float images [n, 3, H, W] in [0, 1], each image with its own order and factors
    (`ResizedCropDraws`, on the CPU): brightness scales, contrast blends with the mean of the grey image, saturation
    with the grey image, each clamped to [0, 1] (torchvision's adjust_brightness/_contrast/_saturation on tensors).
    Each adjustment is computed for the images that take it at that position only."""

    def bright(xs: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (f * xs).clamp(0, 1)

    def contrast(xs: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (f * xs + (1.0 - f) * _grey(xs).mean(dim=(-3, -2, -1), keepdim=True)).clamp(0, 1)

    def saturation(xs: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (f * xs + (1.0 - f) * _grey(xs)).clamp(0, 1)

    f = host_to_device(factors, x.device).view(-1, 3, 1, 1, 1)
    for position in range(3):
        out = torch.empty_like(x)
        for k, adjust in enumerate((bright, contrast, saturation)):
            rows = host_to_device((order[:, position] == k).nonzero()[:, 0], x.device)
            out[rows] = adjust(x[rows], f[rows, k])
        x = out
    return x


def resized_crop_batch(x: StoredImages, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The FedAlign code's ImageNet training transform of rows ``index`` of a store of larger images, normalised
    (data_loader.py _data_transforms_imagenet: RandomResizedCrop(224, scale=(0.08, 1)), ColorJitter(0.4, 0.4, 0.4),
    RandomHorizontalFlip, ToTensor, Normalize), per batch on the pixels' device: each crop resized to x.size with
    bilinear interpolation and antialiasing (torchvision's resized_crop of a tensor; the code resizes a PIL image,
    whose bilinear filter also antialiases), then the jitter, the flip and the normalisation. The crops are drawn
    from the stored image (ImageNet-200: the shorter side resized to 256, centre 256x256) where the code crops the
    full-resolution file. Every draw comes from ``generator`` (`resized_crop_draws`), on the CPU."""
    pixels = x.pixels[index]
    n, _, height, width = pixels.shape
    d = resized_crop_draws(n, height, width, generator)
    size = [x.size, x.size]
    crops = [F.interpolate(unit_pixels(pixels[j : j + 1, :, t : t + h, s : s + w]), size=size,
                           mode="bilinear", align_corners=False, antialias=True)
             for j, (t, s, h, w) in enumerate(zip(d.top.tolist(), d.left.tolist(), d.height.tolist(),
                                                  d.width.tolist(), strict=True))]
    out = colour_jitter(torch.cat(crops) if crops else pixels.new_zeros((0, 3, *size), dtype=torch.float32),
                        d.order, d.factors)
    out = torch.where(d.flip.to(out.device).view(-1, 1, 1, 1), out.flip(-1), out)
    return out.sub_(x.mean).div_(x.std)
