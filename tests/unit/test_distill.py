"""Policy distillation (agents/distill.py): a student equal to its teacher has zero loss; the Sobolev term against
finite differences; each pseudo-reward against a slow per-transition reference; who acts in training and evaluation;
teachers refused (missing, another env) and checked on resume; every variant trains, resumes and evaluates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import decoupled
from decoupled.agents.base import AgentSetupError
from decoupled.agents.distill import VARIANTS, DistillConfig, DistillNet, distill_loss, pseudo_rewards, sobolev_term
from decoupled.agents.impala import ImpalaConfig, ImpalaNet, vtrace_inputs
from decoupled.envs.base import EnvSpec

SPEC = EnvSpec("grid", (2, 5, 4), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
SMALL = {"runner": {"total_env_frames": 3200, "checkpoint_every_env_frames": 1600, "mode": "serial"},
         "wandb": {"mode": "disabled"}}  # fmt: skip


def _student(**kw) -> DistillNet:
    return DistillNet(SPEC, DistillConfig(teachers=("t",), torso="mlp", hidden_sizes=(16,), **kw))


def _batch(T: int = 4, B: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(T + 1, B, dtype=torch.bool)
    done[2, 1] = True  # an episode ends into slot 2 of column 1
    return {
        "obs": torch.randint(0, 2, (T + 1, B, *SPEC.obs_shape), generator=g).to(torch.uint8),
        "action": torch.randint(0, 3, (T + 1, B), generator=g),
        "reward": torch.randn(T + 1, B, generator=g),
        "terminated": done,
        "truncated": torch.zeros(T + 1, B, dtype=torch.bool),
        "first": done.clone(),
        "behaviour_logits": torch.randn(T + 1, B, 3, generator=g),
        "truncation_value": torch.zeros(T + 1, B),
    }


def _outputs(net: DistillNet, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs = {
        "obs": batch["obs"],
        "first": batch["first"],
        "prev_action": batch["action"],
        "prev_reward": batch["reward"],
    }
    out, _ = net(inputs, net.initial_state(batch["obs"].shape[1]))
    return out


def test_a_student_equal_to_its_teacher_has_zero_kl_full_agreement_and_zero_sobolev():
    net = _student(sobolev_cost=1.0)
    twin = ImpalaNet(SPEC, ImpalaConfig(torso="mlp", hidden_sizes=(16,)))
    twin.load_state_dict(net.student.state_dict())
    net.set_teacher(twin, {"path": "t", "checkpoint": "t", "params_sha256": "0" * 64})
    net.train()
    batch = _batch()
    out = _outputs(net, batch)
    for variant in ("teacher_distill", "on_policy_distill", "value_gated"):
        _, m = distill_loss(net.cfg.model_copy(update={"variant": variant}), batch, out)
        assert float(m["distill/kl"]) == pytest.approx(0.0, abs=1e-6)
        assert float(m["distill/agreement"]) == 1.0
    obs = batch["obs"].reshape(-1, *SPEC.obs_shape)
    term = sobolev_term(net.student, twin, obs, "log_pi", 1.0, torch.Generator().manual_seed(0))
    assert float(term.detach()) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("target", ["log_pi", "centred_logits", "value"])
def test_the_sobolev_term_matches_finite_differences(target):
    torch.manual_seed(0)
    cfg = ImpalaConfig(torso="mlp", hidden_sizes=(8,))
    spec = EnvSpec("v", (1, 1, 3), np.dtype(np.float32), 3, 1, {"obs_scale": 0.5})
    student, teacher = ImpalaNet(spec, cfg), ImpalaNet(spec, cfg)  # float32: the torsos compute in float
    obs = torch.randn(5, 1, 1, 3)

    def f(net, x):  # the target's outputs for one observation x [1, 1, 3]
        z = torch.zeros(1, 1)
        out, _ = net({"obs": x[None], "first": z.bool(), "prev_action": z.long(), "prev_reward": z}, ())
        if target == "value":
            return out["baseline"][0]
        logits = out["policy_logits"][0, 0]
        return F.log_softmax(logits, -1) if target == "log_pi" else logits - logits.mean()

    gen_state = torch.Generator().manual_seed(3).get_state()
    got = sobolev_term(student, teacher, obs, target, 0.5, torch.Generator().set_state(gen_state))
    # the same projections u, then J^T u by central differences on the input in the net's units (x * 0.5)
    k = 1 if target == "value" else 3
    u = torch.randn((5, k), generator=torch.Generator().set_state(gen_state))
    u = u / u.norm(dim=1, keepdim=True)
    eps, total = 1e-3, 0.0
    for n in range(5):
        diffs = []
        for j in range(3):
            d = torch.zeros(1, 1, 3)
            d[0, 0, j] = eps / 0.5  # a step of eps in input units is eps / scale in stored units
            js = (f(student, obs[n : n + 1] + d) - f(student, obs[n : n + 1] - d)) / (2 * eps)
            jt = (f(teacher, obs[n : n + 1] + d) - f(teacher, obs[n : n + 1] - d)) / (2 * eps)
            diffs.append(float(((js - jt).reshape(-1) * u[n].to(js.dtype)).sum()))
        total += sum(x * x for x in diffs)
    assert float(got) == pytest.approx(total / 5, rel=1e-2)


def test_each_pseudo_reward_against_a_slow_reference():
    net = _student()
    teacher = ImpalaNet(SPEC, ImpalaConfig(torso="mlp", hidden_sizes=(16,)))
    net.set_teacher(teacher, {"path": "t", "checkpoint": "t", "params_sha256": "0" * 64})
    net.train()
    batch = _batch()
    out = _outputs(net, batch)
    T, B = batch["action"].shape[0] - 1, batch["action"].shape[1]
    floor, gamma = 1e-4, net.cfg.discount
    for variant, (_, _, pseudo) in VARIANTS.items():
        cfg = net.cfg.model_copy(update={"variant": variant})
        got = pseudo_rewards(cfg, pseudo, batch, out, vtrace_inputs(cfg, batch, out["baseline"]))
        for t in range(T):
            for b in range(B):
                p_t = F.softmax(out["teacher_logits"][t, b], -1).clamp_min(floor)
                p_next_t = F.softmax(out["teacher_logits"][t + 1, b], -1)
                p_next_s = F.softmax(out["student_logits"][t + 1, b], -1)
                inside = not bool(batch["terminated"][t + 1, b])
                a = int(batch["action"][t + 1, b])
                if pseudo == "none":
                    want = 0.0
                elif pseudo == "teacher_log_prob":
                    want = math.log(float(p_t[a]))
                elif pseudo == "next_neg_cross_entropy":
                    want = float((p_next_t * p_next_s.log()).sum()) if inside else 0.0
                elif pseudo == "next_teacher_log_prob":
                    want = float((p_next_s * p_next_t.clamp_min(floor).log()).sum()) if inside else 0.0
                else:  # teacher V shaping
                    v = out["teacher_baseline"]
                    want = float(batch["reward"][t + 1, b] + gamma * inside * v[t + 1, b] - v[t, b])
                assert float(got[t, b]) == pytest.approx(want, abs=1e-5), (variant, t, b)


def test_the_control_policy_acts_in_training_and_the_student_in_evaluation():
    batch = _batch()
    for control, p in (("teacher", None), ("student", None), ("mixture", 0.25)):
        net = _student(control=control, **({"teacher_action_prob": p} if p is not None else {}))
        net.set_teacher(ImpalaNet(SPEC, ImpalaConfig(torso="mlp", hidden_sizes=(16,))), {"path": "t"})
        net.train()
        out = _outputs(net, batch)
        want = {
            "teacher": out["teacher_logits"],
            "student": out["student_logits"],
            "mixture": (
                0.25 * F.softmax(out["teacher_logits"], -1) + 0.75 * F.softmax(out["student_logits"], -1)
            ).log(),
        }[control]
        torch.testing.assert_close(F.log_softmax(out["policy_logits"], -1), F.log_softmax(want, -1))
        net.eval()
        torch.testing.assert_close(_outputs(net, batch)["policy_logits"], out["student_logits"])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("distill") / "teacher"
    decoupled.train("impala/catch", run_dir=run, **SMALL)
    return run


def _distill(run: Path, teacher: str, **agent) -> dict:
    return decoupled.train("impala/catch", run_dir=run, agent={"name": "distill", "teachers": [teacher],
                           "hidden_sizes": [32], **agent}, **SMALL)  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_checkpoints_resumes_and_evaluates(variant, teacher: Path, tmp_path: Path):
    run = tmp_path / variant
    extra = {"sobolev_cost": 0.1} if variant == "on_policy_distill" else {}
    assert _distill(run, str(teacher), variant=variant, **extra)["status"] == "finished"
    keys = {k for line in (run / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert {"distill/kl", "distill/agreement", "distill/state_loss"} <= keys
    assert ("distill/sobolev" in keys) == bool(extra)
    record = json.loads((run / "init_sources.json").read_text())["teachers"][0]
    assert record["agent"] == "impala" and len(record["params_sha256"]) == 64
    assert decoupled.train(run_dir=run, resume=True, overrides=["runner.total_env_frames=4800"])["status"] == "finished"
    assert len(decoupled.evaluate(run, episodes=2)["episode_scores"]) == 2  # the student alone, no teacher needed


def test_teachers_that_cannot_teach_are_refused_before_training(teacher: Path, tmp_path: Path, capsys):
    from decoupled.runners.cli import main

    rc = main(["train", "impala/catch", "agent.name=distill", "agent.teachers=[runs/none_here]", "wandb.mode=disabled",
               "--run-dir", str(tmp_path / "a")])  # fmt: skip
    assert rc == 2 and "agent.teachers[0] = runs/none_here: cannot load it" in capsys.readouterr().err
    rc = main(["train", "impala/catch", "agent.name=distill", f"agent.teachers=[{teacher}]", "env.rows=12",
               "wandb.mode=disabled", "--run-dir", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "does not match the student's" in err and "(1, 12, 5)" in err


def test_a_resume_whose_teacher_changed_stops_and_says_so(teacher: Path, tmp_path: Path):
    import shutil

    own = tmp_path / "teacher"
    shutil.copytree(teacher, own)
    run = tmp_path / "student"
    _distill(run, str(own))
    decoupled.train(run_dir=own, resume=True, overrides=["runner.total_env_frames=4800"])  # the teacher trains on
    with pytest.raises(AgentSetupError, match="not the ones this run was trained with"):
        decoupled.train(run_dir=run, resume=True, overrides=["runner.total_env_frames=4800"])


@pytest.mark.parametrize("algo", ["PPO", "A2C", "DQN"])
def test_sb3_teachers_load_and_act_as_sb3s_own_predict(algo, tmp_path: Path):
    """An SB3 model on the student's env (Catch, through a gymnasium view of it) as a .zip: the teacher's greedy
    actions are SB3's `predict(deterministic=True)`, and a student distils from it through the CLI."""
    import gymnasium as gym
    import stable_baselines3 as sb3

    from decoupled.agents.distill import load_sb3

    env_spec = decoupled.make_env("impala/catch").spec

    class CatchView(gym.Env):
        observation_space = gym.spaces.Box(0, 1, env_spec.obs_shape, np.uint8)
        action_space = gym.spaces.Discrete(env_spec.num_actions)

        def reset(self, *, seed=None, options=None):
            return np.zeros(env_spec.obs_shape, np.uint8), {}

        def step(self, action):
            return np.zeros(env_spec.obs_shape, np.uint8), 0.0, True, False, {}

    kw = {"learning_starts": 0} if algo == "DQN" else {}
    model = getattr(sb3, algo)("MlpPolicy", CatchView(), policy_kwargs={"net_arch": [16]}, seed=0, device="cpu", **kw)
    path = tmp_path / f"{algo.lower()}.zip"
    model.save(path)
    teacher, shape, n, kind = load_sb3(str(path), temperature=0.01)
    assert shape == env_spec.obs_shape and n == env_spec.num_actions and kind == algo.lower()
    obs = np.random.default_rng(0).integers(0, 2, (12, *env_spec.obs_shape)).astype(np.uint8)
    want, _ = model.predict(obs, deterministic=True)
    zeros = torch.zeros(1, 12)
    out, _ = teacher({"obs": torch.as_tensor(obs)[None], "first": zeros.bool(), "prev_action": zeros.long(),
                      "prev_reward": zeros}, ())  # fmt: skip
    np.testing.assert_array_equal(out["policy_logits"][0].argmax(-1).numpy(), want)
    run = tmp_path / "student"
    assert _distill(run, str(path))["status"] == "finished"
    assert json.loads((run / "init_sources.json").read_text())["teachers"][0]["agent"] == f"sb3_{algo.lower()}"


