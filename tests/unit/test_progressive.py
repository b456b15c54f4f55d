"""Progressive nets (agents/progressive.py): adapter shapes for conv and FC layers and 3+ columns, gradient isolation,
frozen columns bit-identical through real training, an earlier column alone plays as its own run did, the
finetuning baselines, and every unusable column refused before training with the column and the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import decoupled
from decoupled.agents.progressive import ProgressiveConfig, ProgressiveNet, init_from_sources
from decoupled.envs.base import EnvSpec
from decoupled.runners.training.train import load_run_checkpoint

SMALL = {"runner": {"total_env_frames": 3200, "checkpoint_every_env_frames": 1600, "mode": "serial"},
         "wandb": {"mode": "disabled"}}  # fmt: skip


def _cfg(**kw) -> ProgressiveConfig:
    return ProgressiveConfig(columns=kw.pop("columns", ("random",)), **kw)


def _inputs(spec: EnvSpec, T: int = 3, B: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 2, (T, B, *spec.obs_shape), generator=g).to(torch.uint8)
    zeros = torch.zeros(T, B)
    return {"obs": obs, "first": zeros.bool(), "prev_action": zeros.long(), "prev_reward": zeros}


@pytest.mark.parametrize(
    "torso, obs_shape, sizes",
    [("nature_cnn", (4, 84, 84), (64,)), ("minatar_cnn", (4, 10, 10), (32,)), ("mlp", (1, 10, 5), (16, 8))],
)
@pytest.mark.parametrize("core", ["none", "lstm"])
@pytest.mark.parametrize("n_columns", [2, 3])
def test_adapters_have_the_shapes_of_their_layers(torso, obs_shape, sizes, core, n_columns):
    spec = EnvSpec("x", obs_shape, np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
    net = ProgressiveNet(spec, _cfg(columns=("random",) * (n_columns - 1), torso=torso, hidden_sizes=sizes,
                                    core=core, lstm_size=8))  # fmt: skip
    assert len(net.columns) == n_columns and net.frozen == n_columns - 1
    for k in range(1, n_columns):
        ad = net.adapters[k]
        layers = [m for m in net.columns[k].torso.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        assert len(ad.torso) == len(layers) - 1  # every layer but the first
        for i, adapter in enumerate(ad.torso):
            layer = layers[i + 1]
            assert type(adapter.u) is type(layer) and adapter.u.bias is None
            if isinstance(layer, torch.nn.Conv2d):  # V a 1x1 conv over k columns' maps, U the layer's own kernel
                assert adapter.v.kernel_size == (1, 1) and adapter.v.in_channels == k * layer.in_channels
                assert adapter.u.weight.shape == layer.weight.shape
            else:
                assert adapter.u.weight.shape == layer.weight.shape  # the FC after the convs reads flattened V maps
        assert (ad.core is not None) == (core == "lstm")
        assert ad.policy.u.weight.shape == net.columns[k].heads.policy.weight.shape
        assert ad.policy.v.in_features == k * net.columns[k].core.out_size
        assert float(ad.policy.alpha.detach()) == pytest.approx(0.1)
    out, state = net(_inputs(spec), net.initial_state(2))
    assert out["policy_logits"].shape == (3, 2, 3) and out["baseline"].shape == (3, 2)
    assert len(state) == (2 * n_columns if core == "lstm" else 0)


def test_only_the_new_column_and_its_adapters_get_gradients_and_train():
    spec = EnvSpec("x", (4, 10, 10), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
    net = ProgressiveNet(spec, _cfg(columns=("random", "random"), torso="minatar_cnn", hidden_sizes=(16,), core="lstm",
                                    lstm_size=8))  # fmt: skip
    net.train()
    assert not net.columns[0].training and not net.adapters[1].training and net.columns[2].training
    out, _ = net(_inputs(spec), net.initial_state(2))
    (out["policy_logits"].sum() + out["baseline"].sum()).backward()
    for name, p in net.named_parameters():
        trains = name.startswith(("columns.2.", "adapters.2."))
        assert p.requires_grad == trains, name
        if trains and not name.startswith("columns.2.heads"):
            assert p.grad is not None, name
        if not trains:
            assert p.grad is None, name
    from decoupled.agents.base import trainable_parameters

    assert {id(p) for p in trainable_parameters(net, [])} == {id(p) for p in net.parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("prog") / "source"
    decoupled.train("impala/catch", run_dir=run, **SMALL)
    return run


def _progressive(run: Path, columns: list[str], transform: str = "hflip", **agent) -> dict:
    return decoupled.train("impala/catch", run_dir=run, agent={"name": "progressive", "columns": columns, **agent},
                           env={"transform": transform}, **SMALL)  # fmt: skip


def test_frozen_columns_stay_bit_identical_and_column_one_plays_as_its_run(source: Path, tmp_path: Path):
    run = tmp_path / "p2"
    assert _progressive(run, [str(source)])["status"] == "finished"
    _, src_state, _ = load_run_checkpoint(source)
    _, state, _ = load_run_checkpoint(run)
    for k, v in src_state["net"].items():  # column 0 is the source net, every parameter, after training
        assert torch.equal(state["net"][f"columns.0.{k}"], v), k
    assert json.loads((run / "init_sources.json").read_text())["columns"][0].startswith(str(source))
    new = [k for k in state["net"] if k.startswith("columns.1.")]
    assert any(not torch.equal(state["net"][k], src_state["net"][k.removeprefix("columns.1.")]) for k in new)
    # column 0 taken out of the trained progressive net scores on the source task exactly what the source run does
    policy = decoupled.load_policy(run, seed=0)
    alone = decoupled.load_policy(source, seed=0)
    policy.net = policy.net.column_net(0)
    with decoupled.make_env(source, 4, seed=5) as env:
        a = decoupled.evaluate(policy, env, episodes=12, seed=5)
    with decoupled.make_env(source, 4, seed=5) as env:
        b = decoupled.evaluate(alone, env, episodes=12, seed=5)
    assert a["episode_scores"] == b["episode_scores"]
    # and the progressive run plays its own (transformed) task, resumes and evaluates
    assert decoupled.make_env(run).settings()["transform"] == "hflip"
    res = decoupled.train(run_dir=run, resume=True, overrides=["runner.total_env_frames=4800"])
    assert res["status"] == "finished" and res["env_frames"] >= 4800
    _, resumed, _ = load_run_checkpoint(run)
    for k, v in src_state["net"].items():
        assert torch.equal(resumed["net"][f"columns.0.{k}"], v), k
    assert len(decoupled.evaluate(run, episodes=3)["episode_scores"]) == 3


def test_a_third_column_takes_a_progressive_run_with_its_own_columns(source: Path, tmp_path: Path):
    p2, p3 = tmp_path / "p2", tmp_path / "p3"
    _progressive(p2, [str(source)])
    assert _progressive(p3, [str(source), str(p2)], transform="vflip")["status"] == "finished"
    _, s2, _ = load_run_checkpoint(p2)
    _, s3, _ = load_run_checkpoint(p3)
    for k, v in s2["net"].items():  # columns 0, 1 and column 1's adapters: p2's, unchanged by p3's training
        if k.startswith(("columns.0.", "columns.1.", "adapters.1.")):
            assert torch.equal(s3["net"][k], v), k
    assert any(k.startswith("adapters.2.torso") for k in s3["net"])


def test_finetuning_baselines_train_the_heads_only_or_the_whole_column(source: Path, tmp_path: Path):
    _, src, _ = load_run_checkpoint(source)
    for transfer, body_trains in (("finetune_output", False), ("finetune_all", True)):
        run = tmp_path / transfer
        _progressive(run, [str(source)], transfer=transfer)
        _, state, _ = load_run_checkpoint(run)
        net = {k.removeprefix("columns.0."): v for k, v in state["net"].items() if k.startswith("columns.0.")}
        assert set(net) == set(src["net"])
        body = [k for k in net if not k.startswith("heads.")]
        assert any(not torch.equal(net[k], src["net"][k]) for k in body) == body_trains, transfer
        assert any(not torch.equal(net[k], src["net"][k]) for k in net if k.startswith("heads.")), transfer


def _setup_error(columns, net_cfg: dict | None = None) -> str:
    cfg = _cfg(columns=tuple(columns), **{"torso": "mlp", "hidden_sizes": (64, 64), **(net_cfg or {})})
    spec = EnvSpec("catch", (1, 10, 5), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
    net = ProgressiveNet(spec, cfg)
    from decoupled.agents.base import AgentSetupError

    with pytest.raises(AgentSetupError) as e:
        init_from_sources(cfg, net, lambda p: load_run_checkpoint(Path(p)))
    return str(e.value)


def test_unusable_columns_are_refused_naming_the_column_and_why(source: Path, tmp_path: Path):
    assert "agent.columns[0] = /nonexistent/run" in _setup_error(["/nonexistent/run"])
    msg = _setup_error([str(source)], {"hidden_sizes": (32,)})
    assert "agent.columns[0]" in msg and "hidden_sizes=(64, 64)" in msg and "hidden_sizes=(32,)" in msg
    feudal = tmp_path / "feudal"
    decoupled.train("feudal/catch", run_dir=feudal, **SMALL)
    msg = _setup_error([str(feudal)])
    assert "a feudal run" in msg and "impala or unreal" in msg
    # a corrupt checkpoint (every one of the run's): the loader's reason, with the column named
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(source, bad)
    for f in (bad / "checkpoints").glob("ckpt-*/state.pt"):
        data = bytearray(f.read_bytes())
        data[200:204] = b"XXXX"
        f.write_bytes(bytes(data))
    msg = _setup_error([str(bad)])
    assert "agent.columns[0]" in msg and "verif" in msg


def test_the_cli_exits_2_before_training_on_a_missing_column(tmp_path: Path, capsys):
    from decoupled.runners.cli import main

    rc = main(["train", "impala/catch", "agent.name=progressive", "agent.columns=[runs/does_not_exist]",
               "wandb.mode=disabled", "--run-dir", str(tmp_path / "r")])  # fmt: skip
    assert rc == 2
    assert "agent.columns[0] = runs/does_not_exist" in capsys.readouterr().err
    assert not list((tmp_path / "r").glob("checkpoints/ckpt-*"))  # nothing trained


def test_unreals_auxiliary_tasks_ride_on_the_newest_column_over_an_unreal_source(tmp_path: Path):
    """An UNREAL run as the source column (its torso and core; its auxiliary heads stay with it), and pixel control,
    reward prediction and value replay trained on the newest column: aux metrics, the source untouched, a resume."""
    src, run = tmp_path / "unreal", tmp_path / "p2"
    decoupled.train("unreal/catch", run_dir=src, **SMALL)
    aux = {"core": "lstm", "lstm_size": 64, "pixel_control_cost": 0.01, "pixel_control_crop": 0,
           "pixel_control_cell": 1, "reward_prediction_cost": 1.0, "value_replay_cost": 1.0,
           "replay_start_steps": 200}  # fmt: skip
    _progressive(run, [str(src)], **aux)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in records for k in r}
    assert {"aux/pixel_control/loss", "aux/reward_prediction/loss", "aux/value_replay/loss"} <= keys
    _, s_src, _ = load_run_checkpoint(src)
    _, s_run, _ = load_run_checkpoint(run)
    for k, v in s_src["net"].items():
        if k.startswith(("torso.", "core.")):
            assert torch.equal(s_run["net"][f"columns.0.{k}"], v), k
    assert any(k.startswith("pixel_control.") for k in s_run["net"])  # the new column's heads, not the source's
    assert not any(k.startswith("columns.0.pixel_control") for k in s_run["net"])
    res = decoupled.train(run_dir=run, resume=True, overrides=["runner.total_env_frames=4800"])
    assert res["status"] == "finished"


def test_standalone_runs_as_later_columns_compute_what_they_computed_alone(source: Path, tmp_path: Path):
    """Two IMPALA runs as columns 0 and 1: the adapters into column 1 add exactly nothing (it was trained alone), so
    each frozen column's activations are its own run's torso features."""
    other = tmp_path / "other"
    decoupled.train("impala/catch", run_dir=other, runner={**SMALL["runner"], "seed": 5}, wandb={"mode": "disabled"})
    run = tmp_path / "p3"
    _progressive(run, [str(source), str(other)])
    net = decoupled.load_policy(run).net
    obs = torch.randint(0, 2, (1, 4, 1, 10, 5), dtype=torch.uint8)
    zeros = torch.zeros(1, 4)
    _, acts, _ = net.forward_with_activations(
        {"obs": obs, "first": zeros.bool(), "prev_action": zeros.long(), "prev_reward": zeros}, net.initial_state(4)
    )
    for k, run_dir in enumerate((source, other)):
        alone = decoupled.load_policy(run_dir).net
        torch.testing.assert_close(acts[(k, "fc2")], alone.torso(obs[0]))


def test_a_random_column_is_copied_from_the_progressive_run_that_drew_it(tmp_path: Path):
    first, second = tmp_path / "random_p2", tmp_path / "p3"
    _progressive(first, ["random"])
    runner = {**SMALL["runner"], "seed": 9}  # another seed draws another random column 0: it must be copied, not drawn
    decoupled.train("impala/catch", run_dir=second, agent={"name": "progressive", "columns": ["random", str(first)]},
                    env={"transform": "vflip"}, runner=runner, wandb={"mode": "disabled"})  # fmt: skip
    _, a, _ = load_run_checkpoint(first)
    _, b, _ = load_run_checkpoint(second)
    for k, v in a["net"].items():
        if k.startswith(("columns.0.torso", "columns.1.", "adapters.1.")):
            assert torch.equal(b["net"][k], v), k


def test_finetuning_from_a_progressive_run_and_lstm_columns_of_another_action_set_are_refused(source, tmp_path):
    p2 = tmp_path / "p2"
    _progressive(p2, [str(source)])
    assert "finetuning takes a one-column" in _setup_error([str(p2)], {"transfer": "finetune_all"})
    spec = EnvSpec("catch", (1, 10, 5), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
    cfg = _cfg(columns=("x",), torso="mlp", hidden_sizes=(8,), core="lstm", lstm_size=4)
    net = ProgressiveNet(spec, cfg)
    from decoupled.agents.base import AgentSetupError
    from decoupled.agents.progressive import _load_column

    state = {f"heads.{k}": v for k, v in net.columns[0].heads.state_dict().items()}
    state["heads.policy.weight"] = torch.zeros(4, state["heads.policy.weight"].shape[1])
    with pytest.raises(AgentSetupError, match="acts with 4 actions, this env with 3"):
        _load_column(net, 0, state, "agent.columns[0] = x")
