"""`decoupled bench`: speed and learning benchmarks. `commands` holds the subcommands and the throughput and
labyrinth benchmarks; `dni` the synthetic-gradient benchmarks; `learning` the multi-seed learning benchmarks
(MinAtar, UNREAL against its base agent, FeUdal Networks); `peer` the Stable-Baselines3 peers; `backends` the
random-policy equivalence of the two Atari backends.

Benchmarks use the training machinery and the evaluation tools; nothing imports them but the command line.
"""
