"""The machinery: cli, config, the train loop, actors and learner, checkpoints, loggers, evaluation, benchmarks."""

import os

# torch's OpenMP threads spin while they wait for work by default. Here they share the cores with envpool's threads,
# the actor and the learner threads, and any other process, and spinning threads starve them: on Breakout with a
# second process running, the actor made 146 agent steps/s with spinning threads and 928 with passive ones. OpenMP
# reads this when torch loads it, so it is set before anything imports torch (the CLI imports this package first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
