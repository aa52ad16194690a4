"""Torch-free facts about every dataset (what planning and config checks need without loading data)."""

from __future__ import annotations

from dataclasses import dataclass

from fedscape.core.names import unknown_name_error


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of a dataset's samples, known without loading it."""

    in_channels: int
    image_size: int
    num_classes: int
    description: str
    train_samples: int  # the training pool before the proxy split (digits: all samples, before the test split)
    fixed_test_split: bool  # True: the dataset's own test set (CIFAR); False: `test_fraction` of the samples
    needs_data_dir: bool = False  # read from the files below `datasets.<name>.data_dir` (False: bundled)

    def client_pool_bound(self, test_fraction: float, proxy_fraction: float) -> int:
        """An upper bound of the samples split among the clients (the splits round per class)."""
        n = self.train_samples if self.fixed_test_split else self.train_samples * (1 - test_fraction)
        return int(n * (1 - proxy_fraction)) + self.num_classes

    @property
    def shape(self) -> tuple[int, int, int]:
        """(in_channels, image_size, num_classes)."""
        return self.in_channels, self.image_size, self.num_classes


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1, 8, 10, "scikit-learn's bundled 8x8 digits (UCI optical digits), no download", 1797,
                          False),
    "cifar10": DatasetInfo(3, 32, 10, "CIFAR-10 (Krizhevsky 2009), python version from data_dir", 50000, True,
                           needs_data_dir=True),
    "cifar100": DatasetInfo(3, 32, 100, "CIFAR-100 (Krizhevsky 2009), python version from data_dir", 50000, True,
                            needs_data_dir=True),
}
DATASET_NAMES: tuple[str, ...] = tuple(sorted(DATASETS))
AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip")
CROP_PADDING = 4  # pixels of zero padding before the random crop (the CIFAR standard)


def dataset_info(name: str) -> DatasetInfo:
    """Static facts about dataset `name`; ValueError naming the valid ones for an unknown name."""
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASET_NAMES)
    return DATASETS[name]
