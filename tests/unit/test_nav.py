"""The Nav agent (agents/nav.py) and the auxiliary-task modules (agents/auxtasks.py): depth classes,
loop-closure labels with episode starts and respawns, the wiring and which losses reach which parameters
(Mirowski et al. 2017, arXiv:1611.03673), the actor recording the env's extras, aux tasks on other agents (impala
+ depth, nav + dni core), and the config refusing tasks an env cannot feed. A small in-process env with the
labyrinth's extras stands in for the engine (tests/smoke/test_nav_train.py trains on the real one)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from decoupled.agents import get_agent
from decoupled.agents.auxtasks import CELL_SIZE, DEPTH_KEY, LOOP_KEY, EnvTargets
from decoupled.agents.config import ImpalaConfig, LoopClosureTaskConfig, NavConfig
from decoupled.envs.base import EnvSpec, VecEnv
from decoupled.envs.labyrinth import CELL_SIZE as LABYRINTH_CELL
from decoupled.envs.labyrinth import nav_depth_targets
from decoupled.runners.training.actor_learner import Actor, Learner, net_inputs

ROOT = Path(__file__).resolve().parents[2]
NAV = get_agent("nav")
A = 8


class FakeNavEnv(VecEnv):
    """Image obs [3, 42, 42] plus the labyrinth's extras: depth [42, 42], position [2], velocity [3]; each env walks
    east one cell every step, turns back after `turn` steps, and is respawned (teleported) at step `respawn_at`."""

    def __init__(self, num_envs=2, turn=4, respawn_at=None, episode=40):
        self.num_envs, self.turn, self.respawn_at, self.episode = num_envs, turn, respawn_at, episode
        self.spec = EnvSpec("fake_nav", (3, 42, 42), np.dtype(np.uint8), A, 4, {"obs_scale": 1 / 255})
        self.rng = np.random.default_rng(0)

    def _extras(self):
        x = self.x.copy()
        return {
            "depth": np.full((self.num_envs, 42, 42), 20.0 + 10 * self.t[:, None, None], np.float32),
            "position": np.stack([x, np.zeros_like(x)], -1).astype(np.float32),
            "velocity": np.ones((self.num_envs, 3), np.float32),
        }

    def reset(self, seed=None):
        self.t = np.zeros(self.num_envs, int)
        self.x = np.zeros(self.num_envs)
        return self.rng.integers(0, 255, (self.num_envs, 3, 42, 42), dtype=np.uint8)

    def last_extras(self):
        return self._extras()

    def step(self, actions):
        self.t += 1
        direction = np.where(self.t <= self.turn, 1.0, -1.0)
        self.x = self.x + direction * CELL_SIZE
        respawned = np.zeros(self.num_envs, bool)
        if self.respawn_at is not None:
            respawned = self.t == self.respawn_at
            self.x[respawned] = 100 * CELL_SIZE
        done = self.t >= self.episode
        final_extras = self._extras()
        self.t[done], self.x[done] = 0, 0.0
        obs = self.rng.integers(0, 255, (self.num_envs, 3, 42, 42), dtype=np.uint8)
        info = {
            "extras": self._extras(),
            "final_extras": final_extras,
            "final_obs": obs,
            "env_info": {"respawned": respawned},
            "episode_done": done,
            "episode_return": np.zeros(self.num_envs),
            "episode_frames": np.zeros(self.num_envs, int),
        }
        zeros = np.zeros(self.num_envs, bool)
        return obs, np.zeros(self.num_envs, np.float32), zeros, done, info

    def step_async(self, actions):
        self._pending = self.step(actions)

    def step_wait(self):
        return self._pending

    def close(self):
        pass


def _spec():
    return EnvSpec("fake_nav", (3, 42, 42), np.dtype(np.uint8), A, 4, {"obs_scale": 1 / 255})


def _inputs(T=5, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(T, B, dtype=torch.bool)
    first[0] = True
    return {
        "obs": torch.randint(0, 255, (T, B, 3, 42, 42), generator=g, dtype=torch.uint8),
        "first": first,
        "prev_action": torch.randint(0, A, (T, B), generator=g),
        "prev_reward": torch.randn(T, B, generator=g),
        "velocity": torch.randn(T, B, 3, generator=g),
    }


def _batch(T=5, B=3):
    inputs = _inputs(T, B)
    return {
        "obs": inputs["obs"],
        "first": inputs["first"],
        "action": inputs["prev_action"],
        "reward": inputs["prev_reward"],
        "terminated": torch.zeros(T, B, dtype=torch.bool),
        "truncated": torch.zeros(T, B, dtype=torch.bool),
        "behaviour_logits": torch.zeros(T, B, A),
        "truncation_value": torch.zeros(T, B),
        "velocity": inputs["velocity"],
        DEPTH_KEY: torch.randint(0, 8, (T, B, 4, 16)).to(torch.int8),
        LOOP_KEY: (torch.rand(T, B) > 0.5).float(),
    }


def _grads(net, loss):
    net.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in net.named_parameters()}


def _aux_term(net, batch, name):
    """The loss of one auxiliary task alone (its cost 1, the others 0)."""
    from decoupled.agents.auxtasks import aux_losses
    from decoupled.agents.config import AuxConfig

    aux = AuxConfig(**{name: {"cost": 1.0}})
    outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu")
                     | {"velocity": batch["velocity"]}, net.initial_state(batch["obs"].shape[1]))  # fmt: skip
    loss, _ = aux_losses(aux, batch, outputs, 1.0)
    return loss


# ------------------------------------------------------------------------------------------------ targets
def test_depth_classes_are_monotone_in_distance_and_shaped_4x16():
    """A ramp of distances maps to the 4x16 classes 0..7 in order; all 8 classes occur."""
    d = np.geomspace(5.0, 300.0, 84)[None, :].repeat(84, 0)  # distance grows with the column (edges: 15..181)
    classes = nav_depth_targets(d)
    assert classes.shape == (4, 16) and classes.min() == 0 and classes.max() == 7
    assert (np.diff(classes, axis=1) >= 0).all() and len(np.unique(classes)) == 8
    targets = EnvTargets(1, depth=True)
    out = targets.record(slice(0, 1), {"depth": d[None].astype(np.float32)}, {}, np.ones(1, bool))
    assert out[DEPTH_KEY].dtype == np.int8 and (out[DEPTH_KEY][0] == classes).all()
    assert CELL_SIZE == LABYRINTH_CELL


def _labels(xs, respawn=(), first=(0,)):
    targets = EnvTargets(1, loop=LoopClosureTaskConfig(cost=1.0))
    out = []
    for t, x in enumerate(xs):
        extras = {"position": np.array([[x * CELL_SIZE, 0.0]], np.float32)}
        info = {"respawned": np.array([t in respawn])}
        out.append(targets.record(slice(0, 1), extras, info, np.array([t in first]))[LOOP_KEY][0])
    return np.array(out)


def test_loop_closure_labels():
    """A straight line gives zeros; an out-and-back path gives 1 on return within eta1 once the agent was
    farther than eta2 (and 0 before); a respawn and an episode start reset the history."""
    assert not _labels(range(10)).any()
    out_and_back = [0, 1, 2, 3, 4, 3, 2, 1, 0]
    # x=1 on the way back is within 1 cell of x=0 and x=2, and the agent was 3 cells (> eta2 = 2) away meanwhile
    assert list(_labels(out_and_back)) == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert not _labels([0, 1, 2, 1, 0]).any()  # never farther than eta2 = 2 cells from where it returns: no loop
    assert not _labels(out_and_back, respawn=(5,)).any()  # the respawn at t=5 clears the earlier positions
    assert not _labels(out_and_back, first=(0, 5)).any()  # so does an episode start


# ------------------------------------------------------------------------------------------------ wiring
def test_wiring_sizes_and_reward_routing():
    """LSTM1 takes [f, r]; LSTM2 takes [f, h1, v, a] (+ one reward column held at 0)."""
    net = NAV.make_net(_spec(), NavConfig())
    assert net.lstm1.weight_ih.shape == (4 * 64, 256 + 1)
    assert net.core.lstm.weight_ih.shape == (4 * 256, 256 + 64 + 3 + A + 1)
    inputs = _inputs()
    out, state = net(inputs, net.initial_state(3))
    assert out["policy_logits"].shape == (5, 3, A) and len(state) == 4
    assert out["aux/depth_conv/logits"].shape == (5, 3, 4, 16, 8) and out["aux/loop_closure/logits"].shape == (5, 3)
    # the reward reaches LSTM2 only through LSTM1: its own reward column gets no gradient
    grads = net.core.lstm.weight_ih
    net.zero_grad()
    out["baseline"].sum().backward()
    assert grads.grad[:, -1].abs().sum() == 0 and grads.grad[:, :-1].abs().sum() > 0
    # the velocity and the previous reward change the policy
    for key in ("velocity", "prev_reward"):
        changed = dict(inputs, **{key: inputs[key] + 1.0})
        assert not torch.allclose(net(changed, net.initial_state(3))[0]["baseline"][1:], out["baseline"][1:].detach())


def test_which_losses_reach_which_parameters():
    """D1 alone trains the torso and its head, neither LSTM; D2 and L reach both LSTMs and the torso."""
    net = NAV.make_net(_spec(), NavConfig())
    batch = _batch()
    g = _grads(net, _aux_term(net, batch, "depth_conv"))
    assert g["torso.fc.0.weight"] if "torso.fc.0.weight" in g else any(v for k, v in g.items() if k.startswith("torso"))
    assert not any(v for k, v in g.items() if k.startswith(("lstm1", "core", "heads", "aux.heads.depth_lstm")))
    assert any(v for k, v in g.items() if k.startswith("aux.heads.depth_conv"))
    for name in ("depth_lstm", "loop_closure"):
        g = _grads(net, _aux_term(net, batch, name))
        for part in ("torso", "lstm1", "core.lstm", f"aux.heads.{name}"):
            assert any(v for k, v in g.items() if k.startswith(part)), (name, part)
        assert not any(v for k, v in g.items() if k.startswith(("heads", "aux.heads.depth_conv")))


def test_nav_loss_adds_the_weighted_aux_losses():
    net = NAV.make_net(_spec(), NavConfig())
    batch = _batch()
    state = net.initial_state(3)
    inputs = net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu")
    outputs, _ = net(inputs | {"velocity": batch["velocity"]}, state)
    loss, m = NAV.loss_fn(net.cfg, batch, outputs)
    base = get_agent("impala").loss_fn(ImpalaConfig(entropy_cost=1e-3), batch, outputs)[0]
    TB = 4 * 3
    expect = base + TB * (3.33 * m["aux/depth_conv/loss"] + m["aux/depth_lstm/loss"] + m["aux/loop_closure/loss"])
    torch.testing.assert_close(loss, expect)
    assert 0 <= m["aux/depth_conv/accuracy"] <= 1 and "aux/loop_closure/recall" in m
    plain = NAV.make_net(_spec(), NavConfig(aux={}))
    assert plain.aux is None and not any(k.startswith("aux/") for k in NAV.loss_fn(plain.cfg, batch, outputs)[1])


# ------------------------------------------------------------------------------------------------ the runner
def _train_steps(net, agent, cfg, env, n=2, T=6):
    actor = Actor(env, net, T, torch.device("cpu"))
    actor.start(0)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    learner = Learner(agent, cfg, net, opt, torch.device("cpu"), 40.0, 3)
    rollouts, metrics = [], []
    for _ in range(n):
        rollouts.append(actor.unroll())
        metrics.append(learner.step(rollouts[-1]))
    return rollouts, metrics


def test_actor_records_the_extras_and_the_learner_trains_nav():
    env = FakeNavEnv(num_envs=2, turn=4)
    net = NAV.make_net(env.spec, NavConfig(hidden_sizes=(32,), lstm_size=16, lstm1_size=8))
    rollouts, metrics = _train_steps(net, NAV, net.cfg, env, n=2, T=8)
    data = rollouts[0]["data"]
    assert data[DEPTH_KEY].shape == (9, 2, 4, 16) and data["velocity"].shape == (9, 2, 3)
    # positions 0,1,2,3,4,3,2,1,0 cells: l = 1 from the return within one cell of the start (slot 7 on)
    assert list(data[LOOP_KEY][:, 0]) == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert (data[DEPTH_KEY][0] == nav_depth_targets(np.full((42, 42), 20.0)).astype(np.int8)).all()
    for m in metrics:
        assert np.isfinite(m["loss/total"]) and "aux/depth_lstm/loss" in m and "aux/loop_closure/accuracy" in m


def _net_with_the_plain_base(agent, spec, plain_cfg, cfg, seed, heads=("aux.",)):
    """agent's net for `cfg`, checked to start with the parameters of its net for `plain_cfg` (no aux tasks) for
    the same seed, the task heads (names starting with `heads`) aside; returns (plain net, net)."""
    torch.manual_seed(seed)
    plain = agent.make_net(spec, plain_cfg)
    torch.manual_seed(seed)
    net = agent.make_net(spec, cfg)
    base = {k: v for k, v in net.state_dict().items() if not k.startswith(heads)}
    assert base.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in base.items())
    return plain, net


def test_impala_takes_a_depth_task_and_keeps_its_base_init():
    """Aux tasks compose with another agent: impala + depth_lstm; the base net starts from the plain agent's
    parameters for the same seed (the heads come from a forked RNG)."""
    impala = get_agent("impala")
    env = FakeNavEnv(num_envs=2)
    kw = dict(torso="nature_cnn", hidden_sizes=(32,), core="lstm", lstm_size=16)
    cfg = ImpalaConfig(**kw, aux={"depth_lstm": {"cost": 1.0}})
    plain, net = _net_with_the_plain_base(impala, env.spec, ImpalaConfig(**kw), cfg, seed=3)
    assert plain.env_targets(2) is None and net.env_targets(2).fields.keys() == {DEPTH_KEY}
    rollouts, metrics = _train_steps(net, impala, cfg, env)
    assert LOOP_KEY not in rollouts[0]["data"] and "aux/depth_lstm/loss" in metrics[-1]


def test_unreal_takes_a_depth_task_beside_its_own():
    """The unreal agent with agent.aux's online tasks: UNREAL's replay heads and losses as before, the depth head's
    added; the rest of the net starts from the same parameters for the same seed."""
    unreal = get_agent("unreal")
    from decoupled.agents.config import UnrealConfig

    env = FakeNavEnv(num_envs=2)
    kw = dict(torso="nature_cnn", hidden_sizes=(32,), lstm_size=16, pixel_control_crop=1, pixel_control_cell=2)
    kw |= dict(reward_prediction_frames=2, reward_prediction_batch=2, replay_start_steps=0)
    cfg = UnrealConfig(**kw, aux={"depth_lstm": {"cost": 1.0}})
    _, net = _net_with_the_plain_base(unreal, env.spec, UnrealConfig(**kw), cfg, seed=4)
    actor = Actor(env, net, 6, torch.device("cpu"))
    actor.start(0)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    replay = unreal.make_replay(cfg, env.spec, net, 6, 0)
    learner = Learner(unreal, cfg, net, opt, torch.device("cpu"), 40.0, 3, replay=replay)
    metrics = [learner.step(actor.unroll()) for _ in range(3)]
    for task in ("depth_lstm", "pixel_control", "value_replay", "reward_prediction"):
        assert np.isfinite(metrics[-1][f"aux/{task}/loss"]), task


def test_nav_composes_with_the_dni_core():
    env = FakeNavEnv(num_envs=2)
    cfg = NavConfig(hidden_sizes=(32,), lstm_size=16, lstm1_size=8, core="dni_lstm")
    net = NAV.make_net(env.spec, cfg)
    assert type(net.core).__name__ == "DNILSTMCore"
    _, metrics = _train_steps(net, NAV, cfg, env, n=3)
    assert "dni/sg_loss" in metrics[-1] and "aux/depth_conv/loss" in metrics[-1]
    assert all(np.isfinite(m["loss/total"]) for m in metrics)


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ("impala/pong.yaml", ["agent.aux.depth_conv.cost=1"], "agent.aux.depth_conv needs the env's depth"),
        ("impala/catch.yaml", ["agent.aux.loop_closure.cost=1"], "agent.aux.loop_closure needs the env's position"),
        ("impala/catch.yaml", ["agent.name=nav", "agent.core=lstm", "agent.aux={}"], "velocity"),
        ("unreal/catch.yaml", ["agent.aux.depth_conv.cost=1"], "agent.aux.depth_conv needs the env's depth"),
        ("unreal/catch.yaml", ["agent.aux.pixel_control.cost=1"], "sets UNREAL's own tasks with agent.<task>_cost"),
        ("distill/catch.yaml", ["agent.aux.depth_conv.cost=1"], "takes no agent.aux"),
        ("impala/cartpole.yaml", ["agent.aux.pixel_control.cost=1"], "pixel_control needs image observations"),
        ("impala/catch.yaml", ["agent.aux.feature_control.cost=1"], "feature_control needs a conv torso"),
        ("nav/nav_maze_small_static.yaml", ["agent.torso=mlp", "agent.aux.feature_control.cost=1"], "conv torso"),
        ("impala/catch.yaml", ["agent.aux.depth.cost=1"], "unknown auxiliary task 'depth'"),
    ],
)
def test_tasks_the_env_cannot_feed_are_refused_at_load(config, overrides, message):
    from decoupled.runners.training.config import ConfigError, load_config

    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(ROOT / "configs" / config, overrides)


def test_cli_exits_2_before_anything_starts():
    cmd = [sys.executable, "-m", "decoupled", "config", str(ROOT / "configs/impala/pong.yaml"),
           "agent.aux.depth_lstm.cost=1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "depth_lstm needs the env's depth" in proc.stderr


@pytest.mark.parametrize("name", ["nav_maze_static_01", "nav_maze_random_goal_01", "nav_maze_small_static",
                                  "nav_maze_small_random_goal"])  # fmt: skip
def test_nav_configs_load(name):
    from decoupled.runners.training.config import load_config

    cfg = load_config(ROOT / "configs" / "nav" / f"{name}.yaml", [])
    assert cfg.agent.name == "nav" and set(cfg.agent.aux.tasks()) == {"depth_conv", "depth_lstm", "loop_closure"}


def test_impala_mixes_online_and_replay_tasks():
    """agent.aux may mix the Nav tasks (online, env targets) with UNREAL's (replayed sequences) on one agent."""
    impala = get_agent("impala")
    env = FakeNavEnv(num_envs=2)
    aux = {"depth_conv": {"cost": 1.0}, "pixel_control": {"cost": 0.01, "crop": 1, "cell": 2},
           "value_replay": {"cost": 1.0}, "reward_prediction": {"cost": 1.0, "frames": 2, "batch": 2}}  # fmt: skip
    cfg = ImpalaConfig(torso="nature_cnn", hidden_sizes=(32,), core="lstm", lstm_size=16, replay_start_steps=0, aux=aux)
    net = impala.make_net(env.spec, cfg)
    assert type(net).__name__ == "UnrealNet" and net.pixel_control.grid == (20, 20) and net.aux is not None
    actor = Actor(env, net, 6, torch.device("cpu"))
    actor.start(0)
    replay = impala.make_replay(cfg, env.spec, net, 6, 0)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    learner = Learner(impala, cfg, net, opt, torch.device("cpu"), 40.0, 3, replay=replay)
    metrics = [learner.step(actor.unroll()) for _ in range(3)]
    for key in ("aux/depth_conv/loss", "aux/pixel_control/loss", "aux/value_replay/loss"):
        assert key in metrics[-1] and np.isfinite(metrics[-1][key]), key


