"""Datasets (CIFAR-10/100, scikit-learn digits, LEAF's FEMNIST and Shakespeare, ImageNet-200) as in-memory tensors,
plus augmentation.

`fedscape.data.sources` reads the files and splits them (torch-free); here a source becomes a
:class:`Dataset`. Images become float32 ``[N, C, H, W]``: digits and FEMNIST standardised with the
train part's mean and std, CIFAR and ImageNet-200 scaled to [0, 1] and normalised per channel with
their published statistics (ImageNet-200's images are decoded from disk in chunks straight into the float
tensor, so building it never holds a second copy of the pool). Text (Shakespeare) becomes int64 token
ids ``[N, T]`` with int64 targets ``[N]`` (the id of the next character), so models give logits
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
from fedscape.data.specs import AUGMENTATIONS, CROP_PADDING, DATASET_BASELINES, TARGETS

# Grey-scale datasets without published statistics: standardised with their train part's mean and std.
_STANDARDISED = ("digits", "femnist")
_DECODE_CHUNK = 1024  # images normalised at once (147 MB of uint8 at 224x224, where a source decodes when indexed)


@dataclass(frozen=True)
class Dataset:
    """Normalised image tensors ``[N, C, H, W]`` (float32) or token ids ``[N, T]`` (int64), int64 labels.

    ``vocabulary`` is the character of each token id for text, None for images.
    ``train_index``/``test_index``/``proxy_index`` give, for provenance, each row's index in the
    source data (digits: ``load_digits()`` rows; CIFAR and LEAF: rows of the train resp. test set).
    They are ``None`` for datasets built in memory.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_proxy: torch.Tensor
    y_proxy: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()
    train_index: np.ndarray | None = None
    test_index: np.ndarray | None = None
    proxy_index: np.ndarray | None = None
    vocabulary: str | None = None

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

    @staticmethod
    def sample_labels(y: torch.Tensor) -> torch.Tensor:
        """One label per sample, as the partition job read them from the source: a sequence task's every-position
        targets [N, T] end with the next token, the label of its `targets: next` sample."""
        return y if y.ndim == 1 else y[:, -1]

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor moved to ``device`` (once, up front)."""
        tensors = ("x_train", "y_train", "x_test", "y_test", "x_proxy", "y_proxy")
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in tensors})


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0, test_fraction: float = 0.25,
                 proxy_fraction: float = 0.0, download: bool = False, source: str = "preprocessed",
                 seq_len: int | None = None, targets: str = DATASET_BASELINES["targets"]) -> Dataset:
    """Load dataset ``name`` as tensors (arguments as `fedscape.data.sources.load_source`; `targets` as
    `from_source`)."""
    return from_source(load_source(name, data_dir=data_dir, seed=seed, test_fraction=test_fraction,
                                   proxy_fraction=proxy_fraction, download=download, source=source,
                                   seq_len=seq_len), targets)


def dataset_from_options(name: str, options: dict) -> Dataset:
    """Dataset `name` loaded with a config's `datasets.<name>` settings (a job's: keys at their baseline left out)."""
    return from_source(source_from_options(name, options), options.get("targets", DATASET_BASELINES["targets"]))


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


def from_source(src: Source, targets: str = DATASET_BASELINES["targets"]) -> Dataset:
    """The tensors of a source's train, test and proxy parts (images normalised, tokens as int64).

    `targets` (`fedscape.data.specs.TARGETS`): ``next``, a label per sample; ``every`` (text only), the next token at
    every position (`next_token_targets`).
    """
    if targets not in TARGETS:
        raise ValueError(f"datasets.{src.name}.targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    if targets != DATASET_BASELINES["targets"] and src.vocabulary is None:
        raise ValueError(f"datasets.{src.name}.targets: {targets} needs a text data set; {src.name} has images")
    if src.vocabulary is not None:

        def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = torch.from_numpy(images[index].astype(np.int64)), torch.from_numpy(labels[index])
            return (x, next_token_targets(x, y)) if targets == "every" else (x, y)
    elif src.name in _STANDARDISED:
        mean, std = _mean_std(src.train_images, src.train_index)

        def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x = ((images[index] - mean) / std).astype(np.float32)
            return torch.from_numpy(x), torch.from_numpy(labels[index])
    else:
        m, s = normalisation(src.name)
        mean_t, std_t = torch.tensor(m).view(1, 3, 1, 1), torch.tensor(s).view(1, 3, 1, 1)

        def part(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            # chunk by chunk into the tensor (elementwise, so the same numbers as at once): images decoded when
            # indexed (ImageNet-200) are never all held as uint8 beside the floats
            x = torch.empty((len(index), *images.shape[1:]), dtype=torch.float32)
            for start in range(0, len(index), _DECODE_CHUNK):
                rows = index[start : start + _DECODE_CHUNK]
                x[start : start + len(rows)] = (torch.from_numpy(images[rows]).to(torch.float32).div_(255.0)
                                                .sub_(mean_t).div_(std_t))
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
