"""The training machinery: the config schema and its validation (`config`), the train loop and run dirs (`train`),
the actor, the learner and the rollout message between them (`actor_learner`), actor threads (`async_actors`),
crash-safe checkpoints (`checkpoint`), the logging sinks (`logger`) and the reader of offline W&B runs
(`wandb_reader`, with which the logger checks that W&B holds every record).

Nothing here knows an agent's maths: the learner calls the agent's `AgentDef` (decoupled/agents/base.py) for the
net, the loss and any agent-specific training step. Nothing here imports the evaluation tools or the benchmarks.
"""
