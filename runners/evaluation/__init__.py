"""The user tools over trained runs: `decoupled eval` (`evaluate`: checkpoints or a random policy under an Atari
protocol, scores and videos), `decoupled suite` (`suite`: one run per game, then eval and report), `decoupled report`
(`report`: human-normalised scores, aggregates with bootstrap CIs), `decoupled plot` (`plot`), `decoupled render`
(`render`: labyrinth episodes).

They build on the training machinery (configs, checkpoints, the net's inputs) and never the other way round.
"""
