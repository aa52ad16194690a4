"""An RGB dataset normalised with a paper's own per-channel statistics (`datasets.<name>.channel_mean` /
`channel_std`), e.g. the flatness paper's CIFAR-10 std (0.2023, 0.1994, 0.2010), in place of the published ones."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.cifar import write_fake_cifar10
from helpers.configs import SCHEMA, TINY

from fedscape.core.config import ConfigError
from fedscape.data.datasets import dataset_from_options
from fedscape.data.sources import normalisation, source_from_options
from fedscape.data.specs import dataset_option_problems, dataset_settings
from fedscape.plan.workflow import check_config

AUTHORS_STD = [0.2023, 0.1994, 0.2010]
PUBLISHED_MEAN, PUBLISHED_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize(("options", "mean", "std"), [
    ({}, PUBLISHED_MEAN, PUBLISHED_STD),
    ({"channel_std": AUTHORS_STD}, PUBLISHED_MEAN, tuple(AUTHORS_STD)),
    ({"channel_mean": [0.5, 0.5, 0.5], "channel_std": None}, (0.5, 0.5, 0.5), PUBLISHED_STD),
])
def test_cifar_pixels_are_normalised_with_the_statistics_asked_for(tmp_path, options, mean, std):
    # Prepare
    data_dir = str(write_fake_cifar10(tmp_path))
    options = {"data_dir": data_dir, "proxy_fraction": 0.0, **options}
    src = source_from_options("cifar10", options)

    # Execute
    ds = dataset_from_options("cifar10", options)

    # Assert: (pixel / 255 - mean) / std per channel, the published values where nothing is set
    assert normalisation("cifar10", options) == (mean, std)
    pixels = torch.from_numpy(src.train_images[src.train_index]).to(torch.float32) / 255.0
    want = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.x_train, want, rtol=0, atol=2e-6)


def test_the_authors_std_changes_the_inputs_and_enters_the_job_settings(tmp_path):
    # Prepare
    data_dir = str(write_fake_cifar10(tmp_path))
    published = dataset_from_options("cifar10", {"data_dir": data_dir})
    authors = dataset_from_options("cifar10", {"data_dir": data_dir, "channel_std": AUTHORS_STD})

    # Assert: every channel scaled by the ratio of the stds (1.22, 1.22, 1.30), so a job of its own
    for channel in range(3):
        x, y = published.x_train[:, channel], authors.x_train[:, channel]
        ratio = (y / x)[x.abs() > 0.1]
        want = PUBLISHED_STD[channel] / AUTHORS_STD[channel]
        assert float(ratio.min()) == pytest.approx(want, rel=1e-4) == float(ratio.max())
    assert dataset_settings("cifar10", {"channel_std": AUTHORS_STD, "channel_mean": None}) == {
        "channel_std": AUTHORS_STD}
    assert dataset_settings("cifar10", {"channel_std": None, "channel_mean": None}) == {}


@pytest.mark.parametrize("dataset", ["digits", "femnist", "shakespeare", "stackoverflow"])
def test_statistics_for_a_dataset_without_rgb_channels_are_refused(dataset):
    [problem] = dataset_option_problems(dataset, {"channel_std": AUTHORS_STD})
    assert problem.startswith(f"datasets.{dataset}.channel_std: per-channel statistics replace an RGB dataset's")
    with pytest.raises(ValueError, match="not an RGB dataset"):
        normalisation(dataset, {"channel_std": AUTHORS_STD})


@pytest.mark.parametrize("value", [[0.2, 0.2], [0.2, 0.0, 0.2], "0.2"])
def test_the_schema_refuses_statistics_that_are_not_three_positive_numbers(value):
    config = copy.deepcopy(TINY)
    config["datasets"] = {"cifar10": {"data_dir": "data/cifar10", "channel_std": value}}
    with pytest.raises(ConfigError, match="channel_std"):
        check_config(config, SCHEMA)


def test_a_channel_mean_for_every_channel_is_what_the_statistics_hold():
    mean, std = normalisation("imagenet200", {"channel_mean": [0.1, 0.2, 0.3]})
    assert mean == (0.1, 0.2, 0.3) and np.allclose(std, (0.229, 0.224, 0.225))
