"""`decoupled bench sobolev`: Sobolev Training's regression experiment (Czarnecki et al. 2017, arXiv:1706.04859,
Sec. 4.1) on the classical 2-D test functions the paper uses: Ackley, Beale, Booth, Bukin N.6, McCormick, Rosenbrock
and Styblinski-Tang.

For each function, training-set size (20 and 100 points, uniform on the function's usual domain) and seed, one MLP
(2 hidden layers of 256 ReLU units, Adam 1e-3, full-batch steps) is fitted three ways:

- regular: the squared error of the values;
- Sobolev: plus the squared error of the full gradient (the function's analytic gradient);
- stochastic Sobolev: plus the squared error of the gradient projected on one random unit vector per point and step
  (the paper's answer to Jacobians too large to match whole; one vector-Jacobian product, as the distill agent's
  Sobolev term, agents/distill.py).

Values and gradients are divided by one scale (the training values' standard deviation), so both terms weigh alike.
The score is the test mean squared error of the values on 4,000 uniform points divided by their variance. One JSON line
per function and size (median over seeds for each method) and a summary with the count of cells where each Sobolev
variant beats regular training.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

Function = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ackley(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (
        -20 * torch.exp(-0.2 * torch.sqrt(0.5 * (x**2 + y**2)))
        - torch.exp(0.5 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y)))
        + math.e
        + 20
    )


# name -> (f(x, y), domain (lo, hi) per coordinate); the usual search domains of the test-function literature
FUNCTIONS: dict[str, tuple[Function, tuple[tuple[float, float], tuple[float, float]]]] = {
    "ackley": (_ackley, ((-5.0, 5.0), (-5.0, 5.0))),
    "beale": (
        lambda x, y: (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2,
        ((-4.5, 4.5), (-4.5, 4.5)),
    ),
    "booth": (lambda x, y: (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2, ((-10.0, 10.0), (-10.0, 10.0))),
    "bukin": (
        lambda x, y: 100 * torch.sqrt(torch.abs(y - 0.01 * x**2) + 1e-12) + 0.01 * torch.abs(x + 10),
        ((-15.0, -5.0), (-3.0, 3.0)),
    ),
    "mccormick": (
        lambda x, y: torch.sin(x + y) + (x - y) ** 2 - 1.5 * x + 2.5 * y + 1,
        ((-1.5, 4.0), (-3.0, 4.0)),
    ),
    "rosenbrock": (lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2, ((-2.0, 2.0), (-1.0, 3.0))),
    "styblinski_tang": (
        lambda x, y: 0.5 * (x**4 - 16 * x**2 + 5 * x + y**4 - 16 * y**2 + 5 * y),
        ((-5.0, 5.0), (-5.0, 5.0)),
    ),
}
METHODS = ("regular", "sobolev", "stochastic_sobolev")


def sample(name: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n uniform points of the function's domain: (inputs [n, 2], values [n], analytic gradients [n, 2])."""
    f, ((x0, x1), (y0, y1)) = FUNCTIONS[name]
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    pts = torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], 1).requires_grad_(True)
    values = f(pts[:, 0], pts[:, 1])
    (grads,) = torch.autograd.grad(values.sum(), pts)
    return pts.detach().float(), values.detach().float(), grads.detach().float()


def fit(
    method: str, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, steps: int, seed: int, lr: float = 1e-3
) -> nn.Module:
    """An MLP (2 x 256 ReLU) fitted to values y (and gradients g) at x, full batch, Adam."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        xr = x.clone().requires_grad_(method != "regular")
        pred = net(xr).squeeze(-1)
        loss = (pred - y).pow(2).mean()
        if method != "regular":
            (grad,) = torch.autograd.grad(pred.sum(), xr, create_graph=True)
            if method == "sobolev":
                loss = loss + (grad - g).pow(2).sum(-1).mean()
            else:  # one random unit direction per point: (J_m - J_f) v
                v = torch.randn(x.shape, generator=gen)
                v = v / v.norm(dim=1, keepdim=True)
                loss = loss + ((grad - g) * v).sum(-1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def run_cell(name: str, n: int, seed: int, steps: int, test_points: int = 4000) -> dict[str, float]:
    """Normalised test MSE of each method on one function, training size and seed."""
    gen = torch.Generator().manual_seed(1000 * seed + n)
    x, y, g = sample(name, n, gen)
    xt, yt, _ = sample(name, test_points, torch.Generator().manual_seed(999_999 + seed))
    mu, scale = y.mean(), y.std().clamp_min(1e-8)  # values and gradients share one scale
    out = {}
    for method in METHODS:
        net = fit(method, x, (y - mu) / scale, g / scale, steps, seed)
        with torch.no_grad():
            pred = net(xt).squeeze(-1) * scale + mu
        out[method] = float((pred - yt).pow(2).mean() / yt.var())
    return out


def bench_sobolev(args: argparse.Namespace) -> list[dict[str, Any]]:
    from decoupled.runners.bench import emit

    torch.set_num_threads(1)
    names = [f.strip() for f in args.functions.split(",")]
    bad = [f for f in names if f not in FUNCTIONS]
    if bad:
        raise SystemExit(f"bench sobolev: unknown function(s) {bad}; choose from {', '.join(FUNCTIONS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.time()
    records: list[dict[str, Any]] = []
    wins = {m: 0 for m in METHODS[1:]}
    for name in names:
        for n in sizes:
            per_seed = [run_cell(name, n, s, args.steps) for s in range(args.seeds)]
            rec: dict[str, Any] = {"bench": "sobolev", "function": name, "n_train": n, "seeds": args.seeds}
            for m in METHODS:
                values = [r[m] for r in per_seed]
                rec[f"{m}_per_seed"] = [round(v, 5) for v in values]
                rec[f"{m}_median"] = round(statistics.median(values), 5)
            for m in METHODS[1:]:
                wins[m] += rec[f"{m}_median"] < rec["regular_median"]
            emit(rec)
            records.append(rec)
    summary = {"bench": "sobolev", "what": "summary", "cells": len(records), "beats_regular": wins,
               "steps": args.steps, "seconds": round(time.time() - t0, 1)}  # fmt: skip
    emit(summary)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(json.dumps(r) for r in [*records, summary]) + "\n")
    return [*records, summary]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated test functions")
    p.add_argument("--sizes", default="20,100", help="training-set sizes")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps per fit")
    p.add_argument("--out", help="also write the JSON lines to this file")
