#!/usr/bin/env python3
"""PyTorch reference of `adp bench`: the same rows, the same JSON schema.

Times, on PyTorch, exactly what `adp bench` (src/bench.rs) times on burn:

* ``train ECE`` / ``train ADP``: one training step of Algorithm 1 on a fresh random batch —
  forward of all K members, the objective of src/loss.rs (L_ECE summed over members; entropy
  of the mean prediction with +1e-20 inside the log; log det(G + 1e-6 I) of the Gram matrix of
  the L2-normalised non-true-label predictions; ECE still computes entropy and log ED as
  metrics, as the Rust step does), the 1e-4 conv-kernel L2 term, the loss read back, one
  backward, Adam (lr 1e-3, betas 0.9/0.999, eps 1e-5: burn's defaults), and the step metrics
  (per-member cross-entropy, ensemble accuracy);
* ``inference``: ensemble forward in eval mode and the mean softmax read back;
* ``attack gradient``: the input gradient of -log F_y, F the mean softmax, in eval mode;
* ``attack pgd``: src/attack/pgd.rs mirrored (random start, sign steps of eps/10, projection,
  the goal check every step, the final judgement), counted in input gradients of one image;
* ``attack torchattacks-pgd``: ``torchattacks.PGD`` with the same eps, step and iterations on
  the same ensemble seen as a classifier with logits log F;
* ``train ECE [vmap]`` / ``train ADP [vmap]`` (``--variants vmap``): the same step on the
  ensemble vectorised as PyTorch documents for model ensembles: the members' parameters and
  buffers stacked (``torch.func.stack_module_state``), one member run through
  ``functional_call`` under ``vmap`` over the members, Adam on the stacked tensors (elementwise,
  so the same update as K separate Adams);
* ``train ECE [compile]`` / ``train ADP [compile]`` (``--variants compile``): the eager step
  with its forward and loss through ``torch.compile`` (backward by AOTAutograd; Adam and the
  read-backs stay eager); the compile happens in the warm-up, is bounded by
  ``--compile-timeout`` seconds, and its time is kept in the row (``compile_s``); a failure or
  time-out is recorded under ``errors`` instead of a row.

Every training row carries ``gflop_per_step``, the analytic FLOPs of bench/reference/flops.py.

Peak RSS is VmHWM of /proc/self/status, reset before each row where Linux allows it.

Run through `bench/compare` to get the ratios; alone:
    .venv/bin/python bench/reference/adp_bench.py --models cnn --members 3 --json ref.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

# The PyTorch twins of src/model live in interop/adp_models.py (one definition for both uses).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "interop"))

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("adp_bench.py needs PyTorch: run `bash python/setup.sh` and use .venv/bin/python")

try:
    import torchattacks
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("adp_bench.py needs torchattacks: run `bash python/setup.sh`")

from adp_models import Ensemble, he_normal_  # noqa: E402
from flops import train_step_flops  # noqa: E402

VARIANTS = ("vmap", "compile")

SHAPES = {"cnn": (1, 28), "resnet20": (3, 32)}
CLASSES = 10
EPS = 0.1  # the attack rows' budget, as in src/bench.rs (AttackSpec::main(kind, 0.1))


# ---------------------------------------------------------------- the objective (src/loss.rs)


def ensemble_cross_entropy(logits, labels, temperature=1.0):
    b, k, _ = logits.shape
    log_p = F.log_softmax(logits / temperature, dim=2)
    idx = labels.reshape(b, 1, 1).expand(b, k, 1)
    return -log_p.gather(2, idx).sum(dim=(1, 2))


def ensemble_entropy(probs, log_offset=1e-20):
    mean = probs.mean(dim=1)
    return -(mean * (mean + log_offset).log()).sum(dim=1)


def log_ensemble_diversity(probs, labels, ridge=1e-6):
    b, k, l = probs.shape
    keep = 1.0 - F.one_hot(labels, l).to(probs.dtype).reshape(b, 1, l)
    non_y = probs * keep
    m = non_y / (non_y.square().sum(dim=2, keepdim=True) + 1e-20).sqrt()
    gram = m @ m.transpose(1, 2) + ridge * torch.eye(k, dtype=probs.dtype, device=probs.device)
    chol = torch.linalg.cholesky(gram)
    return 2.0 * chol.diagonal(dim1=1, dim2=2).log().sum(dim=1)


def adp_loss(logits, labels, alpha, beta, temperature=1.0):
    ece = ensemble_cross_entropy(logits, labels, temperature).mean()
    probs = F.softmax(logits / temperature, dim=2)
    entropy = ensemble_entropy(probs).mean()
    log_det = log_ensemble_diversity(probs, labels).mean()
    total = ece
    if alpha != 0.0:
        total = total - alpha * entropy
    if beta != 0.0:
        total = total - beta * log_det
    return total, ece, entropy.detach(), log_det.detach()


# ---------------------------------------------------------------- measurement helpers


def peak_rss_mib() -> float:
    return rss_mib("VmHWM:")


def rss_mib(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def timed(warmup: int, steps: int, step) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / max(steps, 1)


def random_batch(kind: str, n: int, device):
    c, hw = SHAPES[kind]
    images = torch.rand(n, c, hw, hw, device=device)
    labels = (torch.arange(n, device=device) % CLASSES).long()
    return images, labels


def make_ensemble(kind: str, k: int, device) -> Ensemble:
    """K members initialised as burn does (He-normal weights and biases)."""
    c, hw = SHAPES[kind]
    mean, std = [0.5] * c, [0.25] * c
    ens = Ensemble(kind, k, (c, hw, hw), CLASSES, mean, std)
    he_normal_(ens, biases="he")
    return ens.to(device)


class VmapEnsemble:
    """The members of an Ensemble stacked and run as one under torch.func.vmap.

    Training mode updates the batch-norm running statistics in place; they are stacked buffers
    batched by vmap like the parameters, so each member keeps its own.
    """

    def __init__(self, ens: Ensemble):
        members = list(ens.members)
        self.params, self.buffers = torch.func.stack_module_state(members)
        self.base = copy.deepcopy(members[0]).to("meta")
        self.conv_weights = [
            f"{name}.weight" for name, m in self.base.named_modules() if isinstance(m, torch.nn.Conv2d)
        ]

        def one(params, buffers, x):
            return torch.func.functional_call(self.base, (params, buffers), (x,))

        self.run = torch.func.vmap(one, in_dims=(0, 0, None))

    def parameters(self):
        return list(self.params.values())

    def member_logits(self, x):
        return self.run(self.params, self.buffers, x).transpose(0, 1)  # [K, B, L] -> [B, K, L]

    def conv_l2(self):
        return sum(self.params[n].square().sum() for n in self.conv_weights)


class CompileTimeout(Exception):
    pass


# ---------------------------------------------------------------- the timed bodies


def forward_loss(ens, images, labels, alpha, beta, l2=1e-4):
    logits = ens.member_logits(images)
    total, ece, entropy, log_det = adp_loss(logits, labels, alpha, beta)
    return total + l2 * ens.conv_l2(), ece, entropy, log_det, logits


def train_step(ens, opt, kind, n, alpha, beta, device, loss_fn=forward_loss):
    images, labels = random_batch(kind, n, device)
    total, ece, entropy, log_det, logits = loss_fn(ens, images, labels, alpha, beta)
    value = total.item()
    if not math.isfinite(value):
        raise RuntimeError(f"non-finite loss {value} on random data")
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    logits = logits.detach()
    # The step metrics of src/train/mod.rs: per-member cross-entropy and ensemble accuracy.
    member_ce = F.cross_entropy(
        logits.transpose(1, 2), labels.unsqueeze(1).expand(-1, logits.shape[1]), reduction="none"
    ).mean(0)
    correct = (F.softmax(logits, 2).mean(1).argmax(1) == labels).sum()
    return value, ece.item(), entropy.item(), log_det.item(), member_ce.tolist(), correct.item()


def input_gradient(ens, images, labels):
    x = images.detach().clone().requires_grad_(True)
    log_f = ens(x)  # log F, the log of the mean softmax
    value = -log_f.gather(1, labels.reshape(-1, 1)).reshape(-1)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return grad, log_f.detach()


def our_pgd(ens, images, labels, eps, steps):
    """src/attack/pgd.rs with one restart; returns the number of input gradients taken."""
    x0 = images.detach()
    step = eps / 10.0
    x = (x0 + torch.empty_like(x0).uniform_(-eps, eps)).clamp(0.0, 1.0)
    grads = 0
    for _ in range(steps):
        g, log_f = input_gradient(ens, x, labels)
        grads += x.shape[0]
        _met = (log_f.argmax(1) != labels).tolist()
        x = torch.min(torch.max(x + step * g.sign(), x0 - eps), x0 + eps).clamp(0.0, 1.0)
    with torch.no_grad():  # AttackOutput::judge: success and the four norms of each example
        success = (ens(x).argmax(1) != labels).tolist()
        d = (x - x0).flatten(1)
        _norms = torch.stack(
            [(d.abs() > 1e-6).sum(1).float(), d.abs().sum(1), d.norm(dim=1), d.abs().amax(1)], 1
        ).tolist()
    return grads, success


# ---------------------------------------------------------------- the benchmark


def run(args) -> dict:
    device = torch.device(args.device)
    torch.zeros(1, device=device).cpu()
    baseline_rss_mib = rss_mib("VmRSS:")
    n = args.batch_size
    rows = []

    errors = []

    def push(task, kind, k, seconds, per_step, grads=None, **extra):
        row = {
            "task": task,
            "model": kind,
            "members": k,
            "images_per_s": per_step / seconds,
            "ms_per_batch": 1e3 * seconds,
            "peak_rss_mib": peak_rss_mib(),
            "gradients_per_s": grads,
            **extra,
        }
        if task.startswith("train "):
            row["gflop_per_step"] = train_step_flops(kind, k, n) / 1e9
        print(f"{task} {kind} K={k}: {row['images_per_s']:.1f} img/s", file=sys.stderr)
        rows.append(row)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for kind in args.models:
        for k in args.members:
            for task, (alpha, beta) in (("train ECE", (0.0, 0.0)), ("train ADP", (2.0, 0.5))):
                reset_peak_rss()
                ens = make_ensemble(kind, k, device).train()
                opt = torch.optim.Adam(ens.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-5)
                seconds = timed(
                    args.warmup,
                    args.steps,
                    lambda: train_step(ens, opt, kind, n, alpha, beta, device),
                )
                push(task, kind, k, seconds, n)
                del ens, opt
                for variant in args.variants:
                    reset_peak_rss()
                    try:
                        row, extra = train_variant(variant, args, kind, k, alpha, beta, device, task)
                        push(*row, **extra)
                    except Exception as e:  # noqa: BLE001 - reported, not fatal
                        first = (str(e).strip().splitlines() or [""])[0]
                        msg = f"{type(e).__name__}: {first}"
                        print(f"{task} [{variant}] {kind} K={k}: failed: {msg}", file=sys.stderr)
                        errors.append(
                            {"task": f"{task} [{variant}]", "model": kind, "members": k, "error": msg}
                        )
            reset_peak_rss()
            ens = make_ensemble(kind, k, device).eval()
            for p in ens.parameters():
                p.requires_grad_(False)
            images, labels = random_batch(kind, n, device)

            def infer():
                with torch.inference_mode():
                    ens.mean_probs(images).cpu().numpy()

            push("inference", kind, k, timed(args.warmup, args.steps, infer), n)
            reset_peak_rss()
            seconds = timed(
                args.warmup,
                args.steps,
                lambda: input_gradient(ens, images, labels)[0].cpu().numpy(),
            )
            push("attack gradient", kind, k, seconds, n)
            if k != args.members[0] or "pgd" not in args.attacks:
                continue
            reset_peak_rss()
            sync()
            start = time.perf_counter()
            grads, _ = our_pgd(ens, images, labels, EPS, args.attack_steps)
            sync()
            seconds = time.perf_counter() - start
            push("attack pgd", kind, k, seconds, n, grads / seconds)
            reset_peak_rss()
            # Ensemble.forward is log F: torchattacks' cross-entropy on it is -log F_y.
            atk = torchattacks.PGD(
                ens, eps=EPS, alpha=EPS / 10.0, steps=args.attack_steps, random_start=True
            )
            sync()
            start = time.perf_counter()
            atk(images, labels)
            sync()
            seconds = time.perf_counter() - start
            grads = args.attack_steps * n
            push("attack torchattacks-pgd", kind, k, seconds, n, grads / seconds)
    return {
        "device": f"PyTorch {torch.__version__} ({device}, {torch.get_num_threads()} threads)",
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "baseline_rss_mib": baseline_rss_mib,
        "config": {
            "models": args.models,
            "members": args.members,
            "batch_size": n,
            "warmup": args.warmup,
            "steps": args.steps,
            "device": "cpu" if device.type == "cpu" else device.type,
            "attacks": args.attacks,
            "attack_steps": args.attack_steps,
        },
        "rows": rows,
        "errors": errors,
    }


def train_variant(variant, args, kind, k, alpha, beta, device, task):
    """Times one training row of a PyTorch variant; returns push()'s arguments."""
    n = args.batch_size
    ens = make_ensemble(kind, k, device).train()
    extra = {}
    if variant == "vmap":
        model, loss_fn = VmapEnsemble(ens), forward_loss
        del ens
    else:  # compile
        model = ens
        loss_fn = torch.compile(forward_loss)
        # torch 2.9's Inductor warns about its own use of a deprecated helper on every compile.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch._inductor")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-5)

    def step():
        return train_step(model, opt, kind, n, alpha, beta, device, loss_fn)

    if variant == "compile":
        # The first step compiles the forward and the backward; bound it with an alarm.
        def alarm(_signum, _frame):
            raise CompileTimeout(f"compile did not finish in {args.compile_timeout} s")

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.alarm(args.compile_timeout)
        start = time.perf_counter()
        try:
            step()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        extra["compile_s"] = time.perf_counter() - start
    seconds = timed(args.warmup, args.steps, step)
    return (f"{task} [{variant}]", kind, k, seconds, n, None), extra


