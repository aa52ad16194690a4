"""Tests for the model registry (fedscape.models)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import papers
from torch import nn

from fedscape.core.jobs import kept_record, to_settings
from fedscape.data.datasets import load_dataset
from fedscape.models.layers import sliced_norm
from fedscape.models.registry import build_model
from fedscape.models.resnets import BasicBlock, Bottleneck, ZeroPadShortcut
from fedscape.models.specs import (
    MODEL_NAMES,
    MODEL_OPTIONS,
    NORMS,
    check_model_compatible,
    is_token_model,
    model_info,
    model_option_defaults,
    model_option_problems,
)
from fedscape.plan.init import planned_init
from fedscape.stages.init_settings import RandomInit

NUM_CLASSES = 7  # not 10, so a hard-coded class count shows up
DIGITS = (1, 8)  # in_channels, image_size
CIFAR = (3, 32)
CIFAR_MODELS = ("cnn_small", "convnet", "lenet5", "mlp", "resnet18", "resnet18_nonorm", "resnet20", "resnet56",
                "resnet56_bottleneck", "vgg11")
DIGIT_MODELS = ("cnn_small", "mlp", "resnet20", "resnet56_bottleneck")
VALID_INPUTS = [(name, *CIFAR) for name in CIFAR_MODELS] + [(name, *DIGITS) for name in DIGIT_MODELS]


def make(name: str, in_channels: int, image_size: int, seed: int = 0, **options: str) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, NUM_CLASSES, in_channels, image_size, **options)


# Models of image inputs; the token models (char_gpt, char_lstm) are tested in test_text_models.py.
IMAGE_MODELS = [name for name in MODEL_NAMES if not is_token_model(name)]


def batch(in_channels: int, image_size: int, size: int = 2) -> torch.Tensor:
    return torch.randn(size, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(1))


def test_model_names_are_sorted_and_complete() -> None:
    # Prepare
    expected = {"mlp", "cnn_small", "convnet", "lenet5", "resnet20", "resnet56", "resnet56_bottleneck", "resnet18",
                "resnet18_nonorm", "vgg11", "char_gpt", "char_lstm", "word_lstm"}

    # Execute / Assert
    assert list(MODEL_NAMES) == sorted(MODEL_NAMES)
    assert set(MODEL_NAMES) == expected
    assert all(model_info(name).name == name for name in MODEL_NAMES)


@pytest.mark.parametrize(("name", "in_channels", "image_size"), VALID_INPUTS)
def test_model_gives_logits_of_shape_batch_by_classes(name: str, in_channels: int, image_size: int) -> None:
    # Prepare
    model = make(name, in_channels, image_size).eval()
    x = batch(in_channels, image_size, size=3)

    # Execute
    with torch.no_grad():
        logits = model(x)

    # Assert
    assert logits.shape == (3, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "in_channels", "image_size"), VALID_INPUTS)
def test_forward_is_classifier_of_forward_features(name: str, in_channels: int, image_size: int) -> None:
    # Prepare
    model = make(name, in_channels, image_size).eval()
    x = batch(in_channels, image_size)

    # Execute
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)

    # Assert
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.out_features == NUM_CLASSES
    assert features.shape == (2, model.classifier.in_features)
    assert torch.equal(logits, model.classifier(features))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Option-A (zero-padding) shortcuts. The often quoted 272,474 / 855,770 count option-B
        # (1x1 projection) shortcuts: 2,752 parameters more; both are "0.27M / 0.85M".
        ("resnet20", 269_722),
        ("resnet56", 853_018),
        ("convnet", 233_354),
        # conv 3*64*25+64, conv 64*64*25+64, FC 1600*384+384, 384*192+192, 192*10+10
        ("lenet5", 797_962),
    ],
)
def test_parameter_count_with_10_classes(name: str, expected: int) -> None:
    # Prepare
    model = build_model(name, 10, *CIFAR)

    # Execute
    count = sum(p.numel() for p in model.parameters())

    # Assert
    assert count == expected


@pytest.mark.parametrize(("name", "usual"), [("resnet20", 272_474), ("resnet56", 855_770)])
def test_resnet_parameter_count_is_near_the_usual_number(name: str, usual: int) -> None:
    # Execute
    count = sum(p.numel() for p in build_model(name, 10, *CIFAR).parameters())

    # Assert
    assert count == pytest.approx(usual, rel=0.02)


def test_lenet5_computes_the_function_of_the_flatness_papers_cnn(float64_default) -> None:
    # Prepare: the network as Caldarola et al.'s code writes it (models/cifar10/cnn.py: layer1, layer2, classifier),
    # built here independently, with lenet5's weights copied in order
    reference = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=5), nn.ReLU(), nn.MaxPool2d(kernel_size=2),
        nn.Conv2d(64, 64, kernel_size=5), nn.ReLU(), nn.MaxPool2d(kernel_size=2), nn.Flatten(),
        nn.Linear(64 * 5 * 5, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(), nn.Linear(192, NUM_CLASSES))
    model = make("lenet5", *CIFAR)
    ours, theirs = list(model.parameters()), list(reference.parameters())
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            b.copy_(a)
    x = batch(*CIFAR, size=4)

    # Execute / Assert
    assert torch.allclose(model(x), reference(x), rtol=0, atol=1e-12)


def test_convnet_first_fc_takes_1024_features() -> None:
    # Execute
    model = build_model("convnet", 10, *CIFAR)

    # Assert
    assert model.fc.in_features == 64 * 4 * 4
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2


def executed_parameter_modules(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules holding parameters, in the order the forward pass runs them."""
    order: list[str] = []
    hooks = [
        module.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return order


@pytest.mark.parametrize(("name", "in_channels", "image_size"), VALID_INPUTS)
def test_named_parameters_follow_forward_order(name: str, in_channels: int, image_size: int) -> None:
    # Prepare
    model = make(name, in_channels, image_size).eval()
    declared = list(dict.fromkeys(n.rsplit(".", 1)[0] for n, _ in model.named_parameters()))

    # Execute
    executed = executed_parameter_modules(model, batch(in_channels, image_size))

    # Assert
    assert executed == declared
    assert declared[-1] == "classifier"


@pytest.mark.parametrize(
    ("name", "first"),
    [("mlp", "fc1"), ("cnn_small", "features.0"), ("convnet", "features.0"), ("resnet20", "stem")],
)
def test_first_parameter_belongs_to_the_input_layer(name: str, first: str) -> None:
    # Execute
    names = [n for n, _ in make(name, *CIFAR).named_parameters()]

    # Assert
    assert names[0] == f"{first}.weight"
    assert names[-2:] == ["classifier.weight", "classifier.bias"]


def test_unknown_model_name_suggests_the_closest_and_lists_all() -> None:
    # Execute
    with pytest.raises(ValueError) as error:
        build_model("resnet2", 10, *CIFAR)

    # Assert
    message = str(error.value)
    assert "Did you mean 'resnet20'?" in message
    assert all(name in message for name in MODEL_NAMES)


@pytest.mark.parametrize("name", ["convnet", "lenet5", "vgg11"])
def test_32x32_models_reject_digits(name: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"needs 32x32 inputs; dataset gives 8x8\..*cnn_small.*mlp"):
        check_model_compatible(name, *DIGITS)
    with pytest.raises(ValueError, match="32x32"):
        build_model(name, 10, *DIGITS)


@pytest.mark.parametrize(("name", "in_channels", "image_size"), VALID_INPUTS)
def test_valid_inputs_are_compatible(name: str, in_channels: int, image_size: int) -> None:
    # Execute / Assert (no exception)
    check_model_compatible(name, in_channels, image_size)


def test_resnet_rejects_images_below_8x8() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="at least 8x8"):
        check_model_compatible("resnet20", 3, 4)


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("resnet20", {"nrom": "group"}, r"'nrom'.*Did you mean 'norm'\?.*Valid options: norm"),
        ("mlp", {"norm": "batch"}, r"'norm' for model 'mlp'.*Valid options: none"),
        ("resnet56", {"norm": "layer"}, r"unknown norm 'layer'.*batch, group, none"),
        ("resnet18", {"norm": "grup"}, r"unknown norm 'grup'.*Did you mean 'group'\?.*batch, group, none"),
        ("resnet18_nonorm", {"norm": "group"}, r"'norm' for model 'resnet18_nonorm'.*Valid options: weight_init"),
        ("resnet18_nonorm", {"weight_init": "torchvison"}, r"unknown init 'torchvison'.*Did you mean 'torchvision'"),
    ],
)
def test_bad_options_raise_value_error(name: str, options: dict[str, str], pattern: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=pattern):
        build_model(name, 10, *CIFAR, **options)


