"""Which columns a trained progressive net uses: Average Fisher Sensitivity (Rusu et al. 2016, arXiv:1606.04671,
Sec. 5.2 "Analysis").

    decoupled analyze afs RUN [--steps 500] [--num-envs 8] [--seed 0] [--out DIR]
    decoupled analyze aps RUN [--episodes 10] [--bisections 8] [--out DIR]

The policy plays its own task (actions sampled from pi, so the states and actions follow rho(s, a) of the trained net)
and at every step the per-sample gradient of log pi(a|s) with respect to every column's activations is taken (one
backward per step: the samples of a batch do not interact). With normalised activations h^ = (h - mu) / sigma
(sigma per unit, or per feature map over its pixels), d/dh^ = sigma * d/dh, and the modified diagonal Fisher of unit
(or map) m of layer i of column k is

    F_i^(k)(m) = E_rho[ sum over the map's pixels of (sigma_m * d log pi / d h_i^(k)_m)^2 ].

The paper's sensitivity is AFS(i, k, m) = F_i^(k)(m) / sum_k F_i^(k)(m) and AFS(i, k) its mean over m (columns have
the same widths here, so the shares of a layer sum to 1 over the columns; an m whose Fisher is 0 in every column is
left out of the mean); `share` is the simpler
sum_m F_i^(k)(m) / sum_{k, m} F_i^(k)(m). Written: `afs.json` and `afs.png` (one bar per layer, stacked by column).

Average Perturbation Sensitivity (the paper's Appendix A) is the slow check of the same question: Gaussian noise is
added to one layer of one column after its ReLU, fresh on every forward pass, of standard deviation sigma times each
unit's (or map's) activation standard deviation; sigma is bisected (in log10 between 1e-3 and 1e3, the same episodes'
seeds every time) to the value that halves the return over `--episodes` episodes (above `--score-offset`), and
Lambda = 1 / sigma^2; APS(i, k) = Lambda_i^(k) / sum_k Lambda_i^(k). Written: `aps.json` and `aps.png`.

    decoupled analyze laterals RUN [--steps 200] [--num-envs 8] [--seed 0] [--out DIR]

How much the laterals carry, on the policy's own states: for every adapter of every column k >= 2 (the torso layers
but the first, the LSTM core's input, the two heads), the standard deviation of the lateral term
U relu(V (alpha * h_{i-1}^(<k))) beside that of the column's own pre-activation (W h_{i-1}^(k), the torso features
for the core, the column's head for the heads), their ratio, and the learned alpha. Written: `laterals.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch  # the analyses import it when they run: `decoupled --help` and config errors stay fast


def fisher_sensitivity(net: Any, env: Any, steps: int, seed: int) -> dict[str, Any]:
    """Play `steps` steps of `env` (all its copies) with `net`'s sampled actions and return, per layer and column, the
    Fisher diagonal summed over units (`fisher`), AFS (`afs`) and the share of the layer's Fisher (`share`)."""
    import torch

    from decoupled.runners.training.actor_learner import net_inputs

    if not hasattr(net, "forward_with_activations"):
        raise ValueError("AFS needs a progressive net (agent progressive); this run's net has one column")
    gen = torch.Generator().manual_seed(seed)
    n = env.num_envs
    obs = env.reset(seed=seed)
    state = net.initial_state(n)
    first, prev_a, prev_r = np.ones(n, bool), np.zeros(n, np.int64), np.zeros(n, np.float32)
    grad_sq: dict[tuple[int, str], torch.Tensor] = {}
    act_sum: dict[tuple[int, str], torch.Tensor] = {}
    act_sq: dict[tuple[int, str], torch.Tensor] = {}
    count: dict[tuple[int, str], int] = {}
    net.eval()
    for _ in range(steps):
        inputs = net_inputs(obs[None], first[None], prev_a[None], prev_r[None], torch.device("cpu"))
        out, acts, new_state = net.forward_with_activations(inputs, state)
        logp = torch.log_softmax(out["policy_logits"][0], -1)
        action = torch.multinomial(logp.detach().exp(), 1, generator=gen).squeeze(-1)
        chosen = logp.gather(-1, action[:, None]).sum()
        keys = list(acts)
        grads = torch.autograd.grad(chosen, [acts[k] for k in keys], allow_unused=True)
        for key, g in zip(keys, grads, strict=True):
            a = acts[key].detach()
            g = torch.zeros_like(a) if g is None else g
            # per unit: sum over pixels of g^2 (maps [N, C, H, W]) or g^2 (vectors [N, F]); activation moments
            # per unit over samples (and pixels)
            dims = (0, 2, 3) if a.dim() == 4 else (0,)
            grad_sq[key] = grad_sq.get(key, 0) + (g**2).sum(dims)
            act_sum[key] = act_sum.get(key, 0) + a.sum(dims)
            act_sq[key] = act_sq.get(key, 0) + (a**2).sum(dims)
            count[key] = count.get(key, 0) + a.numel() // a.shape[1]
        state = tuple(s.detach() for s in new_state)
        obs, reward, terminated, truncated, _ = env.step(action.numpy())
        first = np.asarray(terminated | truncated, bool)
        prev_a, prev_r = action.numpy().astype(np.int64), np.asarray(reward, np.float32)
    samples = steps * n
    fisher: dict[tuple[int, str], torch.Tensor] = {}
    for key in grad_sq:
        mean = act_sum[key] / count[key]
        var = (act_sq[key] / count[key] - mean**2).clamp_min(0.0)
        fisher[key] = var * grad_sq[key] / samples  # sigma_m^2 E[sum_p g^2]
    columns = sorted({k for k, _ in fisher})
    layers = list(dict.fromkeys(name for _, name in fisher))
    out: dict[str, Any] = {"layers": layers, "columns": columns, "steps": steps, "num_envs": n, "per_layer": {}}
    for name in layers:
        per_col = torch.stack([fisher[(k, name)] for k in columns])  # [K, units]
        total = per_col.sum(0, keepdim=True)
        live = total[0] > 0  # units no column's Fisher reaches (dead in every column) say nothing: left out
        afs = (
            (per_col[:, live] / total[:, live]).mean(1) if live.any() else torch.full((len(columns),), 1 / len(columns))
        )
        out["per_layer"][name] = {
            "fisher": [float(x) for x in per_col.sum(1)],
            "afs": [float(x) for x in afs],
            "share": [float(x) for x in (per_col.sum(1) / per_col.sum().clamp_min(1e-30))],
        }
    return out