def markdown(report: dict) -> str:
    c = report["config"]
    out = [
        f"Device: {report['device']}, {report['threads']} threads, batch {c['batch_size']}, "
        f"{c['steps']} timed steps after {c['warmup']} warm-up",
        "",
        "| task | model | K | img/s | ms/batch | peak RSS MiB | grad evals/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        g = "" if r["gradients_per_s"] is None else f"{r['gradients_per_s']:.1f}"
        out.append(
            f"| {r['task']} | {r['model']} | {r['members']} | {r['images_per_s']:.1f} | "
            f"{r['ms_per_batch']:.1f} | {r['peak_rss_mib']:.0f} | {g} |"
        )
    for e in report["errors"]:
        out += ["", f"{e['task']} {e['model']} K={e['members']} failed: {e['error']}"]
    return "\n".join(out)


def csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=csv(str), default=["cnn", "resnet20"])
    p.add_argument("--members", type=csv(int), default=[3, 5, 20])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--attacks", type=csv(str), default=["pgd"])
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", type=csv(str), default=[],
                   help="extra training rows: vmap, compile (comma-separated; default none)")
    p.add_argument("--compile-timeout", type=int, default=600,
                   help="seconds the first (compiling) step of --variants compile may take")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    bad = [m for m in args.models if m not in SHAPES]
    if bad:
        p.error(f"--models: unknown {bad}, expected cnn and/or resnet20")
    if any(k < 2 for k in args.members):
        p.error("--members must all be at least 2")
    if args.steps < 1 or args.batch_size < 1 or args.attack_steps < 1:
        p.error("--steps, --batch-size and --attack-steps must be at least 1")
    bad = [a for a in args.attacks if a != "pgd"]
    if bad:
        p.error(f"--attacks: the reference mirrors only pgd, got {bad}")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}, expected some of {list(VARIANTS)}")
    if args.compile_timeout < 1:
        p.error("--compile-timeout must be at least 1 second")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: this PyTorch sees no CUDA device")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    report = run(args)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