def test_zero_classes_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 0, *DIGITS)


@pytest.mark.parametrize(
    ("norm", "present", "absent"),
    [
        ("batch", nn.BatchNorm2d, nn.GroupNorm),
        ("group", nn.GroupNorm, nn.BatchNorm2d),
        ("none", None, (nn.BatchNorm2d, nn.GroupNorm)),
    ],
)
def test_resnet20_norm_option_picks_the_norm_layer(norm: str, present: type | None, absent: type) -> None:
    # Execute
    model = make("resnet20", *CIFAR, norm=norm)
    modules = list(model.modules())

    # Assert
    assert not any(isinstance(m, absent) for m in modules)
    if present is None:
        assert list(model.buffers()) == []
    else:
        assert sum(isinstance(m, present) for m in modules) == 19  # stem + 2 per block


def test_group_norm_uses_8_groups() -> None:
    # Execute
    groups = {
        m.num_groups for m in make("resnet56", *CIFAR, norm="group").modules() if isinstance(m, nn.GroupNorm)
    }

    # Assert
    assert groups == {8}


@pytest.mark.parametrize("norm", NORMS)
def test_resnet20_norm_option_keeps_logit_shape(norm: str) -> None:
    # Prepare
    model = make("resnet20", *DIGITS, norm=norm).eval()

    # Execute
    with torch.no_grad():
        logits = model(batch(*DIGITS))

    # Assert
    assert logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_buffers_are_all_floating_point(name: str) -> None:
    # Execute
    buffers = dict(make(name, *CIFAR).named_buffers())

    # Assert
    assert all(b.is_floating_point() for b in buffers.values()), sorted(buffers)


