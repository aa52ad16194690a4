"""Feed-forward chains: networks whose Linear/Conv2d layers each feed the next, without skips (mlp, cnn_small,
convnet, lenet5, vgg11), and their permutation spec (`chain_permutation_axes`: one group per hidden layer)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedscape.core.names import unknown_name_error
from fedscape.models.layers import (
    BatchNorm2d,
    ImageClassifier,
    grouped_layout,
    sliced_conv,
    sliced_linear_in,
    sliced_norm,
    slim_channels,
    stacked_layers,
    stacked_linear,
    ungrouped_flat,
)
from fedscape.models.permutation import Axes, Layout, UnsupportedModelError, whole

# Modules a feed-forward chain may hold besides its Linear/Conv2d layers: all commute with a permutation of channels.
CHAIN_PASSIVE = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Sequential, nn.Identity, nn.Flatten)


def chain_permutation_axes(model: nn.Module, axes: Axes) -> None:
    """Feed-forward chains: every hidden Linear/Conv2d layer's outputs form one group (Ainsworth et al. 2023, Git
    Re-Basin); a batch norm right after a convolution (cnn_small's `norm: batch`) is permuted with that convolution's
    channels. The ``permutation_axes`` of every model of this module (`fedscape.models.permutation`)."""
    layers: list[tuple[str, nn.Conv2d | nn.Linear]] = []
    norms: dict[int, list[tuple[str, nn.Module]]] = {}  # layer index -> the batch norms over its outputs
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            layers.append((name, module))
        elif isinstance(module, nn.BatchNorm2d) and layers and isinstance(layers[-1][1], nn.Conv2d):
            norms.setdefault(len(layers) - 1, []).append((name, module))
        elif name and not isinstance(module, CHAIN_PASSIVE):
            raise UnsupportedModelError(f"{type(model).__name__}: module {name} ({type(module).__name__}) "
                                        f"breaks the chain of Linear/Conv2d layers")
    if not layers or layers[-1][1] is not getattr(model, "classifier", None):
        raise UnsupportedModelError(f"{type(model).__name__}: the last layer must be the classifier")
    prev: Layout | None = None
    prev_module: nn.Module | None = None
    for i, (name, module) in enumerate(layers):
        size = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        out = None if i == len(layers) - 1 else whole(name, size)
        if isinstance(prev_module, nn.Linear) and isinstance(module, nn.Conv2d):
            raise UnsupportedModelError(f"{name}: a convolution after a Linear layer is not a chain")
        if isinstance(prev_module, nn.Conv2d) and isinstance(module, nn.Linear):
            # a flatten of (channels, H, W): view the Linear's inputs as (channels, H*W)
            channels = prev_module.out_channels
            if module.in_features % channels:
                raise UnsupportedModelError(f"{name}: {module.in_features} inputs do not flatten {channels} channels")
            axes.views[f"{name}.weight"] = (size, channels, module.in_features // channels)
            axes.entries[f"{name}.weight"] = (out, prev, None)
            if module.bias is not None:
                axes.entries[f"{name}.bias"] = (out,)
        else:
            axes.weights(name, module, out, prev)
        for norm_name, norm in norms.get(i, []):
            axes.norm(norm_name, norm, out)
        prev, prev_module = out, module


class MLP(ImageClassifier):
    """Multilayer perceptron on flattened pixels, in -> 64 -> 64 -> classes with ReLU (digits baseline)."""

    vmap_faster_on_cpu = True  # 10 clients on digits: 3.0x, 50: 6.2x (one thread)
    permutation_axes = chain_permutation_axes  # one permutation group per hidden layer

    def __init__(self, num_classes: int, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))))


class SmallCNN(ImageClassifier):
    """Small CNN for 8x8 digits with a ``last_block`` for FedAlign/GradAug (Mendieta et al., 2022).

    ``norm="batch"`` puts a batch norm (Ioffe & Szegedy, 2015) after each convolution, before its ReLU, for the
    batch-norm analyses (`bn_stats`) on the digits; ``"none"`` keeps the original layers and their names. The grouped
    `forward_stacked` has no per-client batch norm (it does not declare ``stacks_batch_norm``): with batch norm,
    vectorised training is refused (`fl.vectorized.buffer_blocker`) and `client_parallel: auto` trains the clients
    one by one.
    """

    permutation_axes = chain_permutation_axes  # one permutation group per hidden layer

    def __init__(self, num_classes: int, in_channels: int, norm: str = "none") -> None:
        super().__init__()
        if norm not in ("none", "batch"):
            raise unknown_name_error("cnn_small norm", norm, ("none", "batch"))
        bn = norm == "batch"
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            *((BatchNorm2d(16),) if bn else ()),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            *((BatchNorm2d(32),) if bn else ()),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.last_block = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), *((BatchNorm2d(32),) if bn else ()),
                                        nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, 64)
        self.classifier = nn.Linear(64, num_classes)
        # He init (He et al. 2015) for the four layers followed by a ReLU. PyTorch's default,
        # kaiming_uniform_(a=sqrt(5)) with weight std 1/sqrt(3 fan_in), is sqrt(6) times too small for a
        # ReLU layer: the input-dependent signal shrinks ~3x per layer, the logits start ~40x smaller
        # (near-uniform outputs, loss ln 10) and so do the gradients, and SGD sat on a plateau for ~5
        # FedAvg rounds of the default config. The classifier, with no ReLU after it, keeps the default.
        for layer in (*self._convs(), self.fc):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def _convs(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        """The three convolutions, in forward order."""
        convs = [m for m in (*self.features, *self.last_block) if isinstance(m, nn.Conv2d)]
        return convs[0], convs[1], convs[2]

    def _norm_after(self, conv: nn.Conv2d) -> nn.Module:
        """The batch norm after `conv`, or an identity without norm."""
        modules = [*self.features, *self.last_block]
        nxt = modules[next(i for i, m in enumerate(modules) if m is conv) + 1]
        return nxt if isinstance(nxt, nn.BatchNorm2d) else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool(self.last_block(self.features(x)))
        return F.relu(self.fc(torch.flatten(x, 1)))

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """K stacked models: grouped convolutions, then batched matmuls (vectorised training)."""
        k = x.shape[0]
        h = stacked_layers(self.features, params, "features.", grouped_layout(x), k)
        h = ungrouped_flat(self.pool(stacked_layers(self.last_block, params, "last_block.", h, k)), k)
        h = F.relu(stacked_linear(h, params["fc.weight"], params["fc.bias"]))
        return stacked_linear(h, params["classifier.weight"], params["classifier.bias"])

    def _head(self, h: Tensor, width: float) -> Tensor:
        """Logits from a (possibly sliced) last-block output, the hidden fc layer sliced to ``width`` as every hidden
        layer of a GradAug sub-network (Yang et al. 2020): flattening is channel-major, so the first k channels are
        the fc layer's first 4k inputs, and its first slim_channels(64, width) outputs are the classifier's inputs."""
        h = torch.flatten(self.pool(h), 1)
        kept = slim_channels(self.fc.out_features, width)
        h = F.relu(F.linear(h, self.fc.weight[:kept, : h.shape[1]], self.fc.bias[:kept]))
        return sliced_linear_in(self.classifier, h)

    def forward_width(self, x: Tensor, width: float) -> Tensor:
        conv1, conv2, _ = self._convs()
        full = width == 1
        h = F.relu(sliced_norm(self._norm_after(conv1), sliced_conv(conv1, x, slim_channels(conv1.out_channels, width)),
                               full))
        h = F.relu(sliced_norm(self._norm_after(conv2), sliced_conv(conv2, h, slim_channels(conv2.out_channels, width)),
                               full))
        return self._head(self.last_block_width(self.features[-1](h), width)[1], width)

    def forward_last_block(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h_in = self.features(x)
        h_out = self.last_block(h_in)
        return h_in, h_out, self.classifier(F.relu(self.fc(torch.flatten(self.pool(h_out), 1))))

    def last_stage_whole_at(self, width: float) -> bool:
        conv = self._convs()[2]
        return all(slim_channels(c, width) == c for c in (conv.in_channels, conv.out_channels))

    def last_block_width(self, h: Tensor, width: float) -> tuple[Tensor, Tensor]:
        conv = self._convs()[2]
        h = h[:, : slim_channels(conv.in_channels, width)]
        return h, F.relu(sliced_norm(self._norm_after(conv), sliced_conv(conv, h, slim_channels(conv.out_channels,
                                                                                                width)), width == 1))


def stacked_convs_then_linears(model: nn.Module, params: Mapping[str, Tensor], x: Tensor,
                               hidden: tuple[str, ...]) -> Tensor:
    """The stacked forward of K copies of a chain `features` (convolutions, ReLU, pooling), flattened, then the
    hidden Linear layers `hidden` with ReLU and the classifier: grouped convolutions, then batched
    matmuls (vectorised training)."""
    k = x.shape[0]
    h = ungrouped_flat(stacked_layers(model.features, params, "features.", grouped_layout(x), k), k)
    for name in hidden:
        h = F.relu(stacked_linear(h, params[f"{name}.weight"], params[f"{name}.bias"]))
    return stacked_linear(h, params["classifier.weight"], params["classifier.bias"])


class ConvNet(ImageClassifier):
    """ConvNet with 6 conv + 2 FC layers for 32x32 inputs (Li et al., 2022, FL loss-landscape pilot study)."""

    permutation_axes = chain_permutation_axes  # one permutation group per hidden layer

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),  # 32 -> 30
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 15
            nn.Conv2d(32, 64, 3),  # -> 13
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 6
            nn.Conv2d(64, 64, 3),  # -> 4
            nn.ReLU(),
            *(layer for _ in range(3) for layer in (nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())),
        )
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.classifier = nn.Linear(64, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(torch.flatten(self.features(x), 1)))

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """K stacked models: grouped convolutions, then batched matmuls (vectorised training)."""
        return stacked_convs_then_linears(self, params, x, ("fc",))



class LeNet5(ImageClassifier):
    """The LeNet-5-like CNN of Hsu et al. 2020 (Federated Visual Classification with Real-World Data Distribution)
    that Caldarola et al. 2022 (Improving Generalization in Federated Learning by Seeking Flat Minima) train on
    CIFAR: two 5x5 convolutions of 64 filters (no padding), each followed by ReLU and a 2x2 max-pool, then FC 1600 ->
    384 -> 192 -> classes with ReLU, no normalisation; torch's default initialisation, as the authors' code
    (models/cifar10/cnn.py of their repository under github.com/debcaldarola) keeps it."""

    permutation_axes = chain_permutation_axes  # one permutation group per hidden layer

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5),  # 32 -> 28
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 14
            nn.Conv2d(64, 64, 5),  # -> 10
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 5
        )
        self.fc1 = nn.Linear(64 * 5 * 5, 384)
        self.fc2 = nn.Linear(384, 192)
        self.classifier = nn.Linear(192, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(torch.flatten(self.features(x), 1)))))

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """K stacked models: grouped convolutions, then batched matmuls (vectorised training)."""
        return stacked_convs_then_linears(self, params, x, ("fc1", "fc2"))


VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(ImageClassifier):
    """VGG11 without batch norm (Simonyan & Zisserman, 2015, configuration A's 8 convolutions); CIFAR variant, one
    Linear(512, classes) head (9.2M parameters at 10 classes). Not the layer-wise paper's network: its code trains
    torchvision's vgg11 (LLMC/models/vgg.py), whose 7x7 adaptive average pool feeds a 25088-4096-4096-classes head with
    dropout (128.8M parameters at 10 classes, 515 MB a checkpoint), drawn with torchvision's init."""

    permutation_axes = chain_permutation_axes  # one permutation group per hidden layer

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.features(x), 1)