def _own_states(net: Any, env: Any, steps: int, seed: int) -> Iterator[tuple[dict, dict]]:
    """Play `steps` steps of `env` (all its copies) with `net`'s sampled actions, without gradients, yielding each
    step's `forward_with_activations` outputs and activations before its action is drawn."""
    import torch

    from decoupled.runners.training.actor_learner import net_inputs

    gen = torch.Generator().manual_seed(seed)
    n = env.num_envs
    obs, state = env.reset(seed=seed), net.initial_state(n)
    first, prev_a, prev_r = np.ones(n, bool), np.zeros(n, np.int64), np.zeros(n, np.float32)
    with torch.no_grad():
        for _ in range(steps):
            inputs = net_inputs(obs[None], first[None], prev_a[None], prev_r[None], torch.device("cpu"))
            out, acts, state = net.forward_with_activations(inputs, state)
            yield out, acts
            action = torch.multinomial(torch.softmax(out["policy_logits"][0], -1), 1, generator=gen).squeeze(-1)
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            first = np.asarray(terminated | truncated, bool)
            prev_a, prev_r = action.numpy().astype(np.int64), np.asarray(reward, np.float32)


def activation_std(net: Any, env: Any, steps: int, seed: int) -> dict[tuple[int, int], torch.Tensor]:
    """Per unit (or map) standard deviation of every column's activations on the policy's own states."""
    names = net.layer_names()
    moments: dict[tuple[int, int], list] = {}
    for _, acts in _own_states(net, env, steps, seed):
        for (k, name), a in acts.items():
            dims = (0, 2, 3) if a.dim() == 4 else (0,)
            m = moments.setdefault((k, names.index(name)), [0.0, 0.0, 0])
            m[0], m[1], m[2] = m[0] + a.sum(dims), m[1] + (a**2).sum(dims), m[2] + a.numel() // a.shape[1]
    return {key: ((s2 / c - (s1 / c) ** 2).clamp_min(0.0)).sqrt() for key, (s1, s2, c) in moments.items()}