def test_batch_norm_tracks_running_stats_and_loads_plain_dicts() -> None:
    # Prepare
    model = make("resnet20", *DIGITS).train()
    before = model.stem_norm.running_mean.clone()

    # Execute
    model(batch(*DIGITS, size=4))
    copy = make("resnet20", *DIGITS, seed=5)
    copy.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})  # no version metadata

    # Assert
    assert not torch.equal(model.stem_norm.running_mean, before)
    assert torch.equal(copy.stem_norm.running_mean, model.stem_norm.running_mean)


@pytest.mark.parametrize(("name", "num_blocks", "block"), [("resnet20", 9, BasicBlock), ("resnet56", 27, BasicBlock),
                                                           ("resnet56_bottleneck", 18, Bottleneck),
                                                           ("resnet18", 8, BasicBlock),
                                                           ("resnet18_nonorm", 8, BasicBlock)])
def test_residual_models_expose_their_blocks(name: str, num_blocks: int, block: type) -> None:
    # Execute
    model = make(name, *CIFAR)

    # Assert
    assert model_info(name).residual
    assert isinstance(model.blocks, nn.ModuleList)
    assert len(model.blocks) == num_blocks
    assert all(isinstance(b, block) for b in model.blocks)


@pytest.mark.parametrize("name", ["mlp", "cnn_small", "convnet", "lenet5", "vgg11", "char_gpt", "char_lstm"])
def test_plain_models_are_not_residual(name: str) -> None:
    assert not model_info(name).residual


def test_cifar_resnets_use_zero_padding_and_resnet18_projection_shortcuts() -> None:
    # Execute
    resnet20 = make("resnet20", *CIFAR)
    resnet18 = make("resnet18_nonorm", *CIFAR)

    # Assert
    assert sum(isinstance(b.shortcut, ZeroPadShortcut) for b in resnet20.blocks) == 2
    assert all(m.kernel_size == (3, 3) for m in resnet20.modules() if isinstance(m, nn.Conv2d))
    assert sum(isinstance(b.shortcut, nn.Sequential) for b in resnet18.blocks) == 3
    assert list(resnet18.buffers()) == []
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in resnet18.modules())


def test_zero_pad_shortcut_subsamples_and_pads_channels_with_zeros() -> None:
    # Prepare
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)

    # Execute
    y = ZeroPadShortcut(stride=2, extra_channels=4)(x)

    # Assert
    assert y.shape == (1, 6, 2, 2)
    assert torch.equal(y[:, 2:4], x[:, :, ::2, ::2])
    assert not y[:, :2].any() and not y[:, 4:].any()


def test_cnn_small_has_a_last_block_and_few_parameters() -> None:
    # Execute
    model = make("cnn_small", *DIGITS)

    # Assert
    assert isinstance(model.last_block, nn.Module)
    assert any(isinstance(m, nn.Conv2d) for m in model.last_block.modules())
    assert sum(p.numel() for p in model.parameters()) < 50_000


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_same_seed_gives_identical_weights(name: str) -> None:
    # Execute
    first = make(name, *CIFAR, seed=3).state_dict()
    second = make(name, *CIFAR, seed=3).state_dict()
    other = make(name, *CIFAR, seed=4).state_dict()

    # Assert
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_batch_norm_reset_restores_the_initial_running_stats() -> None:
    # Prepare
    model = make("resnet20", *DIGITS).train()
    model(batch(*DIGITS, size=4))
    assert not torch.equal(model.stem_norm.running_mean, torch.zeros_like(model.stem_norm.running_mean))

    # Execute
    model.stem_norm.reset_parameters()

    # Assert
    assert torch.equal(model.stem_norm.running_mean, torch.zeros_like(model.stem_norm.running_mean))
    assert torch.equal(model.stem_norm.running_var, torch.ones_like(model.stem_norm.running_var))
    assert model.stem_norm.num_batches_tracked is None


