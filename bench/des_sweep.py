#!/usr/bin/env python3
"""make bench-des, part 2: the policies across time scales, where requests last as long as the
scrape interval or longer.

The bench-balance fleet (capacities 1, 1, 2, 4; 4 slots each) repeated `--copies` times, 80%
light calls of 1 unit and 20% heavy calls of 8 units, Poisson arrivals at 70% and 90% of the
total capacity, a 1 s scrape of Triton-style pages (bench/des.py: DCGM utilisation, the pending
count, and request and compute-time counters that move when a request completes). One unit on a
capacity-1 GPU takes 40 ms, 400 ms, 1 s or 4 s. Each scale runs without and with a jump (the
first capacity-4 GPU takes a 60% background load a third of the way in, and keeps it), with 1 and
3 gateway replicas. Policies:

    default        meshgate's scheduler, its default profile, unchanged code
    wlr_edf        Envoy's weighted least request as Envoy implements it (EDF, capacity weights)
    p2c_inflight   power of two choices on requests in flight (Envoy's least_request default)
    round_robin    reference

Common random numbers: each seed gives every policy the same arrivals, sizes and replicas.
Reports medians over the seeds with the per-seed range of the ratios, the targets of issue #15,
a table (bench/results/des-sweep.md) and a plot of the p99 ratio against the time scale
(bench/results/des-sweep.png).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.des import World, simulate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
POLICIES = ("default", "wlr_edf", "p2c_inflight", "round_robin")


def world(unit_s: float, copies: int, jump_at: float | None) -> World:
    caps = (1.0, 1.0, 2.0, 4.0) * copies
    return World(caps, unit_s=unit_s, jump=(jump_at, 3, 0.6) if jump_at is not None else None)


def run(job: tuple[float, bool, int, float, str, int, int, int]) -> tuple[tuple[Any, ...], dict[str, float]]:
    unit_s, jump, replicas, load, policy, seed, requests, copies = job
    base = world(unit_s, copies, None)
    seconds = requests / base.rate(load)
    w = world(unit_s, copies, seconds / 3 if jump else None)
    return (unit_s, jump, replicas, load, policy, seed), simulate(policy, w, replicas, load, seconds, seed)


def spread(values: list[float]) -> str:
    """Median and the per-seed range."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(results: dict[tuple[Any, ...], dict[str, float]], args: argparse.Namespace) -> str:
    seeds = range(1, args.seeds + 1)
    lines = [
        f"Fleet: capacities 1, 1, 2, 4 x {args.copies} ({4 * args.copies} GPUs, 4 slots each); "
        f"{args.requests:,} requests per run; seeds {', '.join(map(str, seeds))}; a 1 s scrape.",
        "Latencies are medians over the seeds, in units of work (1 unit = one light call on an idle "
        "capacity-1 GPU); ratios are per seed (common random numbers), as median (min-max).",
        "Jump rows: requests that arrived after the jump only.",
        "",
        "| unit | jump | replicas | load | meshgate p50 / p99 | WLR p50 / p99 | P2C p99 | RR p99 "
        "| p99 / WLR | p99 / P2C | p50 / WLR | heavy on the jumped GPU (meshgate / WLR) | targets |",
        "|---|---|---:|---|---|---|---:|---:|---|---|---|---|---|",
    ]
    for cell in itertools.product(args.units, (False, True), args.replicas, args.loads):
        unit_s, jump, replicas, load = cell

        def get(policy: str, key: str, seed: int, cell: tuple[Any, ...] = cell) -> float:
            return results[(*cell, policy, seed)][key] / 1000 / cell[0]

        p50k, p99k = ("jump_p50", "jump_p99") if jump else ("p50", "p99")
        med = {(p, k): statistics.median(get(p, k, s) for s in seeds) for p in POLICIES for k in (p50k, p99k)}
        r_wlr = [get("default", p99k, s) / get("wlr_edf", p99k, s) for s in seeds]
        r_p2c = [get("default", p99k, s) / get("p2c_inflight", p99k, s) for s in seeds]
        r_p50 = [get("default", p50k, s) / get("wlr_edf", p50k, s) for s in seeds]
        heavy = [
            statistics.median(
                results[(unit_s, jump, replicas, load, p, s)]["jump_heavy_on_jumped"] for s in seeds
            )
            for p in ("default", "wlr_edf")
        ]
        if jump:
            ok = statistics.median(r_wlr) <= 1.0 and statistics.median(r_p50) <= 1.1
        else:
            ok = (
                statistics.median(r_wlr) <= 0.85
                and statistics.median(r_p2c) <= 0.75
                and statistics.median(r_p50) <= 1.1
            )
        lines.append(
            f"| {unit_s * 1000:g} ms | {'yes' if jump else 'no'} | {replicas} | {load:.0%} "
            f"| {med[('default', p50k)]:.2f} / {med[('default', p99k)]:.1f} "
            f"| {med[('wlr_edf', p50k)]:.2f} / {med[('wlr_edf', p99k)]:.1f} "
            f"| {med[('p2c_inflight', p99k)]:.1f} | {med[('round_robin', p99k)]:.1f} "
            f"| {spread(r_wlr)} | {spread(r_p2c)} | {spread(r_p50)} "
            f"| {heavy[0]:.0%} / {heavy[1]:.0%} | {'met' if ok else '**not met**'} |"
        )
    lines += [
        "",
        "Targets: without the jump, p99 <= 0.85x WLR and <= 0.75x P2C; in the jump phase, p99 <= 1.0x WLR;"
        " everywhere, p50 <= 1.1x WLR.",
    ]
    return "\n".join(lines)