def test_nav_composes_with_unreals_tasks():
    """Nav + UNREAL's replay tasks: the velocity input is replayed with the observations, and every task's loss is
    logged; pixel control reaches the LSTMs through the replayed sequences."""
    env = FakeNavEnv(num_envs=2)
    aux = {"depth_lstm": {"cost": 1.0}, "pixel_control": {"cost": 0.01, "crop": 1, "cell": 2},
           "value_replay": {"cost": 1.0}, "reward_prediction": {"cost": 1.0, "frames": 2, "batch": 2},
           "feature_control": {"cost": 0.01}}  # fmt: skip
    cfg = NavConfig(hidden_sizes=(32,), lstm_size=16, lstm1_size=8, replay_start_steps=0, aux=aux)
    net = NAV.make_net(env.spec, cfg)
    assert net.pixel_control.grid == (20, 20) and net.nav_cfg is cfg
    actor = Actor(env, net, 6, torch.device("cpu"))
    actor.start(0)
    replay = NAV.make_replay(cfg, env.spec, net, 6, 0)
    assert "velocity" in replay.keys
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    learner = Learner(NAV, cfg, net, opt, torch.device("cpu"), 40.0, 3, replay=replay)
    metrics = [learner.step(actor.unroll()) for _ in range(3)]
    for task in ("depth_lstm", "pixel_control", "value_replay", "reward_prediction", "feature_control"):
        assert np.isfinite(metrics[-1][f"aux/{task}/loss"]), task
    assert NAV.make_replay(NavConfig(), env.spec, NAV.make_net(env.spec, NavConfig()), 6, 0) is None