def digits_batch(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """n training images of the bundled digits, scaled as the dataset loader scales them."""
    data = load_dataset("digits")
    return data.x_train[:n], data.y_train[:n]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cnn_small_starts_off_the_plateau(seed: int) -> None:
    """He init of the ReLU layers: input-dependent logits at init, and SGD leaves ln(10) within ~one round.

    With PyTorch's default init the logits' spread over inputs was ~0.003 (about 40x smaller) and 60 SGD
    steps left the loss at ~2.29.
    """
    # Prepare
    x, y = digits_batch()
    torch.manual_seed(seed)
    model = build_model("cnn_small", 10, *DIGITS)

    # Execute
    with torch.no_grad():
        signal = model(x).std(0).mean().item()  # the logits' spread over inputs, averaged over classes
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(60):  # about one FedAvg round of one client of the default config
        b = torch.arange(step * 8, step * 8 + 16) % len(y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
        opt.step()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()

    # Assert
    assert signal > 0.05
    assert loss < 2.0


# -- the FedAlign code's ResNet56 --------------------------------------------------------------------------------
# An independent construction of the network of the FedAlign code (Mendieta et al. 2022, models/resnet.py:
# `resnet56 = ResNet(Bottleneck, [6, 6, 6])`, torchvision's bottleneck with expansion 4 and 1x1-conv + BatchNorm
# downsampling where the shape changes, a 16-channel 3x3 stem and no max-pool), written as that code writes it.
class AuthorsBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class AuthorsResNet56(nn.Module):
    def __init__(self, num_classes: int, layers: tuple[int, int, int] = (6, 6, 6)) -> None:
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, layers[0])
        self.layer2 = self._make_layer(32, layers[1], stride=2)
        self.layer3 = self._make_layer(64, layers[2], stride=2)
        self.fc = nn.Linear(64 * 4, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [AuthorsBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [AuthorsBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("num_classes", [100, 10])
def test_bottleneck_resnet56_has_the_parameters_of_the_fedalign_code_s_resnet56(num_classes: int) -> None:
    # Prepare
    authors = AuthorsResNet56(num_classes)

    # Execute
    ours = build_model("resnet56_bottleneck", num_classes, *CIFAR)

    # Assert: the same tensors in the same (forward) order, about 614k parameters at 100 classes
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in authors.parameters()]
    assert [tuple(b.shape) for b in ours.buffers()] == [tuple(b.shape) for b in floating_buffers(authors)]
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in authors.parameters())
    if num_classes == 100:
        assert count == pytest.approx(614_000, rel=0.005)


def floating_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


def copy_tensors(source: nn.Module, target: nn.Module) -> None:
    """`source`'s parameters and floating-point buffers into `target`'s, tensor by tensor in (forward) order."""
    with torch.no_grad():
        for mine, other in zip(target.parameters(), source.parameters(), strict=True):
            mine.copy_(other)
        for mine, other in zip(target.buffers(), floating_buffers(source), strict=True):
            mine.copy_(other)


@pytest.mark.parametrize("train", [False, True])
def test_bottleneck_resnet56_computes_the_fedalign_code_s_function(train: bool, float64_default) -> None:
    # Prepare: the authors' network with random weights and running statistics, copied into ours tensor by tensor
    torch.manual_seed(0)
    authors = AuthorsResNet56(10)
    for m in authors.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = build_model("resnet56_bottleneck", 10, *CIFAR)
    copy_tensors(authors, ours)
    x = batch(*CIFAR, size=4)

    # Execute
    authors.train(train)
    ours.train(train)
    with torch.no_grad():
        expected, logits = authors(x), ours(x)

    # Assert
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_bottleneck_resnet56_draws_convolutions_as_torchvision_does() -> None:
    # Prepare: Kaiming-normal over the fan out (torchvision's and the FedAlign code's init), Linear and norms default
    model = make("resnet56_bottleneck", *CIFAR, seed=0)
    conv = model.blocks[0].conv2  # 16 -> 16, 3x3: fan out 144

    # Execute
    std = conv.weight.std().item()

    # Assert
    assert std == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.1)
    assert all(isinstance(b.shortcut, nn.Sequential | nn.Identity) for b in model.blocks)
    assert sum(isinstance(b.shortcut, nn.Sequential) for b in model.blocks) == 3
    assert torch.equal(model.blocks[0].norm3.weight, torch.ones(64))
    assert model.classifier.in_features == 256


# -- ResNet18 (the Meta poster's model with group norm; resnet18_nonorm is it without norm) -------------------------
# An independent construction: torchvision's ResNet18 with the CIFAR stem (3x3 stride-1 convolution, no max-pool) and
# the norm layer given, as the poster's code (FLSim: torchvision's resnet18, its batch norms made GroupNorm(32, C)).
def torchvision_cifar_resnet18(num_classes: int, norm: str) -> nn.Module:
    import torchvision  # lazy: only these tests compare with it

    layers = {"group": lambda c: nn.GroupNorm(32, c), "batch": nn.BatchNorm2d, "none": lambda c: nn.Identity()}
    model = torchvision.models.resnet18(num_classes=num_classes, norm_layer=layers[norm])
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_resnet18_has_the_tensors_of_torchvision_s_resnet18_with_a_cifar_stem(norm: str) -> None:
    # Prepare
    theirs = torchvision_cifar_resnet18(10, norm)

    # Execute
    ours = build_model("resnet18", 10, *CIFAR, norm=norm)

    # Assert: the same tensors in the same (forward) order; 11,173,962 parameters with a norm (the usual CIFAR
    # ResNet18 count), 9,600 fewer without (the norms' weights and biases over 4,800 channels)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert [tuple(b.shape) for b in ours.buffers()] == [tuple(b.shape) for b in floating_buffers(theirs)]
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert count == (11_164_362 if norm == "none" else 11_173_962)


@pytest.mark.parametrize(("norm", "train"), [("group", True), ("batch", False), ("batch", True), ("none", False)])
def test_resnet18_computes_torchvision_s_function(norm: str, train: bool, float64_default) -> None:
    # Prepare: torchvision's network with random norm parameters and statistics, copied into ours tensor by tensor
    torch.manual_seed(0)
    theirs = torchvision_cifar_resnet18(10, norm)
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = build_model("resnet18", 10, *CIFAR, norm=norm)
    copy_tensors(theirs, ours)
    x = batch(*CIFAR, size=4)

    # Execute
    theirs.train(train)
    ours.train(train)
    with torch.no_grad():
        expected, logits = theirs(x), ours(x)

    # Assert
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert logits.abs().max() > 1e-3


def test_resnet18_group_norm_has_32_groups_and_torchvision_s_init() -> None:
    # Execute
    model = make("resnet18", *CIFAR)  # group norm by default
    conv = model.blocks[2].conv2  # 128 -> 128, 3x3: fan out 1152

    # Assert: GroupNorm(32, C) after every convolution (stem, 2 per block, 3 projections), no buffers
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1 + 2 * 8 + 3
    assert {m.num_groups for m in norms} == {32}
    assert list(model.buffers()) == []
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)


