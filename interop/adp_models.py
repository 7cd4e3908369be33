"""PyTorch twins of adp's models (src/model/{cnn,resnet,ensemble}.rs) and a loader for
`adp export` files.

    from adp_models import load_adp
    model, meta = load_adp("adp.pt")          # or "adp.safetensors"
    log_probs = model(images)                  # log of the mean softmax, [B, L]
    logits = model.member_logits(images)       # [B, K, L]

Every member takes pixels in [0, 1] and normalises them itself with its `norm.mean` and
`norm.std` buffers, exactly as the Rust code does, so attack budgets are in pixel space.
`Ensemble.forward` returns log(mean softmax): the cross-entropy of that output is
-log F_y, the loss adp's attacks ascend, so torchattacks can attack the model directly.
interop/README.md maps every burn parameter to its name here.

The benchmark reference (bench/reference/adp_bench.py) builds its ensembles here too:
`Ensemble(kind, k, (c, h, w), classes, mean, std)`, `he_normal_(model, biases="he")` for burn's
initialisation, and `conv_l2()` for the weight-decay term. None of these change the state dict.
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# Keras' BatchNorm constants, as src/model/resnet.rs uses them (momentum 0.99 in Keras'
# convention is 0.01 in torch's).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class Normalize(nn.Module):
    """(x - mean) * (1 / std) per channel, the mean per channel [C] or per pixel [C, H, W]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        c = self.std.numel()
        mean = self.mean.view(1, c, 1, 1) if self.mean.dim() == 1 else self.mean.unsqueeze(0)
        return (x - mean) * (1.0 / self.std).view(1, c, 1, 1)


def he_normal_(module, biases="zeros"):
    """Keras' he_normal (std = sqrt(2 / fan_in)) on conv and dense weights. Biases: "zeros"
    (Keras; the default here) or "he" (burn's KaimingNormal, which draws them from the same
    normal, fan_in that of the weight)."""
    if biases not in ("zeros", "he"):
        raise ValueError(f"biases must be 'zeros' or 'he', got {biases!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if biases == "zeros":
                nn.init.zeros_(m.bias)
            else:
                nn.init.normal_(m.bias, 0.0, math.sqrt(2.0 / m.weight[0].numel()))


def _squares(*weights):
    return sum(w.square().sum() for w in weights)


class Cnn(nn.Module):
    """conv(32)-pool-conv(64)-pool-dense(128)-dense(L), as src/model/cnn.rs."""

    def __init__(self, input_shape, num_classes, mean, std):
        super().__init__()
        c, h, w = input_shape
        self.norm = Normalize(mean, std)
        self.conv1 = nn.Conv2d(c, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 128)
        self.fc2 = nn.Linear(128, num_classes)
        he_normal_(self)

    def forward(self, x):
        x = self.norm(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))

    def conv_l2(self):
        """Sum of the squared convolution kernels, biases excluded (src/model/mod.rs)."""
        return _squares(self.conv1.weight, self.conv2.weight)


class ConvBn(nn.Module):
    """3x3 convolution (with bias, as burn's Conv2d) followed by BatchNorm."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.conv = nn.Conv2d(i, o, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(o, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """Two conv-BN layers; identity or 1x1 projection shortcut (no BN); ReLU after the sum."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.a = ConvBn(i, o, stride)
        self.b = ConvBn(o, o, 1)
        self.shortcut = nn.Conv2d(i, o, 1, stride=stride) if stride != 1 else None

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return F.relu(x + y)


class ResNet(nn.Module):
    """ResNet v1 of depth 6n + 2 (n = 3: ResNet-20), as src/model/resnet.rs."""

    def __init__(self, input_shape, num_classes, mean, std, n=3):
        super().__init__()
        self.norm = Normalize(mean, std)
        self.stem = ConvBn(input_shape[0], 16, 1)
        blocks, channels = [], 16
        for stage in range(3):
            out = 16 << stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out, stride))
                channels = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(64, num_classes)
        he_normal_(self)

    def forward(self, x):
        x = F.relu(self.stem(self.norm(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))

    def conv_l2(self):
        """Sum of the squared convolution kernels (shortcuts included), biases excluded."""
        weights = [self.stem.conv.weight]
        for b in self.blocks:
            weights += [b.a.conv.weight, b.b.conv.weight]
            if b.shortcut is not None:
                weights.append(b.shortcut.weight)
        return _squares(*weights)


ARCHITECTURES = {"cnn": Cnn, "resnet20": ResNet}


class Ensemble(nn.Module):
    """K members; the prediction is the mean of their softmax outputs (Eq. 1)."""

    def __init__(self, architecture, members, input_shape, num_classes, mean, std):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
        build = ARCHITECTURES[architecture]
        self.members = nn.ModuleList(
            [build(input_shape, num_classes, mean, std) for _ in range(members)]
        )

    def conv_l2(self):
        """Sum over members of `conv_l2()`."""
        return sum(m.conv_l2() for m in self.members)

    def member_logits(self, x):
        """Each member's logits, [B, K, L]."""
        return torch.stack([m(x) for m in self.members], dim=1)

    def mean_probs(self, x):
        """F = (1/K) sum_k softmax(z^k), [B, L]."""
        return F.softmax(self.member_logits(x), dim=2).mean(dim=1)

    def log_mean_probs(self, x):
        """log F, computed stably as logsumexp_k(log softmax(z^k)) - log K, [B, L]."""
        lp = F.log_softmax(self.member_logits(x), dim=2)
        return torch.logsumexp(lp, dim=1) - math.log(len(self.members))

    def forward(self, x):
        """log F: what adp's attacks differentiate (cross-entropy on it is -log F_y)."""
        return self.log_mean_probs(x)


def meta_path(path):
    """The description `adp export` writes next to a weights file: `<path>.json`."""
    return str(path) + ".json"


def read_state_dict(path):
    """The state dict in `path` (.safetensors or .pt) and its description (or None)."""
    path = str(path)
    meta = None
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        state = load_file(path)
        with safe_open(path, framework="pt") as f:
            text = (f.metadata() or {}).get("adp")
        if text:
            meta = json.loads(text)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if meta is None and os.path.exists(meta_path(path)):
        with open(meta_path(path)) as f:
            meta = json.load(f)
    return state, meta


def build(meta):
    """An Ensemble with the architecture an `adp export` description names."""
    return Ensemble(
        meta["architecture"],
        meta["members"],
        meta["input_shape"],
        meta["num_classes"],
        meta["mean"],
        meta["std"],
    )


def load_adp(path):
    """Loads an `adp export` file (strictly) into an Ensemble in eval mode; returns (model, meta)."""
    state, meta = read_state_dict(path)
    if meta is None:
        raise ValueError(
            f"{path} has no description (safetensors metadata 'adp' or {meta_path(path)}); "
            "re-export it with `adp export`"
        )
    model = build(meta)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta


def describe(model, architecture, dataset, input_shape, label="torch"):
    """The description `adp import` reads for a model built here (write it to `<weights>.json`)."""
    member = model.members[0]
    return {
        "format": "adp-ensemble",
        "adp_version": "torch",
        "architecture": architecture,
        "members": len(model.members),
        "num_classes": (member.fc2 if architecture == "cnn" else member.head).out_features,
        "input_shape": list(input_shape),
        "mean": member.norm.mean.tolist(),
        "std": member.norm.std.tolist(),
        "batch_norm_eps": BN_EPS,
        "batch_norm_momentum": BN_MOMENTUM,
        "dataset": dataset,
        "label": label,
    }
