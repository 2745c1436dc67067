"""Models (torch), registered by `model.name` in `MODELS`: `mlp` (digits, synthetic), `cnn`
(MNIST), `cnn_bn` (the cnn with BatchNorm), `resnet18` (CIFAR-10, 3x3 stem); and the
conversions between a model and the ArrayRecord Flower carries.

Only floating-point tensors travel (parameters and BatchNorm running statistics);
integer buffers such as `num_batches_tracked` stay local, so every aggregator can average.
"""

from __future__ import annotations

import math

import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from fedguard.registry import Registry

# `model.name` -> a builder (input_shape, num_classes, hidden) -> nn.Module
MODELS = Registry("model")


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Two conv blocks and two dense layers (the usual MNIST CNN of the FL literature);
    `batch_norm` puts a BatchNorm after each convolution (`model=cnn_bn`)."""

    def __init__(self, in_channels: int, side: int, num_classes: int, hidden: int = 128, batch_norm: bool = False):
        super().__init__()
        def block(cin: int, cout: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            return [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, 32), *block(32, 64))
        flat = 64 * (side // 4) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool (the CIFAR-10 variant)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(input_shape) != 3:
        raise ValueError(f"model={name} needs image inputs (C, H, W), got shape {input_shape}")
    return input_shape


@MODELS.register("mlp", "two hidden dense layers of `model.hidden` units over the flattened input", knobs=("hidden",))
def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes, hidden)


@MODELS.register("cnn", "two conv blocks and two dense layers (`model.hidden`), for images", knobs=("hidden",))
def _cnn(input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    channels, side, _ = _image_shape("cnn", input_shape)
    return CNN(channels, side, num_classes, hidden)


@MODELS.register("cnn_bn", "the cnn with BatchNorm after each convolution (running statistics are exchanged "
                           "with the weights)", knobs=("hidden",))
def _cnn_bn(input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    channels, side, _ = _image_shape("cnn_bn", input_shape)
    return CNN(channels, side, num_classes, hidden, batch_norm=True)


@MODELS.register("resnet18", "ResNet-18 with a 3x3 stem and BatchNorm, for 32x32 images")
def _resnet18(input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    return ResNet18(_image_shape("resnet18", input_shape)[0], num_classes)


BATCHNORM_MODELS = ("cnn_bn", "resnet18")  # the models with BatchNorm layers


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> nn.Module:
    """The model `name` (`MODELS`) for inputs of `input_shape` and `num_classes` outputs."""
    return MODELS.get(name)(tuple(input_shape), num_classes, hidden)


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that travel: floating-point parameters and buffers, in a fixed order."""
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def param_mask(model: nn.Module) -> Tensor:
    """True at the parameter entries of the exchanged flat vector (False at buffers)."""
    names = {k for k, _ in model.named_parameters()}
    return torch.cat([torch.full((v.numel(),), k in names, dtype=torch.bool)
                      for k, v in exchanged_state(model).items()])


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in exchanged_state(model).items()})


def arrays_to_model(model: nn.Module, arrays: ArrayRecord) -> nn.Module:
    state = {k: torch.from_numpy(arrays[k].numpy().copy()) for k in exchanged_state(model)}
    model.load_state_dict(state, strict=False)
    return model


def flat_state(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """A state (`exchanged_state` or a modified copy of it) as one flat float32 CPU vector, in
    its key order: the layout of `flat_from_arrays(model_to_arrays(model))`."""
    return torch.cat([v.detach().reshape(-1).float().cpu() for v in state.values()])


def flat_from_arrays(arrays: ArrayRecord) -> torch.Tensor:
    """All arrays of a record as one flat float32 vector, in the record's key order."""
    return torch.cat([torch.from_numpy(a.numpy()).reshape(-1).float() for a in arrays.values()])


def arrays_from_flat(flat: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    out, offset = {}, 0
    for key, arr in like.items():
        n = math.prod(arr.shape)
        out[key] = Array(flat[offset:offset + n].reshape(arr.shape).numpy().astype(arr.numpy().dtype))
        offset += n
    return ArrayRecord(out)
