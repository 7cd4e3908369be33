#!/usr/bin/env python3
"""Prints the ratios of issues 6 and 19 from one `bench/compare` run directory (standard library only).

Reads DIR/adp-BACKEND.json (`adp bench --json`, one per burn backend), DIR/pytorch.json
(bench/reference/adp_bench.py, same schema), both at the headline thread count with each
library's default threading, and DIR/machine.txt; where present also DIR/peak.json
(bench/peak), DIR/adp-BACKEND-tT.json and DIR/pytorch-tT.json (other thread counts T) and
DIR/pytorch-passive.json (OMP_WAIT_POLICY=PASSIVE). It prints for each backend:

1. training step: adp img/s / PyTorch img/s, target >= 1.0 (stretch 1.5), every (model, K, objective) row;
2. ADP's extra cost over ECE within adp: ms(ADP) / ms(ECE) - 1, target <= 3% at K = 3 and
   <= 5% at K = 20 (other K shown without target);
3. attack gradient throughput: adp PGD input gradients/s / torchattacks.PGD's, target >= 1
   (adp's plain input-gradient row against PyTorch's shown for information);
4. peak memory: adp peak RSS / PyTorch peak RSS over each model's training rows, target <= 1;
5. achieved GFLOP/s of each training row (analytic FLOPs of bench/reference/flops.py, carried
   in PyTorch's rows) and its fraction of the FP32 peak measured at the same thread count;
6. adp against the other PyTorch reference rows: eager with OMP_WAIT_POLICY=PASSIVE, the
   torch.func/vmap ensemble and torch.compile (with its compile time), and the errors of rows
   that failed;
7. each thread count on both sides: training and PGD rows, and the speed-up over 1 thread;
8. with `--rounds N` (DIR/adp-BACKEND-rR.json and DIR/pytorch-rR.json, R = 2..N): the ratios
   of 1 and 3 in each round and their median, the figure to quote on a shared machine.
"""

from __future__ import annotations