# resnet18_nonorm as it was built before it became resnet18 without norm: a hand-written CIFAR ResNet18 whose layers
# are created in the same order with PyTorch's default init, so that a seed draws the same weights (weight_init:
# pytorch, the init its jobs drew before the option).
class PlainResNet18(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(3, 64, 3, padding=1, bias=False)])
        channels = 64
        for stage, width in enumerate((64, 128, 256, 512)):
            for index in range(2):
                stride = 2 if stage > 0 and index == 0 else 1
                self.layers.append(nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False))
                self.layers.append(nn.Conv2d(width, width, 3, padding=1, bias=False))
                if stride != 1 or channels != width:
                    self.layers.append(nn.Conv2d(channels, width, 1, stride=stride, bias=False))
                channels = width
        self.layers.append(nn.Linear(512, num_classes))


def resnet18_nonorm_names() -> list[str]:
    names = ["stem.weight"]
    for i in range(8):
        names += [f"blocks.{i}.conv1.weight", f"blocks.{i}.conv2.weight"]
        names += [f"blocks.{i}.shortcut.0.weight"] if i in (2, 4, 6) else []
    return names + ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("seed", [0, 3])
def test_resnet18_nonorm_keeps_its_parameter_names_and_initial_weights(seed: int) -> None:
    # Prepare
    torch.manual_seed(seed)
    plain = PlainResNet18(NUM_CLASSES)

    # Execute
    old = make("resnet18_nonorm", *CIFAR, seed=seed, weight_init="pytorch")
    new = make("resnet18", *CIFAR, seed=seed, norm="none", weight_init="pytorch")
    nonorm, none = make("resnet18_nonorm", *CIFAR, seed=seed), make("resnet18", *CIFAR, seed=seed, norm="none")

    # Assert: the layer-wise paper's runs that write the old init out keep their networks; resnet18 without norm is
    # that network, with either init
    assert [n for n, _ in old.named_parameters()] == resnet18_nonorm_names()
    assert list(old.buffers()) == []
    assert sum(p.numel() for p in old.parameters()) == 11_164_362 - (10 - NUM_CLASSES) * 513  # 11,164,362 at 10
    for ours, theirs in zip(old.parameters(), plain.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    for a, b in ((old, new), (nonorm, none)):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def reference_group_norm(x: torch.Tensor, groups: list[range], weight: torch.Tensor, bias: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """Each sample's channels of each group normalised by their own mean and (biased) variance, then scaled."""
    out = torch.empty_like(x)
    for group in groups:
        part = x[:, group.start:group.stop]
        mean = part.mean((1, 2, 3), keepdim=True)
        var = part.var((1, 2, 3), unbiased=False, keepdim=True)
        out[:, group.start:group.stop] = (part - mean) / torch.sqrt(var + eps)
    return out * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize(("channels", "groups"), [
    (8, [range(0, 4), range(4, 8)]),  # full width: the module itself
    (6, [range(0, 4), range(4, 6)]),  # the second group cut: its 2 kept channels alone
    (4, [range(0, 4)]),  # one whole group
    (3, [range(0, 3)]),  # the first group cut
])
def test_sliced_group_norm_keeps_whole_groups_and_normalises_a_cut_group_alone(channels, groups, float64_default):
    # Prepare: GroupNorm(2, 8), groups of 4 channels, with random affine parameters
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 8)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.uniform_(norm.bias, -0.5, 0.5)
    x = torch.randn(3, channels, 4, 4) * 2 + 1

    # Execute
    with torch.no_grad():
        got = sliced_norm(norm, x, full_width=channels == 8)

    # Assert
    expected = reference_group_norm(x, groups, norm.weight[:channels], norm.bias[:channels], norm.eps)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [0.25, 0.8])
