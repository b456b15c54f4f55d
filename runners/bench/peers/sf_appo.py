"""Sample Factory 2.1.1's envpool Atari example (sf_examples/envpool/atari/train_envpool_atari.py), started by
`decoupled bench throughput` as a peer in Sample Factory's own virtual environment (`make peers`).

    .venv-peers/sample_factory/bin/python runners/bench/peers/sf_appo.py GAME [Sample Factory arguments ...]

GAME is an ALE game name (Breakout, Pong, ...), mapped to the example's env name through its own table (the
NoFrameskip-v4 id). Everything else is the example's code; this file only imports it, so it runs on Sample Factory's
interpreter and never imports decoupled.

One shim: envpool 1.2.5's gymnasium vector env subclasses gymnasium 0.29's VectorEnv without running its __init__,
so VectorEnv.close() (which Sample Factory calls on its temporary env at start-up) finds no `closed` or `viewer`
attribute and raises; the two get their __init__ defaults as class attributes here. It sits at module level, so that
the worker processes (started with spawn, which imports this module again) get it too.
"""

import sys

import gymnasium.vector

gymnasium.vector.VectorEnv.closed = False
gymnasium.vector.VectorEnv.viewer = None


def main() -> int:
    from sf_examples.envpool.atari import train_envpool_atari as example
    from sf_examples.envpool.atari.envpool_atari_utils import ENVPOOL_ATARI_ENVS

    game, rest = sys.argv[1], sys.argv[2:]
    names = [spec.name for spec in ENVPOOL_ATARI_ENVS if spec.env_id == f"{game}-v5"]
    if not names:
        print(f"sf_appo.py: Sample Factory's example has no env for the game {game!r}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], f"--env={names[0]}", *rest]
    example.register_atari_components()
    return example.run_rl(example.parse_atari_args())


if __name__ == "__main__":
    sys.exit(main())