def test_an_sb3_teacher_of_another_env_is_refused_with_the_shapes(tmp_path: Path):
    import gymnasium as gym
    import stable_baselines3 as sb3

    from decoupled.agents.distill import load_teachers

    class Other(gym.Env):
        observation_space = gym.spaces.Box(0, 1, (4, 10, 10), np.uint8)
        action_space = gym.spaces.Discrete(6)

    path = tmp_path / "ppo.zip"
    sb3.PPO("MlpPolicy", Other(), policy_kwargs={"net_arch": [8]}, device="cpu").save(path)
    net = _student()
    cfg = net.cfg.model_copy(update={"teachers": (str(path),)})
    with pytest.raises(AgentSetupError) as e:
        load_teachers(cfg, net, lambda p: None)
    assert "(4, 10, 10)" in str(e.value) and "(2, 5, 4)" in str(e.value) and "6 actions" in str(e.value)


@pytest.mark.parametrize(
    "variant", ["n_distill", "expected_entropy_regularised", "teacher_distill", "on_policy_distill"]
)
def test_the_proper_gradient_variants_update_along_the_gradient_of_their_objective(variant):
    """Theorem 2 of Distilling Policy Distillation on a small deterministic MDP (4 states, 2 actions, horizon 3),
    exactly, by enumerating every trajectory: the expected update of the agent's own loss (distill_loss, one whole
    episode per batch column, on-policy, discount 1) is the gradient of J = E_{pi_theta}[sum_t l_t] for N-distill and
    expected entropy regularised; on-policy distill's is not (it is no gradient field, Theorem 1). Teacher-driven
    distillation is the gradient of E_{pi_T}[sum_t l_t] (supervised learning on the teacher's states)."""
    import itertools

    S, A, H = 4, 2, 3
    spec = EnvSpec("mdp", (1, 1, S), np.dtype(np.uint8), A, 1, {"obs_scale": 1.0})
    torch.manual_seed(1)
    cfg = DistillConfig(teachers=("t",), torso="mlp", hidden_sizes=(8,), variant=variant, discount=1.0,
                        baseline_cost=0.0, entropy_cost=0.0, loss_reduction="sum")  # fmt: skip
    net = DistillNet(spec, cfg)
    net.set_teacher(ImpalaNet(spec, ImpalaConfig(torso="mlp", hidden_sizes=(8,))), {"path": "t"})
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]

    def onehot(s: int) -> torch.Tensor:
        x = torch.zeros(1, 1, S, dtype=torch.uint8)
        x[0, 0, s] = 1
        return x

    def step(s: int, a: int) -> int:
        return (s + a + 1) % S

    def run(actions: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """One whole episode as a [H+1, 1] batch: slots 0..H-1 its states, slot H the next episode's first state."""
        states = [0]
        for a in actions:
            states.append(step(states[-1], a))
        obs = torch.stack([onehot(s) for s in states[:-1]] + [onehot(0)])[:, None]
        action = torch.tensor([0, *actions])[:, None]
        done = torch.zeros(H + 1, 1, dtype=torch.bool)
        done[H] = True
        first = torch.cat([torch.ones(1, 1, dtype=torch.bool), done[1:]])
        zeros = torch.zeros(H + 1, 1)
        batch = {"obs": obs, "action": action, "reward": zeros, "terminated": done,
                 "truncated": torch.zeros_like(done), "first": first, "truncation_value": zeros}  # fmt: skip
        out = _outputs(net, {**batch, "behaviour_logits": torch.zeros(H + 1, 1, A)})
        behaviour = torch.zeros(H + 1, 1, A)  # slot t+1: the logits that chose the action taken at obs_t
        behaviour[1:] = out["policy_logits"][:-1].detach()
        batch["behaviour_logits"] = behaviour
        return batch

    def logits(s: int, who: str) -> torch.Tensor:
        out = _outputs(net, run((0,) * H) | {"obs": onehot(s)[None, None]})
        return out["student_logits" if who == "student" else "teacher_logits"][0, 0]

    def ell(s: int) -> torch.Tensor:  # the variant's per-state loss at s
        log_s, p_t = F.log_softmax(logits(s, "student"), -1), F.softmax(logits(s, "teacher"), -1).detach()
        if variant == "expected_entropy_regularised":
            return -(log_s.exp() * p_t.clamp_min(cfg.teacher_prob_floor).log()).sum()
        return -(p_t * log_s).sum()

    # the expected update of the agent's loss, over every trajectory of the control policy
    expected = [torch.zeros_like(p) for p in params]
    objective = torch.zeros(())
    control = "teacher" if variant == "teacher_distill" else "student"
    for actions in itertools.product(range(A), repeat=H):
        states, prob, prob_detached = [0], torch.ones(()), 1.0
        for a in actions:
            p = F.softmax(logits(states[-1], control), -1)[a]
            prob, prob_detached = prob * p, prob_detached * float(p.detach())
            states.append(step(states[-1], a))
        batch = run(actions)
        loss, _ = distill_loss(cfg, batch, _outputs(net, batch))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for e, g in zip(expected, grads, strict=True):
            if g is not None:
                e += prob_detached * g
        weight = prob if control == "student" else prob.detach()  # J's trajectory distribution
        objective = objective + weight * sum(ell(s) for s in states[:-1])
    true = torch.autograd.grad(objective, params, allow_unused=True)
    err = sum(float((e - (t if t is not None else 0)).abs().max()) for e, t in zip(expected, true, strict=True))
    size = sum(float((t if t is not None else torch.zeros(())).abs().max()) for t in true)
    if variant == "on_policy_distill":
        assert err > 1e-3 * size  # not the gradient of its objective
    else:
        assert err < 1e-4 * max(size, 1.0), (err, size)


def test_a_multi_game_student_asks_each_observations_own_game_teacher():
    spec = EnvSpec("multi", (3 + 2, 4, 4), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0, "games": ["a", "b"],
                                                                       "game_planes": 2})  # fmt: skip
    view = EnvSpec("one", (3, 4, 4), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
    net = DistillNet(spec, DistillConfig(teachers=("a", "b"), torso="mlp", hidden_sizes=(8,)))
    teachers = [ImpalaNet(view, ImpalaConfig(torso="mlp", hidden_sizes=(8,))) for _ in range(2)]
    net.set_teachers(teachers, [{"path": "a", "params_sha256": "0" * 64}, {"path": "b", "params_sha256": "1" * 64}])
    obs = torch.randint(0, 2, (2, 6, 5, 4, 4), dtype=torch.uint8)
    obs[:, :, 3:] = 0
    game = torch.randint(0, 2, (2, 6))
    for g in range(2):
        obs[:, :, 3 + g][game == g] = 1
    zeros = torch.zeros(2, 6)
    inputs = {"obs": obs, "first": zeros.bool(), "prev_action": zeros.long(), "prev_reward": zeros}
    net.train()
    out, _ = net(inputs, net.initial_state(6))
    for g, teacher in enumerate(teachers):
        own, _ = teacher({**inputs, "obs": obs[:, :, :3]}, ())
        torch.testing.assert_close(out["teacher_logits"][game == g], own["policy_logits"][game == g])
        torch.testing.assert_close(out["teacher_baseline"][game == g], own["baseline"][game == g])


def test_a_multi_game_student_trains_resumes_and_is_evaluated_per_game(tmp_path: Path):
    pytest.importorskip("minatar")
    union = {"channels": "union", "full_action_set": True, "num_envs": 4}
    small = {"runner": {"total_env_frames": 800, "checkpoint_every_env_frames": 800, "mode": "serial"},
             "wandb": {"mode": "disabled"}}  # fmt: skip
    teachers = []
    for game in ("breakout", "space_invaders"):
        run = tmp_path / game
        decoupled.train(f"impala/minatar_{game}", run_dir=run, env={**union, "id": game}, **small)
        teachers.append(str(run))
    student = tmp_path / "student"
    decoupled.train("distill/minatar_multi", run_dir=student, agent={"teachers": teachers, "hidden_sizes": [32]},
                    env={"games": ["breakout", "space_invaders"], "num_envs": 4}, **small)  # fmt: skip
    record = json.loads((student / "init_sources.json").read_text())["teachers"]
    assert [Path(t["path"]).name for t in record] == ["breakout", "space_invaders"]
    assert (
        decoupled.train(run_dir=student, resume=True, overrides=["runner.total_env_frames=1600"])["status"]
        == "finished"
    )
    from decoupled.runners.cli import main

    assert main(["eval", str(student), "--episodes", "2", "--no-video"]) == 0
    scores = json.loads((student / "eval" / "scores.json").read_text())
    assert set(scores["games"]) == {"breakout", "space_invaders"}
    # teachers in the wrong order: refused with the game each position needs
    with pytest.raises(AgentSetupError, match="a teacher of space_invaders"):
        decoupled.train("distill/minatar_multi", run_dir=tmp_path / "bad", agent={"teachers": teachers[::-1]},
                        env={"games": ["breakout", "space_invaders"], "num_envs": 4}, **small)  # fmt: skip