def test_resnet18_with_group_norm_slices_to_any_width(width: float) -> None:
    # Prepare: FedAlign's width 0.8 keeps 408 of the last stage's 512 channels, 25.5 groups of 16
    model = make("resnet18", *CIFAR).eval()
    x = batch(*CIFAR)

    # Execute
    with torch.no_grad():
        logits = model.forward_width(x, width)
        h_in, _, full = model.forward_last_block(x)
        sliced, out = model.last_block_width(h_in, width)

    # Assert
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    assert sliced.shape[1] == (64 if width == 0.25 else 208) and out.shape[1] == (128 if width == 0.25 else 408)
    torch.testing.assert_close(model.forward_width(x, 1.0), full, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODEL_OPTIONS))
def test_a_model_built_with_its_option_defaults_written_out_is_the_model_built_without_them(name):
    # what an init's meaning leaves out (`InitJob.meaning`) must be what the model is built with anyway
    defaults = model_option_defaults(name)
    assert defaults, name  # every model with options has one at a fixed default
    shape = (80, 16, 80) if is_token_model(name) else (3, 32, 10)  # symbols / channels, length / size, classes
    inputs = dict(in_channels=shape[0], image_size=shape[1], num_classes=shape[2])

    models = []
    for options in ({}, defaults):
        torch.manual_seed(0)
        models.append(build_model(name, **inputs, **options))

    plain, written = models
    assert repr(plain) == repr(written)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), written.state_dict().values(),
                                                 strict=True))


def test_an_option_off_its_default_builds_another_model():
    # the test above can tell: a norm other than the default changes the model's layers
    torch.manual_seed(0)
    plain = build_model("resnet20", in_channels=3, image_size=32, num_classes=10)
    torch.manual_seed(0)
    other = build_model("resnet20", in_channels=3, image_size=32, num_classes=10, norm="group")
    assert model_option_defaults("resnet20") == {"norm": "batch"}
    assert repr(plain) != repr(other)


# -- resnet18 without norm draws its weights as the layer-wise paper's code does ------------------------------------
# The authors' network (LLMC/models/cifar_resnet18.py) is `torchvision_cifar_resnet18(classes, "none")`: torchvision's
# init (every convolution Kaiming-normal over its fan out, the Linear at PyTorch's default), then a new 3x3 stem at
# PyTorch's default. Its draws cannot be matched one for one: it draws a 7x7 stem, and its default init, before its
# Kaiming draws, and the new stem after them; so its tensors are compared by their spread.
NO_NORM = [("resnet18_nonorm", {}), ("resnet18", {"norm": "none"})]


def pytorch_default_std(fan_in: int) -> float:
    """The standard deviation of PyTorch's default weights, uniform within +-1/sqrt(fan_in)."""
    return 1 / (3 * fan_in) ** 0.5


