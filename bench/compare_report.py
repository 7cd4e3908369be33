#!/usr/bin/env python3
"""Prints the ratios of issue 6 from one `bench/compare` run directory (standard library only).

Reads DIR/adp-BACKEND.json (`adp bench --json`, one per burn backend), DIR/pytorch.json
(bench/reference/adp_bench.py, same schema) and DIR/machine.txt, and prints for each backend:

1. training step: adp img/s / PyTorch img/s, target >= 1.2, every (model, K, objective) row;
2. ADP's extra cost over ECE within adp: ms(ADP) / ms(ECE) - 1, target <= 3% at K = 3 and
   <= 5% at K = 20 (other K shown without target);
3. attack gradient throughput: adp PGD input gradients/s / torchattacks.PGD's, target >= 1
   (adp's plain input-gradient row against PyTorch's shown for information);
4. peak memory: adp peak RSS / PyTorch peak RSS over each model's training rows, target <= 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"compare_report: cannot read {path}: {e}")


def index(report: dict) -> dict:
    return {(r["task"], r["model"], r["members"]): r for r in report["rows"]}


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def tables(name: str, adp: dict, ref: dict) -> list[str]:
    a, t = index(adp), index(ref)
    out = [f"### adp ({adp['device']}) vs {ref['device']}", ""]
    out += ["| ratio | model | K | adp | PyTorch | ratio | target | |", "|---|---|---:|---:|---:|---:|---|---|"]
    for (task, model, k), row in a.items():
        if not task.startswith("train ") or (task, model, k) not in t:
            continue
        x, y = row["images_per_s"], t[(task, model, k)]["images_per_s"]
        out.append(
            f"| {task} step img/s | {model} | {k} | {x:.1f} | {y:.1f} | {x / y:.2f}x | >= 1.2x "
            f"| {verdict(x / y >= 1.2)} |"
        )
    for (task, model, k), row in a.items():
        if task != "train ADP" or ("train ECE", model, k) not in a:
            continue
        extra = row["ms_per_batch"] / a[("train ECE", model, k)]["ms_per_batch"] - 1.0
        limit = {3: 0.03, 20: 0.05}.get(k)
        ref_extra = ""
        if (task, model, k) in t and ("train ECE", model, k) in t:
            r = t[(task, model, k)]["ms_per_batch"] / t[("train ECE", model, k)]["ms_per_batch"]
            ref_extra = f"{100 * (r - 1):+.1f}%"
        out.append(
            f"| ADP extra time over ECE | {model} | {k} | {100 * extra:+.1f}% | {ref_extra} | | "
            + (f"<= {100 * limit:.0f}% | {verdict(extra <= limit)} |" if limit else "| |")
        )
    for (task, model, k), row in a.items():
        if task == "attack pgd" and ("attack torchattacks-pgd", model, k) in t:
            x = row["gradients_per_s"]
            y = t[("attack torchattacks-pgd", model, k)]["gradients_per_s"]
            out.append(
                f"| PGD grad evals/s (vs torchattacks.PGD) | {model} | {k} | {x:.1f} | {y:.1f} "
                f"| {x / y:.2f}x | >= 1x | {verdict(x / y >= 1.0)} |"
            )
            if ("attack pgd", model, k) in t:
                y = t[("attack pgd", model, k)]["gradients_per_s"]
                out.append(
                    f"| PGD grad evals/s (vs the same PGD in PyTorch) | {model} | {k} | {x:.1f} "
                    f"| {y:.1f} | {x / y:.2f}x | | |"
                )
        if task == "attack gradient" and (task, model, k) in t:
            x, y = row["images_per_s"], t[(task, model, k)]["images_per_s"]
            out.append(
                f"| input gradient img/s | {model} | {k} | {x:.1f} | {y:.1f} | {x / y:.2f}x | | |"
            )
    for model in dict.fromkeys(m for (_, m, _) in a):
        peak = lambda rows: max(  # noqa: E731
            (r["peak_rss_mib"] for (task, m, _), r in rows.items() if m == model and task.startswith("train")),
            default=float("nan"),
        )
        x, y = peak(a), peak(t)
        line = (
            f"| peak RSS MiB (training rows) | {model} | all | {x:.0f} | {y:.0f} | {x / y:.2f}x "
            f"| <= 1x | {verdict(x <= y)} |"
        )
        out.append(line)
        bx, by = adp.get("baseline_rss_mib"), ref.get("baseline_rss_mib")
        if bx is not None and by is not None:
            out.append(
                f"| peak RSS above the process's start MiB | {model} | all | {x - bx:.0f} | "
                f"{y - by:.0f} | {(x - bx) / (y - by):.2f}x | | |"
            )
    return out + [""]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit("usage: compare_report.py DIR (a bench/compare output directory)")
    d = Path(argv[0])
    ref = load(d / "pytorch.json")
    runs = sorted(d.glob("adp-*.json"))
    if not runs:
        sys.exit(f"compare_report: no adp-*.json in {d}")
    out = ["## bench/compare", ""]
    machine = d / "machine.txt"
    if machine.exists():
        out += [f"    {line}" for line in machine.read_text().splitlines()] + [""]
    c = ref["config"]
    out += [
        f"batch {c['batch_size']}, {c['steps']} timed steps after {c['warmup']} warm-up, "
        f"PGD {c['attack_steps']} iterations, eps 0.1",
        "",
    ]
    for run in runs:
        out += tables(run.stem.removeprefix("adp-"), load(run), ref)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