def plot(results: dict[tuple[Any, ...], dict[str, float]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = range(1, args.seeds + 1)
    fig, axes = plt.subplots(1, len(args.loads), figsize=(6 * len(args.loads), 4.2), sharey=True)
    for ax, load in zip(axes if len(args.loads) > 1 else [axes], args.loads, strict=True):
        for jump, replicas in itertools.product((False, True), args.replicas):
            key = "jump_p99" if jump else "p99"
            meds, lows, highs = [], [], []
            for unit_s in args.units:
                r = [
                    results[(unit_s, jump, replicas, load, "default", s)][key]
                    / results[(unit_s, jump, replicas, load, "wlr_edf", s)][key]
                    for s in seeds
                ]
                meds.append(statistics.median(r))
                lows.append(statistics.median(r) - min(r))
                highs.append(max(r) - statistics.median(r))
            ax.errorbar(
                [u * 1000 for u in args.units],
                meds,
                yerr=[lows, highs],
                marker="o" if jump else "s",
                linestyle="-" if replicas == 1 else "--",
                capsize=3,
                label=f"{'jump phase' if jump else 'no jump'}, {replicas} replica{'s' if replicas > 1 else ''}",
            )
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.axhline(0.85, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("one unit of work (ms); the scrape is every 1,000 ms")
        ax.set_title(f"{load:.0%} load")
        ax.grid(alpha=0.3)
    (axes[0] if len(args.loads) > 1 else axes).set_ylabel("meshgate p99 / Envoy WLR (EDF) p99")
    (axes[0] if len(args.loads) > 1 else axes).legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", default="0.04,0.4,1,4", help="seconds per unit, comma list")
    ap.add_argument("--replicas", default="1,3")
    ap.add_argument("--loads", default="0.7,0.9")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=60_000, help="requests per run")
    ap.add_argument("--copies", type=int, default=8, help="copies of the 1, 1, 2, 4 fleet")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(RESULTS / "des-sweep"), help="writes OUT.md and OUT.png")
    ap.add_argument(
        "--explain",
        action="store_true",
        help="instead of the sweep: where each kind of call went, per policy, for each cell without a"
        " jump and the first seed (e.g. --units 0.04 --replicas 3 --loads 0.7 --requests 20000)",
    )
    args = ap.parse_args()
    args.units = [float(u) for u in args.units.split(",")]
    args.replicas = [int(r) for r in args.replicas.split(",")]
    args.loads = [float(x) for x in args.loads.split(",")]
    if args.explain:
        for u, r, load, policy in itertools.product(args.units, args.replicas, args.loads, POLICIES[:2]):
            print(f"== {u * 1000:g} ms a unit, {r} replicas, {load:.0%}: {policy}", flush=True)
            w = world(u, args.copies, None)
            out = simulate(policy, w, r, load, args.requests / w.rate(load), 1, explain=True)
            print(f"p50 {out['p50'] / 1000 / u:.2f} / p99 {out['p99'] / 1000 / u:.2f} units", flush=True)
        return 0
    jobs = [
        (u, j, r, load, p, s, args.requests, args.copies)
        for u, j, r, load, s, p in itertools.product(
            args.units, (False, True), args.replicas, args.loads, range(1, args.seeds + 1), POLICIES
        )
    ]
    print(f"{len(jobs)} runs on {args.workers} processes", flush=True)
    t0 = time.monotonic()
    results: dict[tuple[Any, ...], dict[str, float]] = {}
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        for i, (key, r) in enumerate(pool.imap_unordered(run, jobs), 1):
            results[key] = r
            if i % 20 == 0:
                print(f"  {i}/{len(jobs)} ({time.monotonic() - t0:.0f} s)", flush=True)
    text = table(results, args)
    print(text)
    Path(args.out + ".md").write_text(text + "\n")
    plot(results, args, Path(args.out + ".png"))
    print(f"wrote {args.out}.md and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