@pytest.mark.parametrize(("name", "options"), NO_NORM)
def test_resnet18_without_norm_draws_its_blocks_over_their_fan_out_and_its_stem_at_pytorch_s_default(name, options):
    # Execute
    model = make(name, *CIFAR, **options)

    # Assert: every convolution of a block (the two 3x3 ones and the 1x1 projections) Kaiming-normal over its fan out,
    # sqrt(2 / (out channels x kernel area)); the stem and the classifier at PyTorch's default
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("blocks.")]
    assert len(convs) == 8 * 2 + 3
    for n, conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05), n
    assert model.stem.weight.std().item() == pytest.approx(pytorch_default_std(3 * 9), rel=0.1)
    assert model.classifier.weight.std().item() == pytest.approx(pytorch_default_std(512), rel=0.1)


def test_resnet18_without_norm_starts_as_the_authors_network_does():
    # Prepare: the authors' network and ours under the same seeds, on the same images
    seeds, x = range(4), batch(*CIFAR, size=8)
    theirs, ours = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        theirs.append(torchvision_cifar_resnet18(NUM_CLASSES, "none"))
        ours.append(make("resnet18_nonorm", *CIFAR, seed=seed))

    # Execute
    with torch.no_grad():
        scale = [[m(x).std().item() for m in models] for models in (theirs, ours)]
    spread = [[p.std().item() for p in m.parameters() if p.numel() >= 1000] for m in (theirs[0], ours[0])]

    # Assert: each weight tensor has the spread of the authors' (within the error of its sample std), and the logits
    # their scale: the geometric mean over the seeds within a factor 2.5 of the authors' (1.07 here; a seed's own
    # ratio varies several-fold; PyTorch's default init, the option's baseline, starts ~24x below it and fan-in
    # Kaiming ~25x above)
    assert len(spread[0]) == len(spread[1]) == 8 * 2 + 3 + 2
    for a, b in zip(*spread, strict=True):
        assert b == pytest.approx(a, rel=0.1)
    ratio = math.exp(sum(math.log(o / t) for t, o in zip(*scale, strict=True)) / len(seeds))
    assert 1 / 2.5 < ratio < 2.5


@pytest.mark.parametrize(("name", "options", "weight_init"), [
    ("resnet18_nonorm", {}, "torchvision_default_stem"),
    ("resnet18", {"norm": "none"}, "torchvision_default_stem"),
    ("resnet18", {}, "torchvision"),
    ("resnet18", {"norm": "batch", "stem": "imagenet"}, "torchvision"),
])
def test_resnet18_s_weight_init_default_follows_its_norm(name, options, weight_init):
    # Prepare
    defaults = model_option_defaults(name, options)

    # Execute
    plain, written = make(name, *CIFAR, **options), make(name, *CIFAR, **{**defaults, **options})

    # Assert: the default the init's meaning takes is the one the model is built with
    assert defaults["weight_init"] == weight_init
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), written.state_dict().values(),
                                                 strict=True))


# -- a new default of a model option reruns the inits that left it out, and none other ------------------------------
def init_settings_of(model: str, options: dict) -> dict:
    """The settings of a random init of `model` with the config's `options`, as the init rule's params carry them."""
    return to_settings(RandomInit(dataset="cifar10", model=model, model_options=options, in_channels=3, image_size=32,
                                  num_classes=10, init="random", kind="random", seed=0))


@pytest.mark.parametrize(("model", "options", "reruns", "weight_init"), [
    ("resnet18_nonorm", {}, True, "torchvision_default_stem"),  # the new default
    ("resnet18_nonorm", {"weight_init": "torchvision_default_stem"}, True, "torchvision_default_stem"),
    ("resnet18_nonorm", {"weight_init": "pytorch"}, False, "pytorch"),  # the old init written out
    ("resnet18", {"norm": "none"}, True, "torchvision_default_stem"),
    ("resnet18", {"norm": "none", "weight_init": "pytorch"}, False, "pytorch"),
    ("resnet18", {}, False, "torchvision"),  # with a norm the default is what its inits drew before the option
    ("resnet18", {"norm": "batch", "weight_init": "torchvision"}, False, "torchvision"),
    ("resnet18", {"weight_init": "kaiming"}, True, "kaiming"),  # another init
    ("resnet20", {}, False, None),  # a model without the option
])
def test_a_new_weight_init_default_reruns_exactly_the_inits_that_left_it_out(model, options, reruns, weight_init):
    # Prepare: the init's params as Snakemake recorded them before the option: the config's options as given
    recorded = {**init_settings_of(model, {}),
                "model_options": {k: v for k, v in options.items() if k != "weight_init"}}

    # Execute
    planned = init_settings_of(model, options)
    kept = kept_record(planned, [repr(recorded)], RandomInit.meaning)

    # Assert: a job reruns where it now computes with another init than before; either way it computes with the
    # settings of now, which build the model with its init
    assert (repr(kept) != repr(recorded)) is reruns
    assert kept == planned
    built = {**model_option_defaults(model, planned["model_options"]), **planned["model_options"]}
    assert built.get("weight_init") == weight_init


