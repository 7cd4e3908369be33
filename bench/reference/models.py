"""PyTorch twins of the ensemble members in src/model (used by the benchmark reference only).

Kept faithful to the Rust definitions so that both sides time the same computation:

* ``Normalize``: per-channel ``(x - mean) / std`` inside the model (src/model/mod.rs).
* ``Cnn``: conv3x3(32, pad 1)-ReLU-maxpool2, conv3x3(64, pad 1)-ReLU-maxpool2, dense(128)-ReLU,
  dense(L), all with biases (src/model/cnn.rs).
* ``ResNet``: Keras ``resnet_v1`` of depth 6n+2 (n = 3: ResNet-20): conv-BN-ReLU stem with 16
  channels, 3 stages of n basic blocks with 16/32/64 channels, stride 2 and a 1x1 projection
  shortcut with bias and without BN at the start of stages 2 and 3, ReLU after the addition,
  global average pooling, dense(L). BatchNorm momentum 0.01 (burn's convention, Keras 0.99) and
  eps 1e-3 (src/model/resnet.rs).
* Weights He-normal (std = sqrt(2 / fan_in)) like burn's ``KaimingNormal`` with gain sqrt(2).
* ``conv_l2``: the sum of squared convolution kernels, biases excluded.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def _he_normal(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            std = math.sqrt(2.0 / fan_in)
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.normal_(m.bias, 0.0, std)


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean).reshape(1, c, 1, 1))
        self.register_buffer("inv", 1.0 / torch.tensor(std).reshape(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv


class Cnn(nn.Module):
    def __init__(self, channels: int, hw: int, classes: int, mean, std):
        super().__init__()
        self.norm = Normalize(mean, std)
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (hw // 4) * (hw // 4), 128)
        self.fc2 = nn.Linear(128, classes)
        _he_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

    def conv_l2(self) -> torch.Tensor:
        return self.conv1.weight.square().sum() + self.conv2.weight.square().sum()


class ConvBn(nn.Module):
    def __init__(self, i: int, o: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(i, o, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(o, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, i: int, o: int, stride: int):
        super().__init__()
        self.a = ConvBn(i, o, stride)
        self.b = ConvBn(o, o, 1)
        self.shortcut = nn.Conv2d(i, o, 1, stride=stride) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(F.relu(self.a(x)))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return F.relu(x + y)


class ResNet(nn.Module):
    def __init__(self, channels: int, classes: int, mean, std, n: int = 3):
        super().__init__()
        self.norm = Normalize(mean, std)
        self.stem = ConvBn(channels, 16, 1)
        blocks = []
        width = 16
        for stage in range(3):
            out = 16 << stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(width, out, stride))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, classes)
        _he_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(self.norm(x)))
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))

    def conv_l2(self) -> torch.Tensor:
        total = self.stem.conv.weight.square().sum()
        for b in self.blocks:
            total = total + b.a.conv.weight.square().sum() + b.b.conv.weight.square().sum()
            if b.shortcut is not None:
                total = total + b.shortcut.weight.square().sum()
        return total


def member(kind: str, channels: int, hw: int, classes: int, mean, std) -> nn.Module:
    """One member, ``kind`` as `adp` names it: ``cnn`` or ``resnet20``."""
    if kind == "cnn":
        return Cnn(channels, hw, classes, mean, std)
    if kind == "resnet20":
        return ResNet(channels, classes, mean, std, n=3)
    raise ValueError(f"unknown model kind {kind!r} (expected cnn or resnet20)")


class Ensemble(nn.Module):
    """K members; ``forward`` returns the logits of every member, ``[B, K, L]``."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)


def log_mean_probs(logits: torch.Tensor) -> torch.Tensor:
    """log F = logsumexp_k log_softmax(z^k) - log K, ``[B, L]`` (EnsembleOutput::log_mean_probs)."""
    k = logits.shape[1]
    return torch.logsumexp(F.log_softmax(logits, dim=2), dim=1) - math.log(k)


class LogMeanSoftmax(nn.Module):
    """The ensemble seen as a classifier whose "logits" are log F, for torchattacks (whose
    cross-entropy on log F equals -log F_y since log F is already normalised)."""

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_mean_probs(self.ensemble(x))
