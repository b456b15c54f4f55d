"""The `decoupled` command line.

    decoupled train CONFIG [section.key=value ...] [--run-dir DIR]
    decoupled train --resume RUN_DIR [section.key=value ...]
    decoupled eval RUN_DIR|CHECKPOINT_DIR|SUITE_DIR [--episodes N] [--seeds 1,2] [--out DIR]
    decoupled eval --policy random --games Breakout,Pong | --suite atari5 [--protocol dqn_noop30] [--out DIR]
    decoupled report [LABEL=]SCORES[,SCORES...] ... --out DIR [--wandb-run ID]   # HNS, IQM, CIs, plots
    decoupled suite CONFIG [section.key=value ...] --games A,B | --suite atari5 --out DIR [--parallel N]
    decoupled plot RUN_DIR [RUN_DIR ...] [--out PNG] [--labels a,b]
    decoupled bench labyrinth [--num-envs 4] [--seconds 10]      # speed benchmarks, JSON lines
    decoupled render TASK [--steps N] [--seed S] [--run RUN_DIR] [--out DIR]   # a labyrinth episode as PNGs
    decoupled config CONFIG [section.key=value ...]      # print the resolved config, or the errors
    decoupled configs                                    # the packaged configs, usable by name (impala/catch)

CONFIG is a YAML path or a packaged config's name (`decoupled train impala/catch` works from any directory).

Heavy imports (torch, envs) happen inside the subcommands so that a bad config fails within a second or two.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from decoupled.runners.evaluation import positive_int  # torch-free; used by the parsers below

_default_showwarning = warnings.showwarning


def _train(args: argparse.Namespace) -> int:
    from decoupled.runners.training.config import ConfigError, load_config

    if args.resume is None and args.config is None:
        print("decoupled train: give a CONFIG file or --resume RUN_DIR", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.resume is not None and args.config is not None:  # `train --resume DIR k=v`: argparse took k=v as config
        overrides.insert(0, args.config)
    try:
        # the config first, before torch or any env is imported: a bad key exits within a second
        cfg = load_config(args.config, overrides) if args.resume is None else None
        if args.resume is not None:  # the run dir and the overrides on its config, before torch is imported
            run_config = os.path.join(args.resume, "config.yaml")
            if not os.path.isfile(run_config):
                print(
                    f"decoupled train: {args.resume} is not a run dir (no config.yaml); pass the dir `decoupled train` "
                    "made",
                    file=sys.stderr,
                )
                return 2
            load_config(run_config, overrides)
        if cfg is not None:  # the env before torch is imported, then the net: exit 2 before anything starts
            from decoupled.runners.training.preflight import preflight

            preflight(cfg)
        from decoupled.agents.base import AgentSetupError
        from decoupled.runners.evaluation.evaluate import make_periodic_evaluator
        from decoupled.runners.training.checkpoint import CheckpointError
        from decoupled.runners.training.train import ResumeOverrideError, resume_run, start_run

        refused: tuple[type[BaseException], ...] = (
            FileNotFoundError, FileExistsError, CheckpointError, AgentSetupError, ResumeOverrideError
        )  # fmt: skip
        try:
            if cfg is None:
                result = resume_run(args.resume, overrides, make_periodic_evaluator)
            else:
                result = start_run(cfg, args.run_dir, make_periodic_evaluator, check=False)
        except refused as e:
            print(f"decoupled train: {e}", file=sys.stderr)
            return 2
    except ConfigError as e:
        print(f"decoupled train: {e}", file=sys.stderr)
        return 2
    return 0 if result["status"] in ("finished", "stopped", "time_limit") else 1


def _config(args: argparse.Namespace) -> int:
    import yaml

    from decoupled.runners.training.config import ConfigError, config_reference, load_config

    if args.keys is not None:
        if args.config is not None:
            print("decoupled config: --keys lists the keys of every config; give no CONFIG with it", file=sys.stderr)
            return 2
        try:
            print("\n".join(config_reference(None if args.keys == "all" else args.keys, args.agent)))
        except (ValueError, KeyError) as e:
            print(f"decoupled config: {e}", file=sys.stderr)
            return 2
        return 0
    if args.config is None:
        print("decoupled config: give a CONFIG to validate, or --keys [SECTION] for the key reference", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, list(args.overrides))
    except ConfigError as e:
        print(f"decoupled config: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from decoupled.configs import names, resolve

    for name in names():
        first = resolve(name).read_text().splitlines()[:1]
        about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        print(f"{name:36s} {about}" if about else name)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from decoupled.envs.atari import ProtocolMismatchError
    from decoupled.runners.evaluation.evaluate import evaluate_command
    from decoupled.runners.training.checkpoint import CheckpointError
    from decoupled.runners.training.config import ConfigError

    try:
        return evaluate_command(args)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, ProtocolMismatchError) as e:
        print(f"decoupled eval: {e}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    from decoupled.runners.evaluation.report import report_command

    try:
        return report_command(args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"decoupled report: {e}", file=sys.stderr)
        return 2


def _suite(args: argparse.Namespace) -> int:
    from decoupled.runners.evaluation.suite import suite_command
    from decoupled.runners.training.config import ConfigError

    try:
        return suite_command(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"decoupled suite: {e}", file=sys.stderr)
        return 2


def _plot(args: argparse.Namespace) -> int:
    from decoupled.runners.evaluation.plot import plot_run

    labels = args.labels.split(",") if args.labels else None
    try:
        out = plot_run(args.run_dir, args.out, key=args.key, labels=labels, smoothing=args.smooth)
    except ValueError as e:  # NothingToPlot, or labels that do not match the runs
        print(f"decoupled plot: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from decoupled.runners.evaluation.render import render_command

    try:
        return render_command(args)
    except (ImportError, ValueError, FileNotFoundError) as e:
        print(f"decoupled render: {e}", file=sys.stderr)
        return 2


def _add_eval_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("target", nargs="?", help="run dir, checkpoint dir, or suite dir (DIR/runs/<Game>/)")
    e.add_argument("--policy", choices=["checkpoint", "random"], default="checkpoint")
    e.add_argument("--config", help="for --policy random: take the env from this config")
    e.add_argument("--games", help="comma-separated Atari games, e.g. Breakout,Pong (random policy or a suite dir)")
    e.add_argument("--suite", help="a named Atari suite: atari57, atari26 (Atari-100k), atari10, atari5")
    e.add_argument(
        "--protocol",
        choices=["dqn_noop30", "machado2018"],
        help="Atari protocol (default: the run's; dqn_noop30 for --policy random --games)",
    )
    e.add_argument(
        "--backend",
        choices=["atari", "atari_gym"],
        help="Atari backend (default: the run's, or atari; machado2018 runs on atari_gym unless --backend atari: "
        "envpool cannot start a game without a no-op frame)",
    )
    e.add_argument(
        "--max-episode-frames",
        type=int,
        help="episode cap in emulator frames (default 108,000; other caps are not comparable with published scores)",
    )
    e.add_argument("--episodes", type=int, default=10, help="episodes per game and seed (default 10)")
    e.add_argument("--seed", type=int, default=12345)
    e.add_argument("--seeds", help="comma-separated env seeds, --episodes each (default: --seed)")
    e.add_argument("--num-envs", type=int, default=None, help="envs run in parallel (default: min(episodes, 8))")
    e.add_argument("--greedy", action="store_true", help="act with argmax instead of sampling the policy")
    e.add_argument(
        "--ablate-goals",
        choices=["zero", "random"],
        help="a FuN policy: replace the Manager's goals by zeros or random unit vectors (does the Worker use them?)",
    )
    e.add_argument("--label", help="the agent's name in reports (default: the agent, or 'random')")
    e.add_argument("--video-steps", type=int, default=2000, help="agent steps of the video episode at most")
    e.add_argument("--no-video", action="store_true", help="write no video")
    e.add_argument("--out", help="output dir (default: RUN_DIR/eval, SUITE_DIR/eval, runs/eval_random_<games>)")


# Commands whose arguments are defined by modules that import torch (the analyses, the benchmarks): their parsers
# are built only when one of them runs, so that `decoupled config` and a bad config's error stay well under a second.
HEAVY_COMMANDS = {
    "analyze": "which columns a progressive net uses: afs (Fisher), aps (perturbation), laterals (scale)",
    "bench": "speed and learning benchmarks (JSON lines; record them in BENCHMARKS.md)",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the `command` about to run, the parsers of the other heavy commands are stand-ins
    that only list them in `--help`."""
    from decoupled import __version__

    p = argparse.ArgumentParser(prog="decoupled", description="Actor-learner RL agents: train, evaluate, plot.")
    p.add_argument("--version", action="version", version=f"decoupled {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an agent from a YAML config (or resume a run)")
    t.add_argument(
        "config", nargs="?", help="YAML config or packaged name, e.g. configs/impala/catch.yaml, impala/catch"
    )
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. runner.total_env_frames=200000")
    t.add_argument("--run-dir", help="run directory (default: runs/<agent>__<env>__<seed>__<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest valid checkpoint")
    t.set_defaults(func=_train)

    c = sub.add_parser("config", help="validate a config and print it resolved; --keys: every key, type, default")
    c.add_argument("config", nargs="?")
    c.add_argument("overrides", nargs="*")
    c.add_argument(
        "--keys",
        nargs="?",
        const="all",
        metavar="SECTION",
        help="list every config key with its type, default and description (agent, env, optim, runner, wandb or "
        "logger)",
    )
    c.add_argument("--agent", help="with --keys: only this agent's `agent` section")
    c.set_defaults(func=_config)

    cs = sub.add_parser("configs", help="list the packaged configs (each usable by name: decoupled train impala/catch)")
    cs.set_defaults(func=_configs)

    from decoupled.runners.evaluation.report import add_report_arguments
    from decoupled.runners.evaluation.suite import add_suite_arguments

    e = sub.add_parser("eval", help="evaluate a run dir, a checkpoint, a suite dir or a random policy")
    _add_eval_arguments(e)
    e.set_defaults(func=_eval)

    rp = sub.add_parser("report", help="human-normalised scores, IQM / median / mean with CIs, plots")
    add_report_arguments(rp)
    rp.set_defaults(func=_report)

    su = sub.add_parser("suite", help="train one run per game of a list or suite, then evaluate and report")
    add_suite_arguments(su)
    su.set_defaults(func=_suite)

    pl = sub.add_parser("plot", help="learning curves of runs as PNG: any metric, groups with mean and 95%% band")
    pl.add_argument("run_dir", nargs="+", help="run dirs (ours, or `decoupled bench peer` output dirs)")
    pl.add_argument("--out", help="PNG path (default: the first RUN_DIR/learning_curve.png)")
    pl.add_argument(
        "--labels", help="comma-separated legend labels, one per run dir; runs with the same label are one group"
    )
    pl.add_argument("--key", default="train/episode_return", help="the metric to plot (any key of metrics.jsonl)")
    pl.add_argument("--smooth", type=positive_int, default=1, help="moving average over this many log records")
    pl.set_defaults(func=_plot)

    r = sub.add_parser("render", help="play a labyrinth episode and write a top-down map and an RGB/depth strip")
    r.add_argument("task", help="labyrinth task, e.g. nav_maze_static_01")
    r.add_argument("--steps", type=positive_int, default=300, help="agent steps to play (default 300)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--run", help="a run dir whose policy acts (default: uniform random actions)")
    r.add_argument("--out", default="runs/render", help="output dir (default runs/render)")
    r.set_defaults(func=_render)

    for name, about in HEAVY_COMMANDS.items():
        if command is not None and command != name:
            sub.add_parser(name, help=about)
        elif name == "analyze":
            from decoupled.runners.evaluation.analyze import add_arguments as add_analyze_parser

            add_analyze_parser(sub)
        else:
            from decoupled.runners.bench.commands import add_parser as add_bench_parser

            add_bench_parser(sub)
    return p


# Commands that take dotted overrides; on these `--section.key=value` is an override too (the form W&B sweeps and
# Hydra-style launchers pass), the same as `section.key=value`.
OVERRIDE_COMMANDS = ("train", "config", "suite")


def _show_config_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    from decoupled.sections import ConfigWarning

    if issubclass(category, ConfigWarning):
        print(f"decoupled: warning: {message}", file=file or sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.showwarning = _show_config_warning
    words = sys.argv[1:] if argv is None else argv
    command = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # `--a.b=v`, and `a.b=v` that argparse left over once an unknown option had cut the positionals short
        dotted = [a for a in unknown if "=" in a and "." in a.partition("=")[0] and (a[:2] == "--" or a[0] != "-")]
        rest = [a for a in unknown if a not in dotted]
        if args.command not in OVERRIDE_COMMANDS:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)} (overrides look like section.key=value)")
        args.overrides = [*args.overrides, *(a[2:] if a[:2] == "--" else a for a in dotted)]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