def perturbation_sensitivity(
    net: Any, make_env: Any, episodes: int, seed: int, bisections: int = 8, score_offset: float = 0.0
) -> dict[str, Any]:
    """APS per layer and column (module docstring). `make_env()` builds the evaluation env (closed here)."""
    import torch

    from decoupled.runners.evaluation.evaluate import Policy, play_episodes

    if not hasattr(net, "forward_with_activations"):
        raise ValueError("APS needs a progressive net (agent progressive); this run's net has one column")
    net.eval()

    def score() -> float:
        with make_env() as env:
            return float(
                np.mean(play_episodes(env, Policy(env.spec.num_actions, seed, net), episodes, seed)["episode_scores"])
            )

    with make_env() as env:
        stds = activation_std(net, env, 100, seed)
    net.perturbation = None
    clean = score()
    target = score_offset + 0.5 * (clean - score_offset)
    names = net.layer_names()
    sigma: dict[tuple[int, int], float] = {}
    try:
        for key, std in stds.items():
            lo, hi = -3.0, 3.0  # log10 sigma
            for _ in range(bisections):
                mid = (lo + hi) / 2
                net.perturbation = {key: (std * 10**mid, torch.Generator().manual_seed(seed))}
                if score() <= target:
                    hi = mid
                else:
                    lo = mid
            sigma[key] = 10 ** ((lo + hi) / 2)
    finally:
        net.perturbation = None
    columns = sorted({k for k, _ in sigma})
    layers = [names[i] for i in sorted({i for _, i in sigma})]
    out: dict[str, Any] = {"layers": layers, "columns": columns, "clean_score": clean, "target_score": target,
                           "episodes": episodes, "per_layer": {}}  # fmt: skip
    for name in layers:
        i = names.index(name)
        lam = np.array([1.0 / sigma[(k, i)] ** 2 for k in columns])
        out["per_layer"][name] = {"sigma": [sigma[(k, i)] for k in columns], "aps": [float(x) for x in lam / lam.sum()]}
    return out


def lateral_scale(net: Any, env: Any, steps: int, seed: int) -> dict[str, Any]:
    """Play `steps` steps of `env` with `net`'s sampled actions and return, per column k >= 2 and adapter, the spread of
    the lateral term beside the column's own pre-activation (module docstring)."""
    if not hasattr(net, "adapters") or len(net.columns) < 2 or getattr(net, "transfer", "") != "progressive":
        raise ValueError("the laterals need a progressive net of 2 or more columns with agent.transfer progressive")
    names = net.layer_names()
    moments: dict[tuple[int, str, str], list] = {}  # (column, adapter, own | lateral) -> [sum, sum of squares, n]

    def add(key: tuple[int, str, str], output: torch.Tensor) -> None:
        m = moments.setdefault(key, [0.0, 0.0, 0])
        o = output.detach().double()
        m[0], m[1], m[2] = m[0] + float(o.sum()), m[1] + float((o**2).sum()), m[2] + o.numel()

    def hook(key: tuple[int, str, str]) -> Any:
        return lambda _module, _inputs, output: add(key, output)

    handles = []
    alphas: dict[tuple[int, str], float] = {}
    for k in range(1, len(net.columns)):
        ad = net.adapters[k]
        pairs = [(names[i], net._layers[k][i], ad.torso[i - 1]) for i in range(1, len(net._layers[k]))]
        if k == len(net.columns) - 1:  # only the newest column's heads act
            heads = net.columns[k].heads
            pairs += [("policy", heads.policy, ad.policy), ("baseline", heads.baseline, ad.baseline)]
        for label, own, lateral in pairs:
            handles.append(own.register_forward_hook(hook((k, label, "own"))))
            handles.append(lateral.register_forward_hook(hook((k, label, "lateral"))))
            alphas[(k, label)] = float(lateral.alpha.detach())
        if ad.core is not None:
            handles.append(ad.core.register_forward_hook(hook((k, "core", "lateral"))))
            alphas[(k, "core")] = float(ad.core.alpha.detach())
    net.eval()
    try:
        for _, acts in _own_states(net, env, steps, seed):
            for k in range(1, len(net.columns)):  # the core's own input: the column's torso features
                if net.adapters[k].core is not None:
                    add((k, "core", "own"), acts[(k, names[len(net._layers[k]) - 1])])
    finally:
        for h in handles:
            h.remove()

    def std(key: tuple[int, str, str]) -> float:
        s1, s2, c = moments[key]
        return float(max(s2 / c - (s1 / c) ** 2, 0.0) ** 0.5)

    result: dict[str, Any] = {"steps": steps, "num_envs": env.num_envs, "columns": {}}
    for k, label in alphas:
        own, lateral = std((k, label, "own")), std((k, label, "lateral"))
        result["columns"].setdefault(str(k), {})[label] = {
            "own_std": own, "lateral_std": lateral, "ratio": lateral / own if own > 0 else float("inf"),
            "alpha": alphas[(k, label)],
        }  # fmt: skip
    return result


