"""End-to-end interop check between adp (Rust) and PyTorch; run through interop/check.sh.

For each run directory (copied first, never modified):
  (a) `adp export` to .pt and .safetensors, load both into interop/adp_models.Ensemble, and compare
      every member's logits on the first N test images with adp's (max abs diff <= 1e-4);
  (b) PGD with the same eps, steps, step size and random start on the same weights and images:
      `adp eval --attack pgd` against torchattacks.PGD on log(mean softmax) (robust accuracy
      within 1 point);
  (c) a torch-initialised, briefly torch-trained copy of the architecture saved with torch.save,
      imported with `adp import`, gives the same logits in adp (max abs diff <= 1e-4);
  (d) `adp eval --attack apgd-ce` and `--attack square` against the AutoAttack authors' APGDAttack
      and SquareAttack (fra31/auto-attack where it is installed, else torchattacks' ports of them)
      on the same weights and images: robust accuracies within twice the binomial standard error
      of their difference, 2*sqrt(2p(1-p)/n).
Prints one table and exits non-zero when a check fails.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adp_models import build, describe, load_adp  # noqa: E402

LOGIT_TOL = 1e-4
ACC_TOL = 1.0  # percentage points


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"command failed ({done.returncode}):\n{done.stdout}")
    return done.stdout


def load_reference(path):
    from safetensors.torch import load_file

    r = load_file(path)
    return r["images"], r["labels"], r["logits"]


def max_diff(model, images, logits):
    with torch.no_grad():
        return (model.member_logits(images) - logits).abs().max().item()


def accuracy(model, images, labels):
    with torch.no_grad():
        return 100.0 * (model(images).argmax(1) == labels).float().mean().item()


def torch_pgd(model, images, labels, eps, steps, step_size, seed):
    import torchattacks

    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps, alpha=step_size, steps=steps, random_start=True)
    adv = torch.cat([attack(images[i : i + 250], labels[i : i + 250]) for i in range(0, len(images), 250)])
    assert (adv - images).abs().max() <= eps + 1e-6
    return accuracy(model, adv, labels)


def reference_attacks():
    """The authors' APGD-CE and Square (fra31/auto-attack), else torchattacks' ports of them."""
    try:
        from autoattack.autopgd_base import APGDAttack
        from autoattack.square import SquareAttack

        def apgd(model, eps, steps, seed):
            a = APGDAttack(model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps, seed=seed, loss="ce", device="cpu")
            return a.perturb

        def square(model, eps, queries, seed):
            # AutoAttack's standard version: p_init 0.8, the p schedule not rescaled to the queries.
            a = SquareAttack(model, p_init=0.8, n_queries=queries, eps=eps, norm="Linf", n_restarts=1,
                             seed=seed, loss="margin", resc_schedule=False, device="cpu")
            return a.perturb

        return "fra31/auto-attack", apgd, square
    except ImportError:
        import torchattacks

        def apgd(model, eps, steps, seed):
            return torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)

        def square(model, eps, queries, seed):
            return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8,
                                       loss="margin", resc_schedule=False, seed=seed)

        return f"torchattacks {torchattacks.__version__}", apgd, square


def check_autoattack(args, run_copy, model, images, labels, data, rows, name):
    """(d): APGD-CE and Square in adp and in the reference implementation, on the same images."""
    n = args.aa_images
    out_json = os.path.join(run_copy, "eval.json")
    run(
        [args.adp, "eval", run_copy, "--attack", "apgd-ce", "--eps", str(args.eps), "--attack", "square", "--eps",
         str(args.eps), "--steps", str(args.apgd_steps), "--queries", str(args.square_queries), "--limit", str(n),
         "--seed", str(args.seed), "--no-indicators"] + data
    )
    with open(out_json) as f:
        ours = [100.0 * r["accuracy"] for r in json.load(f)["robust"]]
    source, apgd, square = reference_attacks()
    x, y = images[:n], labels[:n]
    theirs = []
    for attack in [apgd(model, args.eps, args.apgd_steps, args.seed), square(model, args.eps, args.square_queries, args.seed)]:
        adv = torch.cat([attack(x[i : i + 250], y[i : i + 250]) for i in range(0, n, 250)])
        assert (adv - x).abs().max() <= args.eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        theirs.append(accuracy(model, adv, y))
    names = [f"APGD-CE {args.apgd_steps} iterations", f"Square {args.square_queries} queries"]
    for label, a, b in zip(names, ours, theirs):
        p = (a + b) / 200.0
        tol = 2.0 * math.sqrt(2.0 * p * (1.0 - p) / n)
        # Compared as counts of images, as in (b).
        ok = abs(round(a * n / 100) - round(b * n / 100)) <= tol * n + 1e-9
        rows.append((name, f"{label} eps={args.eps:g}, {n} images: adp / {source}", f"{a:.1f} / {b:.1f}",
                     f"abs diff <= {100 * tol:.1f}", ok))


def check_run(args, run_dir, rows):
    name = os.path.basename(os.path.normpath(run_dir))
    work = tempfile.mkdtemp(prefix=f"adp-interop-{name}-")
    run_copy = os.path.join(work, "run")
    shutil.copytree(run_dir, run_copy, ignore=shutil.ignore_patterns("checkpoint"))
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    n = max(args.images, args.pgd_images, args.aa_images)

    # (a) export in both formats, compare logits.
    pt = os.path.join(work, "adp.pt")
    st = os.path.join(work, "adp.safetensors")
    run([args.adp, "export", run_copy, "--format", "pytorch", "--out", pt, "--reference", str(n)] + data)
    run([args.adp, "export", run_copy, "--format", "safetensors", "--out", st])
    images, labels, logits = load_reference(pt + ".reference.safetensors")
    model = None
    for fmt, path in [("pytorch", pt), ("safetensors", st)]:
        model, meta = load_adp(path)
        d = max_diff(model, images[: args.images], logits[: args.images])
        rows.append((name, f"export {fmt}: max abs logit diff, {args.images} images", f"{d:.2e}", f"<= {LOGIT_TOL:g}", d <= LOGIT_TOL))

    # (b) PGD on both sides.
    p = args.pgd_images
    step = args.eps / 10 if args.step_size is None else args.step_size
    out = run(
        [args.adp, "eval", run_copy, "--attack", "pgd", "--eps", str(args.eps), "--steps", str(args.steps),
         "--step-size", str(step), "--limit", str(p), "--seed", str(args.seed), "--no-indicators"] + data
    )
    with open(os.path.join(run_copy, "eval.json")) as f:
        report = json.load(f)
    adp_acc = 100.0 * report["robust"][0]["accuracy"]
    clean_torch = accuracy(model, images[:p], labels[:p])
    torch_acc = torch_pgd(model, images[:p], labels[:p], args.eps, args.steps, step, args.seed)
    rows.append((name, f"clean accuracy (torch), {p} images", f"{clean_torch:.1f}", "", True))
    label = f"PGD eps={args.eps:g} {args.steps}x{step:g}, {p} images: adp / torchattacks"
    # Compared as counts of images: adp's accuracy comes through f32, so 100 * 444 / 500 is not
    # exactly 88.8 and a difference of exactly ACC_TOL points could fail on rounding alone.
    adp_n, torch_n = round(adp_acc * p / 100), round(torch_acc * p / 100)
    rows.append((name, label, f"{adp_acc:.1f} / {torch_acc:.1f}", f"abs diff <= {ACC_TOL:g}", abs(adp_n - torch_n) <= ACC_TOL * p / 100))

    # (c) torch-trained weights into adp.
    torch.manual_seed(args.seed)
    twin = build(meta)
    optim = torch.optim.Adam(twin.parameters(), lr=1e-3)
    twin.train()
    for i in range(args.torch_steps):
        x, y = images[i * 32 : (i + 1) * 32], labels[i * 32 : (i + 1) * 32]
        loss = F.cross_entropy(twin.member_logits(x).flatten(0, 1), y.repeat_interleave(len(twin.members)))
        optim.zero_grad()
        loss.backward()
        optim.step()
    twin.eval()
    saved = os.path.join(work, "torch.pt")
    torch.save(twin.state_dict(), saved)
    with open(saved + ".json", "w") as f:  # the description adp import reads beside the file
        json.dump(describe(twin, meta["architecture"], meta["dataset"], meta["input_shape"]), f)
    imported = os.path.join(work, "imported")
    run([args.adp, "import", saved, "--model", meta["architecture"], "--members", str(meta["members"]),
         "--dataset", meta["dataset"], "--out", imported] + data)
    back = os.path.join(work, "imported.safetensors")
    run([args.adp, "export", imported, "--format", "safetensors", "--out", back, "--reference", str(args.images)] + data)
    _, _, adp_logits = load_reference(back + ".reference.safetensors")
    d = max_diff(twin, images[: args.images], adp_logits)
    rows.append((name, f"import torch.save ({args.torch_steps} Adam steps): max abs logit diff", f"{d:.2e}", f"<= {LOGIT_TOL:g}", d <= LOGIT_TOL))

    # (d) APGD-CE and Square against the authors' implementations.
    if args.aa_images > 0:
        model.eval()
        check_autoattack(args, run_copy, model, images, labels, data, rows, name)
    if not args.keep:
        shutil.rmtree(work)


def small_run(args):
    """Trains a 2-member CNN for one epoch on 2,000 MNIST images."""
    out = os.path.join(tempfile.mkdtemp(prefix="adp-interop-train-"), "cnn")
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    run([args.adp, "train", "--model", "cnn", "--members", "2", "--epochs", "1", "--train-limit", "2000",
         "--dataset", "mnist", "--out", out] + data)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="run directories (default: train a small CNN run)")
    ap.add_argument("--adp", required=True, help="the adp binary")
    ap.add_argument("--data-dir", help="data set directory (default: the run's)")
    ap.add_argument("--images", type=int, default=1000, help="images for the logit comparisons")
    ap.add_argument("--pgd-images", type=int, default=1000, help="images attacked by PGD")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--step-size", type=float, help="default eps/10")
    ap.add_argument("--torch-steps", type=int, default=5, help="Adam steps of the torch model for (c)")
    ap.add_argument("--aa-images", type=int, default=500, help="images attacked by APGD-CE and Square in (d); 0 skips (d)")
    ap.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE iterations in (d)")
    ap.add_argument("--square-queries", type=int, default=1000, help="Square queries in (d)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    for r in args.runs or [small_run(args)]:
        check_run(args, r, rows)
    print()
    print("| run | check | value | limit | ok |")
    print("|---|---|---|---|---|")
    for run_name, check, value, limit, ok in rows:
        print(f"| {run_name} | {check} | {value} | {limit} | {'yes' if ok else 'NO'} |")
    failed = [r for r in rows if not r[4]]
    if failed:
        print(f"\n{len(failed)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
