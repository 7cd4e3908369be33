#!/usr/bin/env python3
"""FLOPs of one training step of adp's ensembles, counted analytically.

Convention (the usual one for CNN training): only convolutions and fully connected layers
count; a multiply-add is 2 FLOPs; the forward pass of a member on one image costs
2 x sum over layers of MACs (conv: C_out x H_out x W_out x C_in/groups x k_h x k_w, bias not
counted; linear: out x in); the backward pass costs 2x the forward (input gradient and weight
gradient, each one product as large as the forward's; the first layer's input gradient, which
is not needed, is counted too); so a training step of K members on a batch of B costs
3 x forward x K x B. Batch norm, ReLU, pooling, the loss, the ADP regulariser and Adam are
elementwise or tiny and not counted.

The layer shapes come from the PyTorch twins of src/model (interop/adp_models.py), read off
with forward hooks on one image. `--check` compares with torch.utils.flop_counter, which counts
the convolutions and matrix products PyTorch actually runs in a forward and a backward.

    .venv/bin/python bench/reference/flops.py --models cnn,resnet20 --members 3,20 --batch-size 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "interop"))

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("flops.py needs PyTorch: run `bash python/setup.sh` and use .venv/bin/python")

from adp_models import ARCHITECTURES  # noqa: E402

SHAPES = {"cnn": (1, 28), "resnet20": (3, 32)}
CLASSES = 10


def member(kind: str) -> nn.Module:
    c, hw = SHAPES[kind]
    return ARCHITECTURES[kind]((c, hw, hw), CLASSES, [0.5] * c, [0.25] * c)


def layer_macs(kind: str) -> list[tuple[str, int]]:
    """(layer, multiply-adds of its forward on one image) for one member."""
    model, out = member(kind).eval(), []

    def hook(name):
        def f(m, _inputs, y):
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                out.append((name, y[0].numel() * (m.in_channels // m.groups) * kh * kw))
            else:
                out.append((name, m.out_features * m.in_features))

        return f

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook(name))
    c, hw = SHAPES[kind]
    with torch.no_grad():
        model(torch.zeros(1, c, hw, hw))
    return out


def forward_flops(kind: str) -> int:
    """FLOPs of one member's forward on one image."""
    return 2 * sum(m for _, m in layer_macs(kind))


def train_step_flops(kind: str, members: int, batch: int) -> int:
    """FLOPs of one training step: forward + backward (2x forward) of K members on B images."""
    return 3 * forward_flops(kind) * members * batch


def flop_counter(kind: str, batch: int) -> int:
    """torch.utils.flop_counter's count of one member's forward + backward on `batch` images."""
    from torch.utils.flop_counter import FlopCounterMode

    model = member(kind).train()
    c, hw = SHAPES[kind]
    x = torch.rand(batch, c, hw, hw, requires_grad=True)  # so the first input gradient counts
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops()


def csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=csv(str), default=["cnn", "resnet20"])
    p.add_argument("--members", type=csv(int), default=[3, 20])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--layers", action="store_true", help="print each layer's MACs")
    p.add_argument("--check", action="store_true", help="compare with torch.utils.flop_counter")
    args = p.parse_args(argv)
    bad = [m for m in args.models if m not in SHAPES]
    if bad:
        p.error(f"--models: unknown {bad}, expected cnn and/or resnet20")
    if args.batch_size < 1 or any(k < 1 for k in args.members):
        p.error("--batch-size and --members must be at least 1")
    print("| model | forward MFLOP/image | K | B | training step GFLOP |")
    print("|---|---:|---:|---:|---:|")
    for kind in args.models:
        fwd = forward_flops(kind)
        for k in args.members:
            step = train_step_flops(kind, k, args.batch_size)
            print(f"| {kind} | {fwd / 1e6:.2f} | {k} | {args.batch_size} | {step / 1e9:.2f} |")
    for kind in args.models:
        if args.layers:
            for name, macs in layer_macs(kind):
                print(f"{kind} {name}: {macs / 1e6:.3f} MMAC/image")
        if args.check:
            ours = 3 * forward_flops(kind) * args.batch_size
            theirs = flop_counter(kind, args.batch_size)
            print(
                f"{kind}: one member, B = {args.batch_size}: {ours / 1e9:.3f} GFLOP here, "
                f"{theirs / 1e9:.3f} by torch.utils.flop_counter ({theirs / ours:.4f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
