"""`decoupled bench`: speed and learning benchmarks. `commands` holds the subcommands and the throughput and
labyrinth benchmarks; `dni` the synthetic-gradient benchmarks; `learning` the multi-seed learning benchmarks
(MinAtar, UNREAL against its base agent); `peer` the Stable-Baselines3 peers.

Benchmarks use the training machinery and the evaluation tools; nothing imports them but the command line.
"""
