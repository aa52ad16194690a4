"""The FedAlign code's ImageNet training augmentation (`datasets.<name>.augment: resized_crop`; data_loader.py
_data_transforms_imagenet: RandomResizedCrop(224, scale=(0.08, 1)), ColorJitter(0.4, 0.4, 0.4), RandomHorizontalFlip,
Normalize), drawn per batch on the device from the stored 256x256 training images: torchvision's draws and
transforms, the centre view that evaluation reads, the refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.configs import DEFAULT, SCHEMA
from helpers.imagenet import write_imagenet
from torchvision.transforms import functional as TF

from fedscape.core.config import ConfigError
from fedscape.data import imagenet200
from fedscape.data.datasets import (
    StoredImages,
    augmented_batch,
    dataset_from_options,
    resized_crop_batch,
    resized_crop_draws,
)
from fedscape.data.federated import FederatedData
from fedscape.data.specs import COLOR_JITTER, RESIZED_CROP_RATIO, RESIZED_CROP_SCALE, dataset_option_problems
from fedscape.fl.engine import run_federated
from fedscape.fl.settings import TrainConfig
from fedscape.fl.strategies.registry import make_strategy
from fedscape.fl.vectorized import resolve_client_parallel
from fedscape.models.params import flatten_params
from fedscape.models.registry import build_model
from fedscape.plan.workflow import check_config

MEAN, STD = imagenet200.MEAN, imagenet200.STD


def _store(n: int = 6, stored: int = 64, size: int = 56, seed: int = 0) -> StoredImages:
    # smooth images (a coarse field upscaled), so that the interpolation has structure to resample
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, stored // 8, stored // 8, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(stored, stored), mode="bilinear", align_corners=False)
    pixels = (fine * 255).round().clamp(0, 255).to(torch.uint8)
    return StoredImages(pixels, torch.tensor(MEAN), torch.tensor(STD), size)


def test_the_crops_follow_torchvisions_random_resized_crop_and_repeat_with_the_seed():
    from torchvision.transforms import RandomResizedCrop

    # Execute
    draws = resized_crop_draws(4000, 256, 256, torch.Generator().manual_seed(1))
    again = resized_crop_draws(4000, 256, 256, torch.Generator().manual_seed(1))
    other = resized_crop_draws(4000, 256, 256, torch.Generator().manual_seed(2))

    # Assert: every crop inside the image; area share and aspect ratio in the code's ranges (up to the rounding of
    # the sides to whole pixels); jitter factors in [0.6, 1.4], each order a permutation, about half flipped
    area = (draws.height * draws.width).double() / 256**2
    ratio = draws.width.double() / draws.height
    assert bool((draws.top >= 0).all() and (draws.left >= 0).all())
    assert bool((draws.top + draws.height <= 256).all() and (draws.left + draws.width <= 256).all())
    assert RESIZED_CROP_SCALE[0] - 0.005 <= float(area.min()) and float(area.max()) <= RESIZED_CROP_SCALE[1]
    assert RESIZED_CROP_RATIO[0] - 0.02 <= float(ratio.min()) and float(ratio.max()) <= RESIZED_CROP_RATIO[1] + 0.02
    # the mean area share as torchvision's own draws give it (below E[scale] = 0.54: large crops of extreme ratio
    # overhang the image and are drawn again)
    torch.manual_seed(0)
    theirs = [RandomResizedCrop.get_params(torch.zeros(3, 256, 256), list(RESIZED_CROP_SCALE),
                                           list(RESIZED_CROP_RATIO)) for _ in range(4000)]
    assert float(area.mean()) == pytest.approx(np.mean([h * w / 256**2 for _, _, h, w in theirs]), abs=0.015)
    assert 1 - COLOR_JITTER <= float(draws.factors.min()) and float(draws.factors.max()) <= 1 + COLOR_JITTER
    assert draws.order.sort(1).values.tolist() == [[0, 1, 2]] * 4000
    assert 0.45 < float(draws.flip.float().mean()) < 0.55
    for field in ("top", "left", "height", "width", "order", "factors", "flip"):
        assert torch.equal(getattr(draws, field), getattr(again, field))
    assert not torch.equal(draws.top, other.top)


def test_where_no_crop_fits_the_centre_crop_clamped_to_the_ratios_is_torchvisions():
    from torchvision.transforms import RandomResizedCrop

    # Prepare: a 1x64 image, where every drawn crop is at least 2 pixels high
    image = torch.zeros(3, 1, 64)
    theirs = RandomResizedCrop.get_params(image, scale=list(RESIZED_CROP_SCALE), ratio=list(RESIZED_CROP_RATIO))

    # Execute
    draws = resized_crop_draws(5, 1, 64, torch.Generator().manual_seed(0))

    # Assert
    for j in range(5):
        assert (int(draws.top[j]), int(draws.left[j]), int(draws.height[j]), int(draws.width[j])) == tuple(theirs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batch_is_torchvisions_transforms_of_each_image_with_its_draws(seed):
    # Prepare
    store = _store(seed=seed)
    index = torch.tensor([5, 0, 3, 3, 1])
    draws = resized_crop_draws(len(index), 64, 64, torch.Generator().manual_seed(seed))

    # Execute
    batch = resized_crop_batch(store, index, torch.Generator().manual_seed(seed))

    # Assert: each image as torchvision's tensor transforms make it with the same draws: resized_crop (bilinear,
    # antialiased), the three adjustments in the drawn order, the flip, Normalize. The interpolation is the same
    # kernel (bitwise); the tolerance is float32 rounding of the contrast's mean grey, summed in another order over
    # a batch than over one image (measured below 1e-6 before the division by std ~0.22)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for j, row in enumerate(index.tolist()):
        img = store.pixels[row].float() / 255
        img = TF.resized_crop(img, int(draws.top[j]), int(draws.left[j]), int(draws.height[j]), int(draws.width[j]),
                              [56, 56], antialias=True)
        for op in draws.order[j].tolist():
            img = adjust[op](img, float(draws.factors[j, op]))
        if draws.flip[j]:
            img = TF.hflip(img)
        expected = TF.normalize(img, list(MEAN), list(STD))
        torch.testing.assert_close(batch[j], expected, rtol=0, atol=1e-5)


def test_the_codes_pil_transforms_differ_by_their_uint8_rounding_only():
    from PIL import Image

    # Prepare: the code applies the same transforms to a PIL image (uint8 after each step)
    store = _store(n=4, stored=256, size=224, seed=3)
    draws = resized_crop_draws(4, 256, 256, torch.Generator().manual_seed(3))
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)

    # Execute
    batch = resized_crop_batch(store, torch.arange(4), torch.Generator().manual_seed(3))

    # Assert: within a few levels of 255 of the code's pixels: PIL's bilinear filter, uint8 rounding after every
    # adjustment and PIL's contrast blending with the grey mean rounded to an integer; measured max 3.5/255, mean
    # 1.35/255 on these images
    for j in range(4):
        img = Image.fromarray(store.pixels[j].permute(1, 2, 0).numpy())
        img = TF.resized_crop(img, int(draws.top[j]), int(draws.left[j]), int(draws.height[j]), int(draws.width[j]),
                              [224, 224], interpolation=TF.InterpolationMode.BILINEAR)
        for op in draws.order[j].tolist():
            img = adjust[op](img, float(draws.factors[j, op]))
        if draws.flip[j]:
            img = TF.hflip(img)
        ours = batch[j] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        diff = (ours - TF.to_tensor(img)).abs()
        assert float(diff.max()) <= 6 / 255 and float(diff.mean()) <= 2 / 255


def test_evaluation_reads_the_centre_crop_which_is_the_codes_evaluation_transform(tmp_path):
    # Prepare: the same ImageNet read for crop_flip (the 224 centre crop decoded) and for resized_crop (256 stored)
    root = write_imagenet(tmp_path / "in", rich={})
    options = {"data_dir": str(root), "proxy_fraction": 0.0}

    # Execute
    plain = dataset_from_options("imagenet200", {**options, "augment": "crop_flip"})
    cropped = dataset_from_options("imagenet200", {**options, "augment": "resized_crop"})

    # Assert: 256x256 training pixels (1.31x the bytes), every row read as exactly the 224x224 evaluation transform;
    # the test set as before
    assert cropped.x_train.pixels.shape[-2:] == (256, 256) and cropped.x_train.shape == plain.x_train.shape
    assert cropped.x_train.nbytes * 224**2 == plain.x_train.nbytes * 256**2
    torch.testing.assert_close(cropped.x_train[:], plain.x_train[:], rtol=0, atol=0)
    torch.testing.assert_close(cropped.x_test[:], plain.x_test[:], rtol=0, atol=0)
    assert cropped.x_test.pixels.shape[-2:] == (224, 224)


def test_client_training_with_resized_crop_repeats_and_refuses_float_images_and_vectorising():
    # Prepare: a tiny pool of 64x64 stored images standing for 56x56 ones, two clients
    store = _store(n=12)
    y = torch.arange(12) % 10
    data = FederatedData(store, y, [torch.arange(6), torch.arange(6, 12)], store.rows(torch.arange(4)), y[:4])
    cfg = TrainConfig(rounds=1, local_epochs=1, batch_size=4, lr=0.05, augment="resized_crop", seed=0)

    def trained() -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("cnn_small", num_classes=10, in_channels=3, image_size=56)
        run_federated(model, data, make_strategy("fedavg"), cfg)
        return flatten_params(model)

    # Execute
    first, second = trained(), trained()

    # Assert: the same seed, the same model; auto trains sequentially; vectorized and float images refused
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model = build_model("cnn_small", num_classes=10, in_channels=3, image_size=56)
    assert resolve_client_parallel(model, make_strategy("fedavg"), cfg, "cuda") == "sequential"
    with pytest.raises(ValueError, match="client_parallel is 'vectorized' but the dataset's augment resized_crop"):
        resolve_client_parallel(model, make_strategy("fedavg"),
                                TrainConfig(augment="resized_crop", client_parallel="vectorized"), "cuda")
    with pytest.raises(ValueError, match="augmentation resized_crop draws crops from training images stored larger"):
        augmented_batch(store[:], torch.arange(2), "resized_crop", torch.Generator())


def _config(training: dict, augment: str, dataset: str = "imagenet200") -> dict:
    config = {k: copy.deepcopy(v) for k, v in DEFAULT.items()
              if k in ("partition", "training", "seeds", "alphas", "num_clients", "participation")}
    config["training"].update(training)
    config.update({"inits": {"random": {"kind": "random", "seed": 0}},
                   "datasets": {dataset: {"data_dir": "data/x", "proxy_fraction": 0.0, "augment": augment}},
                   "models": ["resnet18"], "model_options": {"resnet18": {"norm": "batch", "stem": "imagenet"}},
                   "algorithms": {"fedavg": {"name": "fedavg"}}})
    return config


def test_planning_refuses_vectorized_clients_and_datasets_without_larger_images():
    # Execute
    with pytest.raises(ConfigError) as vectorized:
        check_config(_config({"client_parallel": "vectorized"}, "resized_crop"), SCHEMA)
    problems = dataset_option_problems("cifar10", {"augment": "resized_crop"})

    # Assert: each names the key and what to set; sequential and auto plan
    assert ("training.client_parallel: vectorized trains stacked clients' batches, but datasets.imagenet200.augment "
            "resized_crop crops each image to its own size first (sequential client training only); set "
            "client_parallel to auto or sequential") in str(vectorized.value)
    assert problems == ["datasets.cifar10.augment: resized_crop draws crops from training images stored larger "
                        "than the images trained on, which only imagenet200 keeps; use none or crop_flip"]
    for mode in ("auto", "sequential"):
        check_config(_config({"client_parallel": mode}, "resized_crop"), SCHEMA)
    assert dataset_option_problems("shakespeare", {"augment": "resized_crop"}) == [
        "datasets.shakespeare.augment: resized_crop augments images, but shakespeare gives sequences of 80 tokens "
        "over 80 symbols; use none"]
    assert np.isclose(COLOR_JITTER, 0.4)


@pytest.mark.parametrize("kind", ["resized_crop", "crop_flip", "none"])
def test_pretraining_on_a_stored_proxy_split_augments_as_client_training(kind):
    from fedscape.data.datasets import augment_batch
    from fedscape.stages.init import ProxyData

    # Prepare: a proxy split held as a store of larger images
    store = _store(n=8)
    proxy = ProxyData(torch.arange(8) % 10, 10, "split:imagenet200", x=store)
    index = torch.tensor([6, 1, 1, 4])

    # Execute
    batch = proxy.augmented(index, kind, torch.Generator().manual_seed(5))

    # Assert: the same batch as the clients' path makes from the same draws
    expected = (resized_crop_batch(store, index, torch.Generator().manual_seed(5)) if kind == "resized_crop" else
                augment_batch(store[index], kind, torch.Generator().manual_seed(5)))
    torch.testing.assert_close(batch, expected, rtol=0, atol=0)
    assert batch.shape == (4, 3, 56, 56)
