"""The machinery, split by role into sub-packages that import only downwards:

* `training`   the config schema, the train loop, the actor and learner, checkpoints, logging;
* `evaluation` the user tools over runs: eval, suite, report, plot, render, the offline W&B reader;
* `bench`      speed and learning benchmarks (`decoupled bench ...`);
* `cli`        the `decoupled` command line over all three.

bench -> evaluation -> training; nothing in training imports the other two.
"""