def plot_afs(result: dict[str, Any], path: Path, title: str, key: str = "afs") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, columns = result["layers"], result["columns"]
    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 1.1 * len(layers)), 3.6))
    bottom = np.zeros(len(layers))
    for k in columns:
        values = np.array([result["per_layer"][name][key][columns.index(k)] for name in layers])
        label = f"column {k + 1}" + (" (new)" if k == columns[-1] else " (frozen)")
        ax.bar(layers, values, bottom=bottom, label=label, color=f"C{k}")
        bottom += values
    ax.set_ylim(0, 1)
    ax.set_ylabel({"afs": "average Fisher sensitivity", "aps": "average perturbation sensitivity"}[key])
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _analyze_on_own_states(args: argparse.Namespace, measure: Any, name: str) -> tuple[dict[str, Any], Path]:
    """Load RUN's net, let `measure(net, env, steps, seed)` play its own task, write `<out>/<name>.json`."""
    from decoupled.envs import make_vec_env
    from decoupled.runners.evaluation.evaluate import load_checkpoint, make_policy_net

    run = Path(args.run)
    cfg, state, ckpt = load_checkpoint(run)
    env = make_vec_env(cfg.env.backend, cfg.env.id, args.num_envs, args.seed, mode="eval", options=cfg.env.options())
    try:
        net = make_policy_net(cfg, state, env.spec)
        result = measure(net, env, args.steps, args.seed)
    finally:
        env.close()
    result.update({"run": str(run), "checkpoint": ckpt, "env": env.spec.name})
    out = Path(args.out) if args.out else run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result, out


def analyze_afs(args: argparse.Namespace) -> int:
    result, out = _analyze_on_own_states(args, fisher_sensitivity, "afs")
    title = f"{Path(args.run).name}: AFS per layer and column ({result['env']}, {args.steps} steps)"
    plot_afs(result, out / "afs.png", title)
    print(json.dumps({"afs": {n: v["afs"] for n, v in result["per_layer"].items()}, "out": str(out)}), flush=True)
    return 0


def analyze_aps(args: argparse.Namespace) -> int:
    from decoupled.envs import make_vec_env
    from decoupled.runners.evaluation.evaluate import eval_num_envs, load_checkpoint, make_policy_net

    run = Path(args.run)
    cfg, state, ckpt = load_checkpoint(run)
    num_envs = eval_num_envs(args.episodes, None)

    def make_env() -> Any:
        return make_vec_env(cfg.env.backend, cfg.env.id, num_envs, args.seed, mode="eval", options=cfg.env.options())

    with make_env() as env:
        spec = env.spec
    net = make_policy_net(cfg, state, spec)
    result = perturbation_sensitivity(net, make_env, args.episodes, args.seed, args.bisections, args.score_offset)
    result.update({"run": str(run), "checkpoint": ckpt, "env": spec.name})
    out = Path(args.out) if args.out else run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    (out / "aps.json").write_text(json.dumps(result, indent=2))
    plot_afs(result, out / "aps.png", f"{run.name}: APS per layer and column ({spec.name})", key="aps")
    print(json.dumps({"aps": {n: v["aps"] for n, v in result["per_layer"].items()}, "out": str(out)}), flush=True)
    return 0


def analyze_laterals(args: argparse.Namespace) -> int:
    result, out = _analyze_on_own_states(args, lateral_scale, "laterals")
    for k, adapters in result["columns"].items():
        for label, v in adapters.items():
            print(f"column {int(k) + 1} {label}: lateral / own std {v['ratio']:.2f} ({v['lateral_std']:.4g} / "
                  f"{v['own_std']:.4g}), alpha {v['alpha']:.3f}")  # fmt: skip
    print(json.dumps({"out": str(out / "laterals.json")}), flush=True)
    return 0


def add_arguments(sub: Any) -> None:
    a = sub.add_parser(
        "analyze", help="which columns a progressive net uses: afs (Fisher), aps (perturbation), laterals (scale)"
    )
    asub = a.add_subparsers(dest="analysis", required=True)

    def own_states(name: str, help: str, steps: int, fn: Any) -> None:  # the analyses that play the net's own task
        p = asub.add_parser(name, help=help)
        p.add_argument("run", help="a progressive run dir or checkpoint dir")
        p.add_argument("--steps", type=int, default=steps, help=f"agent steps of every env copy (default {steps})")
        p.add_argument("--num-envs", type=int, default=8)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", help="output dir (default RUN/analysis)")
        p.set_defaults(func=lambda a: _run(fn, a))

    own_states("afs", "Average Fisher Sensitivity of a progressive net per layer and column", 500, analyze_afs)
    p = asub.add_parser("aps", help="Average Perturbation Sensitivity (noise that halves the return), slower than afs")
    p.add_argument("run", help="a progressive run dir or checkpoint dir")
    p.add_argument("--episodes", type=int, default=10, help="episodes per evaluation (default 10, as the paper)")
    p.add_argument("--bisections", type=int, default=8, help="bisection steps of log10 sigma in [-3, 3]")
    p.add_argument("--score-offset", type=float, default=0.0, help="the score that counts as 0 (e.g. -21 for Pong)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output dir (default RUN/analysis)")
    p.set_defaults(func=lambda a: _run(analyze_aps, a))
    own_states("laterals", "how much each adapter's lateral carries beside its column's own", 200, analyze_laterals)


def _run(fn: Any, args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"decoupled analyze {args.analysis}: {e}", file=sys.stderr)
        return 2