@pytest.mark.parametrize("name", ["layerwise", "fedalign", "meta"])
def test_the_papers_inits_write_weight_init_out_only_for_resnet18_without_norm(name):
    # Prepare
    config, runs = papers.load(name), papers.runs_of(name)

    # Execute
    jobs = [planned_init(config, runs, *key) for key in sorted({(r.dataset, r.model, r.init) for r in runs})]

    # Assert: the layer-wise paper's resnet18_nonorm inits alone change (and rerun), to the authors' init; the
    # FedAlign code's ImageNet ResNet18 (batch norm) and every other model keep their settings
    given = config["model_options"]
    changed = {(job.model, job.init): job.model_options["weight_init"] for job in jobs
               if "weight_init" in job.model_options and "weight_init" not in given.get(job.model, {})}
    nonorm = {(job.model, job.init) for job in jobs if job.model == "resnet18_nonorm"}
    assert changed == dict.fromkeys(nonorm, "torchvision_default_stem")
    assert bool(nonorm) is (name == "layerwise")


@pytest.mark.parametrize(("name", "options", "problem"), [
    ("resnet18_nonorm", {"weight_init": "pytorch"}, None),
    ("resnet18", {"norm": "batch", "weight_init": "torchvision_default_stem"}, None),
    ("resnet18_nonorm", {"weight_init": "torchvison"},
     "model_options.resnet18_nonorm.weight_init: 'torchvison' is not a weight init of resnet18_nonorm. Did you mean "
     "'torchvision'? Valid: kaiming, pytorch, torchvision, torchvision_default_stem"),
])
def test_planning_checks_a_weight_init_s_value(name, options, problem):
    # Execute / Assert: a config's wrong value is named at planning, before any job builds the model
    assert model_option_problems(name, options) == ([] if problem is None else [problem])


# -- char_lstm's new default cell (LEAF's BasicLSTMCell) reruns the inits that left `cell` out, and none other -------
def token_init_settings_of(model: str, options: dict) -> dict:
    """The settings of a random init of token model `model` on LEAF's Shakespeare (80 characters, 80 positions)."""
    return to_settings(RandomInit(dataset="shakespeare", model=model, model_options=options, in_channels=80,
                                  image_size=80, num_classes=80, init="random", kind="random", seed=0))


@pytest.mark.parametrize(("model", "options", "reruns", "cell"), [
    ("char_lstm", {}, True, "leaf"),  # the new default
    ("char_lstm", {"cell": "leaf"}, True, "leaf"),
    ("char_lstm", {"cell": "torch"}, False, "torch"),  # the old cell written out
    ("char_lstm", {"hidden_size": 128}, True, "leaf"),
    ("char_lstm", {"hidden_size": 128, "cell": "torch"}, False, "torch"),
    ("char_lstm", {"targets": "every"}, True, "leaf"),  # a sequence task's, as planning gives it
    ("char_gpt", {"bias": True}, False, None),  # token models without the option (char_gpt's `bias` at its old value)
    ("word_lstm", {}, False, None),
], ids=["default", "leaf", "torch", "hidden", "hidden-torch", "every", "char_gpt", "word_lstm"])
def test_a_new_char_lstm_cell_default_reruns_exactly_the_inits_that_left_it_out(model, options, reruns, cell):
    # Prepare: the init's params as Snakemake recorded them before the option: the config's options as given
    recorded = {**token_init_settings_of(model, {}), "model_options": {k: v for k, v in options.items() if k != "cell"}}

    # Execute
    planned = token_init_settings_of(model, options)
    kept = kept_record(planned, [repr(recorded)], RandomInit.meaning)

    # Assert: a job reruns where it now builds another model than before; either way it computes with the settings
    # of now, which build the model with its cell (the torch cell's with nn.LSTM's two biases per gate)
    assert (repr(kept) != repr(recorded)) is reruns
    assert kept == planned
    built = {**model_option_defaults(model, planned["model_options"]), **planned["model_options"]}
    assert built.get("cell") == cell
    if cell is not None:
        lstm = build_model(model, 80, 80, 80, **planned["model_options"]).lstm[0]
        assert hasattr(lstm, "bias_hh") is (cell == "torch") and hasattr(lstm, "bias") is (cell == "leaf")