# ------------------------------------------------------------------------------------------------ feudal + aux
def _feudal_cfg(**aux):
    from decoupled.agents.config import FeudalConfig

    kw = dict(torso="nature_cnn", hidden_sizes=(32,), manager_size=16, dilation=2, horizon=2, goal_embedding=4)
    return FeudalConfig(**kw, worker_size=16, replay_start_steps=0, aux=aux)


def _rollout_batch(rollout):
    from decoupled.runners.training.actor_learner import HostStaging, rollout_to_batch

    return rollout_to_batch(rollout, torch.device("cpu"), HostStaging())


def test_feudal_takes_online_and_replay_tasks_on_its_worker_only():
    """Feudal + agent.aux: the depth / loop-closure heads on the Worker's core output and the shared torso, UNREAL's
    pixel control and reward prediction from a replay of the overlapped rollouts. The base net starts as the plain
    agent's for the same seed; each task's loss reaches the torso and the Worker, never the Manager."""
    from decoupled.agents import unreal
    from decoupled.agents.auxtasks import aux_losses
    from decoupled.agents.config import AuxConfig, unreal_settings
    from decoupled.runners.training.actor_learner import HostStaging, replay_to_batch

    feudal = get_agent("feudal")
    env = FakeNavEnv(num_envs=2)
    aux = {"depth_lstm": {"cost": 1.0}, "loop_closure": {"cost": 1.0},
           "pixel_control": {"cost": 0.01, "crop": 1, "cell": 2}, "reward_prediction": {"cost": 1.0, "frames": 2,
           "batch": 2}}  # fmt: skip
    cfg = _feudal_cfg(**aux)
    heads = ("aux.", "pixel_control.", "reward_prediction.")
    plain, net = _net_with_the_plain_base(feudal, env.spec, _feudal_cfg(), cfg, seed=5, heads=heads)
    assert plain.env_targets(2) is None and feudal.make_replay(plain.cfg, env.spec, plain, 6, 0) is None
    assert net.feudal_cfg is cfg and net.pixel_control.grid == (20, 20)

    T, c = 6, cfg.horizon
    actor = Actor(env, net, T, torch.device("cpu"), overlap=c)
    actor.start(0)
    replay = feudal.make_replay(cfg, env.spec, net, T, 0)
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    learner = Learner(feudal, cfg, net, opt, torch.device("cpu"), 40.0, 3, replay=replay)
    rollouts = [actor.unroll() for _ in range(3)]
    metrics = [learner.step(r) for r in rollouts]
    assert rollouts[-1]["data"][DEPTH_KEY].shape[0] == c + T + 1
    for task in ("depth_lstm", "loop_closure", "pixel_control", "reward_prediction"):
        assert np.isfinite(metrics[-1][f"aux/{task}/loss"]), task
    assert "feudal/goal_cosine" in metrics[-1] and np.isfinite(metrics[-1]["loss/total"])

    # the online terms: weighted like the base loss, on the T new observations of the overlapped batch
    batch, state = _rollout_batch(rollouts[-1])
    outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"), state)
    with_aux, m = feudal.loss_fn(cfg, batch, outputs)
    without, _ = feudal.loss_fn(_feudal_cfg(), batch, outputs)
    expect = without + T * 2 * (m["aux/depth_lstm/loss"] + m["aux/loop_closure/loss"])
    torch.testing.assert_close(with_aux, expect)
    new = {k: v[c:] for k, v in {**batch, **outputs}.items() if k.startswith("aux/")}
    online, _ = aux_losses(AuxConfig(depth_lstm={"cost": 1.0}), new, new, 1.0)
    torch.testing.assert_close(online, m["aux/depth_lstm/loss"])

    manager = ("manager", "goal_embedding")
    g = _grads(net, online)
    for part in ("torso", "worker.", "aux.heads.depth_lstm"):
        assert any(v for k, v in g.items() if k.startswith(part)), part
    assert not any(v for k, v in g.items() if k.startswith(manager))
    settings = unreal_settings(cfg)
    rb = replay_to_batch(feudal.sample_replay(cfg, replay), torch.device("cpu"), HostStaging())
    assert rb["seq"]["obs"].shape[0] == c + T + 1
    ro = feudal.replay_outputs(cfg, net, rb)
    replayed = unreal.add_replay_task_losses(settings, torch.zeros(()), {}, rb, ro, T, 2)
    g = _grads(net, replayed)
    for part in ("torso", "worker.", "pixel_control.", "reward_prediction."):
        assert any(v for k, v in g.items() if k.startswith(part)), part
    assert not any(v for k, v in g.items() if k.startswith(manager))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["agent.aux.value_replay.cost=1"], "the feudal agent does not take it"),
        (["agent.aux.depth_conv.cost=1"], "agent.aux.depth_conv needs the env's depth"),
        (["agent.torso=mlp", "agent.aux.feature_control.cost=1"], "feature_control needs a conv torso"),
    ],
)
def test_feudal_refuses_aux_tasks_it_cannot_take(overrides, message):
    from decoupled.runners.training.config import ConfigError, load_config

    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(ROOT / "configs" / "feudal" / "catch.yaml", overrides)