import json
import re
import statistics
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
    policy = ref.get("omp_wait_policy", "as the run set it")
    out = [f"### adp ({adp['device']}) vs {ref['device']}, OMP_WAIT_POLICY {policy}", ""]
    out += ["| ratio | model | K | adp | PyTorch | ratio | target | |", "|---|---|---:|---:|---:|---:|---|---|"]
    for (task, model, k), row in a.items():
        if not task.startswith("train ") or (task, model, k) not in t:
            continue
        x, y = row["images_per_s"], t[(task, model, k)]["images_per_s"]
        out.append(
            f"| {task} step img/s | {model} | {k} | {x:.1f} | {y:.1f} | {x / y:.2f}x | >= 1.0x "
            f"| {verdict(x / y >= 1.0)} |"
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
            (
                r["peak_rss_mib"]
                for (task, m, _), r in rows.items()
                if m == model and task.startswith("train") and "[" not in task
            ),
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


def peak_gflops(peak: dict | None, threads: int) -> float | None:
    rows = {r["threads"]: r["gflops"] for r in (peak or {}).get("rows", [])}
    return rows.get(threads)


def flops_table(adp: dict, ref: dict, threads: int, peak: dict | None) -> list[str]:
    """Achieved GFLOP/s of each training row, and its fraction of the measured FP32 peak."""
    a, t = index(adp), index(ref)
    top = peak_gflops(peak, threads)
    cap = f"{top:.0f} GFLOP/s FP32 peak at {threads} thread(s) (bench/peak)" if top else "no peak.json"
    out = [f"Training GFLOP/s ({cap}; FLOPs: bench/reference/flops.py)", ""]
    out += [
        "| row | model | K | GFLOP/step | adp GFLOP/s | adp % peak | PyTorch GFLOP/s | PyTorch % peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    pct = lambda g: f"{100 * g / top:.1f}%" if top else ""  # noqa: E731
    for (task, model, k), row in a.items():
        r = t.get((task, model, k))
        if not task.startswith("train ") or r is None or "gflop_per_step" not in r:
            continue
        f = r["gflop_per_step"]
        x, y = f * 1e3 / row["ms_per_batch"], f * 1e3 / r["ms_per_batch"]
        out.append(f"| {task} | {model} | {k} | {f:.2f} | {x:.1f} | {pct(x)} | {y:.1f} | {pct(y)} |")
    return out + [""]


def reference_table(adp: dict, refs: dict[str, dict]) -> list[str]:
    """adp against each PyTorch reference row that is present (img/s, and adp / reference)."""
    a = index(adp)
    cols = []  # (label, report, task suffix)
    if "default" in refs:
        cols.append(("eager", refs["default"], ""))
        for variant in ("vmap", "compile"):
            if any(r["task"].endswith(f"[{variant}]") for r in refs["default"]["rows"]):
                cols.append((variant, refs["default"], f" [{variant}]"))
    if "passive" in refs:
        cols.append(("eager PASSIVE", refs["passive"], ""))
    if len(cols) < 2:
        return []
    out = ["PyTorch reference rows (img/s; PGD: gradient evaluations/s) and adp / each", ""]
    out += [
        "| row | model | K | adp | " + " | ".join(c for c, _, _ in cols) + " | "
        + " | ".join(f"adp / {c}" for c, _, _ in cols) + " |",
        "|---|---|---:|" + "---:|" * (1 + 2 * len(cols)),
    ]
    for (task, model, k), row in a.items():
        if task.startswith("train "):
            x, field = row["images_per_s"], "images_per_s"
            keys = [(task + sfx, model, k) for _, _, sfx in cols]
        elif task == "attack pgd":
            x, field = row["gradients_per_s"], "gradients_per_s"
            # torchattacks.PGD runs on the eager ensemble only: no vmap or compile column.
            keys = [("attack torchattacks-pgd", model, k) if not sfx else None for _, _, sfx in cols]
        else:
            continue
        ys = [
            index(rep).get(key, {}).get(field) if key else None
            for (_, rep, _), key in zip(cols, keys)
        ]
        if all(y is None for y in ys):
            continue
        val = " | ".join("" if y is None else f"{y:.1f}" for y in ys)
        ratio = " | ".join("" if y is None else f"{x / y:.2f}x" for y in ys)
        label = "PGD (vs torchattacks.PGD)" if task == "attack pgd" else task
        out.append(f"| {label} | {model} | {k} | {x:.1f} | {val} | {ratio} |")
    compiled = [r for r in refs.get("default", {}).get("rows", []) if "compile_s" in r]
    if compiled:
        out += ["", "torch.compile's first step (compiling forward and backward): " + ", ".join(
            f"{r['task']} {r['model']} K={r['members']} {r['compile_s']:.0f} s" for r in compiled
        )]
    for e in refs.get("default", {}).get("errors", []):
        out += ["", f"{e['task']} {e['model']} K={e['members']} failed: {e['error']}"]
    return out + [""]


def threads_table(runs: dict[int, tuple[dict, dict]], peak: dict | None) -> list[str]:
    """Training and PGD rows at each thread count, adp and PyTorch, with speed-ups over 1 thread."""
    if len(runs) < 2:
        return []
    counts = sorted(runs)
    out = ["Thread counts (img/s; PGD: gradient evaluations/s; speed-up over the fewest threads)", ""]
    out += [
        "| row | model | K | threads | adp | PyTorch | adp / PyTorch | adp speed-up "
        "| PyTorch speed-up | peak speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_a, base_t = index(runs[counts[0]][0]), index(runs[counts[0]][1])
    p0 = peak_gflops(peak, counts[0])
    for key in base_a:
        task, model, k = key
        if task == "attack pgd":
            field, tkey = "gradients_per_s", ("attack torchattacks-pgd", model, k)
        elif task.startswith("train "):
            field, tkey = "images_per_s", key
        else:
            continue
        if tkey not in base_t:
            continue
        for n in counts:
            a, t = index(runs[n][0]).get(key), index(runs[n][1]).get(tkey)
            if a is None or t is None:
                continue
            x, y = a[field], t[field]
            pn = peak_gflops(peak, n)
            ps = f"{pn / p0:.2f}x" if pn and p0 else ""
            label = "PGD (vs torchattacks.PGD)" if task == "attack pgd" else task
            out.append(
                f"| {label} | {model} | {k} | {n} | {x:.1f} | {y:.1f} | {x / y:.2f}x "
                f"| {x / base_a[key][field]:.2f}x | {y / base_t[tkey][field]:.2f}x | {ps} |"
            )
    return out + [""]


def headline_ratios(adp: dict, ref: dict) -> dict:
    """adp / PyTorch for each training row (img/s) and PGD row (vs torchattacks.PGD)."""
    a, t = index(adp), index(ref)
    ratios = {}
    for (task, model, k), row in a.items():
        if task.startswith("train ") and (task, model, k) in t:
            ratios[(task, model, k)] = row["images_per_s"] / t[(task, model, k)]["images_per_s"]
        elif task == "attack pgd" and ("attack torchattacks-pgd", model, k) in t:
            y = t[("attack torchattacks-pgd", model, k)]["gradients_per_s"]
            ratios[("PGD (vs torchattacks.PGD)", model, k)] = row["gradients_per_s"] / y
    return ratios


def rounds_table(rounds: list[tuple[dict, dict]]) -> list[str]:
    """The headline ratios of each alternated round, their median and range."""
    if len(rounds) < 2:
        return []
    per_round = [headline_ratios(a, t) for a, t in rounds]
    out = [f"Ratios over {len(rounds)} alternated rounds (adp, then PyTorch eager, each round)", ""]
    out += [
        "| row | model | K | " + " | ".join(f"round {i + 1}" for i in range(len(rounds)))
        + " | median | target |",
        "|---|---|---:|" + "---:|" * (len(rounds) + 1) + "---|",
    ]
    for key in per_round[0]:
        values = [r[key] for r in per_round if key in r]
        if len(values) < len(rounds):
            continue
        median = statistics.median(values)
        cells = " | ".join(f"{v:.2f}x" for v in values)
        task, model, k = key
        out.append(
            f"| {task} | {model} | {k} | {cells} | {median:.2f}x | >= 1.0x {verdict(median >= 1.0)} |"
        )
    return out + [""]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit("usage: compare_report.py DIR (a bench/compare output directory)")
    d = Path(argv[0])
    ref = load(d / "pytorch.json")
    runs = sorted(p for p in d.glob("adp-*.json") if not re.search(r"-[tr]\d+$", p.stem))
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
    peak = load(d / "peak.json") if (d / "peak.json").exists() else None
    if peak:
        out += [
            f"FP32 peak (bench/peak, {peak['isa']}, {peak['lanes']} lanes, clock estimate "
            f"{peak['clock_ghz']} GHz): "
            + ", ".join(f"{r['gflops']:.0f} GFLOP/s at {r['threads']} thread(s)" for r in peak["rows"]),
            "",
        ]
    refs = {"default": ref}
    if (d / "pytorch-passive.json").exists():
        refs["passive"] = load(d / "pytorch-passive.json")
    for run in runs:
        backend = run.stem.removeprefix("adp-")
        adp = load(run)
        out += tables(backend, adp, ref)
        out += flops_table(adp, ref, ref.get("threads", 0), peak)
        out += reference_table(adp, refs)
        per_threads = {ref.get("threads", 0): (adp, ref)}
        for extra in sorted(d.glob(f"adp-{backend}-t*.json")):
            n = int(extra.stem.rsplit("-t", 1)[1])
            if (d / f"pytorch-t{n}.json").exists():
                per_threads[n] = (load(extra), load(d / f"pytorch-t{n}.json"))
                out += flops_table(per_threads[n][0], per_threads[n][1], n, peak)
        out += threads_table(per_threads, peak)
        rounds = [(adp, ref)]
        for n in range(2, 1000):
            a, t = d / f"adp-{backend}-r{n}.json", d / f"pytorch-r{n}.json"
            if not (a.exists() and t.exists()):
                break
            rounds.append((load(a), load(t)))
        out += rounds_table(rounds)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
