"""The synthetic-gradient core: exact equivalences with the LSTM core, M's regression target on a linear RNN,
no leak of M's loss into the core, episode starts at the window's edges, config errors; the Sobolev-trained critic
(`agent.dni.module: critic`): its gradient is the synthetic gradient, it starts as exact truncated BPTT, its value
and gradient targets are the window's loss and that loss's gradient, IMPALA's per-column loss sums to its loss."""

import types

import numpy as np
import pytest
import torch
import yaml

from decoupled.agents import get_agent
from decoupled.agents.base import module_learner_hooks, trainable_parameters
from decoupled.agents.impala import ImpalaConfig, ImpalaNet, impala_loss
from decoupled.agents.nets.dni import (
    DNIConfig,
    DNILSTMCore,
    SyntheticGradientCritic,
    SyntheticGradientModule,
    SyntheticGradients,
)
from decoupled.envs.base import EnvSpec
from decoupled.runners.training.actor_learner import Learner, net_inputs, rollout_to_batch
from decoupled.runners.training.config import ConfigError, load_config

SPEC = EnvSpec("vec", (6,), np.dtype(np.float32), 3)
T, B = 5, 4


def _rollout(seed=0, first_at=(), T=T):
    """A learner batch [T+1, B] of random transitions; `first_at`: (slot, column) pairs where an episode starts."""
    rng = np.random.default_rng(seed)
    done = np.zeros((T + 1, B), bool)
    for t, b in first_at:
        done[t, b] = True
    data = {
        "obs": rng.normal(size=(T + 1, B, 6)).astype(np.float32),
        "action": rng.integers(0, 3, (T + 1, B)),
        "reward": rng.normal(size=(T + 1, B)).astype(np.float32),
        "terminated": done,
        "truncated": np.zeros((T + 1, B), bool),
        "behaviour_logits": rng.normal(size=(T + 1, B, 3)).astype(np.float32),
        "truncation_value": np.zeros((T + 1, B), np.float32),
    }
    state = [rng.normal(size=(B, 8)).astype(np.float32) for _ in range(2)]
    return {"data": data, "initial_state": state, "policy_version": 0}


def _learner(core, **dni):
    torch.manual_seed(0)
    kw = {"torso": "mlp", "hidden_sizes": (16,), "core": core, "lstm_size": 8}
    if dni:
        kw["dni"] = DNIConfig(**dni)
    cfg = ImpalaConfig(**kw)
    net = ImpalaNet(SPEC, cfg)
    opt = torch.optim.RMSprop(trainable_parameters(net, module_learner_hooks(cfg, net)), lr=1e-2, eps=1e-5)
    return Learner(get_agent("impala"), cfg, net, opt, torch.device("cpu"), 40.0, 3), net


def _core_params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items() if ".sg." not in k and ".aux." not in k}


def test_dni_disabled_is_bit_identical_to_the_lstm_core():
    (la, a), (lb, b) = _learner("lstm"), _learner("dni_lstm", enabled=False)
    assert list(a.state_dict()) == list(b.state_dict())  # no M built, the same parameters in the same order
    assert lb.hooks == []
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    for seed in range(4):
        ma, mb = la.step(_rollout(seed)), lb.step(_rollout(seed))
        assert ma == mb
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_zero_synthetic_gradient_is_exactly_truncated_bptt_and_a_nonzero_one_is_not():
    la, a = _learner("lstm")
    ld, d = _learner("dni_lstm")
    assert all(torch.equal(p, torch.zeros_like(p)) for p in d.core.sg.out.parameters())  # M starts at zero
    d.core.sg.out.register_forward_hook(lambda m, i, o: o * 0.0)  # and is forced to stay there
    for seed in range(3):
        ma, md = la.step(_rollout(seed)), ld.step(_rollout(seed))
        assert ma["loss/total"] == md["loss/total"] and ma["train/grad_norm"] == md["train/grad_norm"]
    core_a, core_d = _core_params(a), _core_params(d)
    for k in core_a:
        assert torch.equal(core_a[k], core_d[k]), k
    # a non-zero M changes the core's gradient, and only the core's and the torso's (the heads see no SG)
    lx, x = _learner("dni_lstm", scale=0.5)
    with torch.no_grad():
        x.core.sg.out.bias.fill_(1.0)
    ly, y = _learner("lstm")
    lx.step(_rollout(7))
    ly.step(_rollout(7))
    px, py = _core_params(x), _core_params(y)
    assert not torch.equal(px["core.lstm.weight_hh"], py["core.lstm.weight_hh"])
    assert torch.equal(px["heads.policy.weight"], py["heads.policy.weight"])


def test_m_regresses_the_true_boundary_gradient_of_a_linear_rnn():
    """h_{t+1} = A h_t + x_t, loss 1/2 |h_t|^2 at every step. Trained on windows of 3 steps with the bootstrapped
    target, M(h) must approach the gradient of the whole future loss, sum_{k>=1} (A^k)^T A^k h (lambda = 1), and
    with lambda < 1 the discounted fixed point P = G + lambda (A^3)^T P A^3, G the in-window part."""
    torch.manual_seed(0)
    n, window, batch = 4, 3, 256
    q, _ = torch.linalg.qr(torch.randn(n, n))
    A = 0.7 * q
    powers = [torch.linalg.matrix_power(A, k) for k in range(1, 200)]
    G = sum(p.T @ p for p in powers[:window])
    A_w = powers[window - 1]
    for scale, normalize in ((1.0, False), (0.5, True)):  # dni.normalize: M predicts in units of sigma
        P = torch.zeros(n, n)
        for _ in range(500):
            P = G + scale * A_w.T @ P @ A_w
        if scale == 1.0:
            torch.testing.assert_close(P, sum(p.T @ p for p in powers), atol=1e-5, rtol=1e-5)  # the true gradient
        sg = SyntheticGradientModule(n)
        cfg = DNIConfig(scale=scale, lr=1e-2, max_grad_norm=None, normalize=normalize)
        core = types.SimpleNamespace(sg=sg, cfg=cfg)
        dni = SyntheticGradients(core)
        h = torch.randn(batch, n)
        first = torch.zeros(window + 1, batch, dtype=torch.bool)
        batch_data = {"first": first, "reward": torch.zeros(window + 1, batch)}
        for i in range(2000):
            if i == 1400:  # a smaller step to settle on the mean of the noisy targets
                dni.optimizer.param_groups[0]["lr"] = 2e-3
            (h0,) = dni.leaf((h,))
            hs, x = [], h0
            for _ in range(window):
                x = x @ A.T + 0.5 * torch.randn(batch, n)
                hs.append(x)
            loss = sum(0.5 * (s**2).sum() for s in hs)
            outputs = {"dni/boundary_state": (hs[-1],)}
            term, _ = dni.inject(batch_data, outputs)
            (loss + term).backward()
            metrics = dni.update((h0,), batch_data, outputs)
            h = hs[-1].detach()
        W = sg.out.weight.detach() * dni.sigma  # M predicts in units of sigma: the gradient is sigma (W h + b)
        rel = (W - P).norm() / P.norm()
        assert rel < 0.05, (scale, rel.item())
        # sum-reduced loss over 256 samples: the targets are large, and so is their RMS; unnormalised, sigma stays 1
        assert dni.sigma > 1.0 if normalize else dni.sigma == 1.0
        assert (sg.out.bias.detach() * dni.sigma).norm() < 0.05 * P.norm()
        assert metrics["dni/cosine"] > 0.4  # noisy single-sample targets (about 0.56 here); M learns their mean
        assert sg.out.weight.grad is None  # M's gradients are cleared after its step


def test_m_loss_does_not_reach_the_core_and_m_is_not_in_the_agent_optimiser():
    learner, net = _learner("dni_lstm")
    sg_params = {id(p) for p in net.core.sg.parameters()}
    assert not sg_params & {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    learner.step(_rollout(0))  # M gets a first, non-zero step
    rollout = _rollout(1)
    from decoupled.runners.training.actor_learner import net_inputs, rollout_to_batch

    batch, state = rollout_to_batch(rollout, torch.device("cpu"))
    leaf = learner.hooks[0].leaf(state)
    inputs = net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu")
    outputs, _ = net(inputs, leaf)
    loss, _ = learner.agent.loss_fn(learner.cfg, batch, outputs)
    term, _ = learner.hooks[0].inject(batch, outputs)
    (loss + term).backward()
    assert all(p.grad is None for p in net.core.sg.parameters())  # the injection treats M's output as a constant
    before = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    m_before = [p.detach().clone() for p in net.core.sg.parameters()]
    metrics = learner.hooks[0].update(leaf, batch, outputs)
    after = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert any(not torch.equal(a, b) for a, b in zip(m_before, net.core.sg.parameters(), strict=True))
    assert {"dni/sg_loss", "dni/cosine", "dni/pred_norm", "dni/target_norm"} <= set(metrics)


def test_episode_starts_cut_the_synthetic_gradient():
    learner, net = _learner("dni_lstm", scale=0.5)
    with torch.no_grad():
        net.core.sg.out.bias.fill_(1.0)  # a synthetic gradient everywhere
    from decoupled.runners.training.actor_learner import net_inputs, rollout_to_batch

    # column 0: the next window starts an episode (slot T); column 1: one starts inside; 2, 3: none
    batch, state = rollout_to_batch(_rollout(0, first_at=[(T, 0), (2, 1)]), torch.device("cpu"))
    leaf = learner.hooks[0].leaf(state)
    outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"), leaf)
    term, _ = learner.hooks[0].inject(batch, outputs)
    term.backward()  # the injected term alone
    grad = torch.cat([s.grad for s in leaf], -1)
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))  # nothing injected where the next window resets
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))  # the reset inside the window cuts the path to s_0
    assert grad[2].abs().sum() > 0 and grad[3].abs().sum() > 0
    # a window that starts an episode everywhere gives M nothing to learn from: no update
    batch, state = rollout_to_batch(_rollout(1, first_at=[(0, b) for b in range(B)]), torch.device("cpu"))
    leaf = learner.hooks[0].leaf(state)
    outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"), leaf)
    m_before = [p.detach().clone() for p in net.core.sg.parameters()]
    (learner.agent.loss_fn(learner.cfg, batch, outputs)[0] + learner.hooks[0].inject(batch, outputs)[0]).backward()
    assert learner.hooks[0].update(leaf, batch, outputs) == {}
    assert all(torch.equal(a, b) for a, b in zip(m_before, net.core.sg.parameters(), strict=True))


@pytest.mark.parametrize("context", [("reward",), ("reward", "value")])
def test_conditioned_m_and_the_aux_task_train(context):
    learner, net = _learner("dni_lstm", context=context, aux_cost=0.1, hidden_size=16)
    assert net.core.sg.hidden[0].in_features == 16 + len(context)
    metrics = [learner.step(_rollout(s)) for s in range(6)]
    assert all(np.isfinite(m["dni/sg_loss"]) and np.isfinite(m["dni/aux_loss"]) for m in metrics)
    assert metrics[-1]["dni/pred_norm"] > 0  # M has moved off zero


def test_dni_core_acts_like_an_lstm_for_the_actor():
    cfg = ImpalaConfig(torso="mlp", hidden_sizes=(16,), core="dni_lstm", lstm_size=8)
    net = ImpalaNet(SPEC, cfg)
    x = {
        "obs": torch.randn(1, 2, 6),
        "first": torch.zeros(1, 2, dtype=torch.bool),
        "prev_action": torch.zeros(1, 2, dtype=torch.long),
        "prev_reward": torch.zeros(1, 2),
    }
    out, state = net(x, net.initial_state(2))
    assert set(out) == {"policy_logits", "baseline"} and len(state) == 2  # one step: no window states


def test_one_step_unrolls_train():
    """runner.unroll_length 1: the [T+1] = 2-slot window's first-step state is its boundary state (both the state
    after slot 0); M and the DNI+Aux head train on it (it raised KeyError: 0 when both indices named one step)."""
    learner, net = _learner("dni_lstm", aux_cost=0.1)
    rollout = _rollout(0, T=1)
    data = {k: torch.as_tensor(v) for k, v in rollout["data"].items()}
    first = data["terminated"] | data["truncated"]
    inputs = {"obs": data["obs"], "first": first, "prev_action": data["action"], "prev_reward": data["reward"]}
    state = tuple(torch.as_tensor(s) for s in rollout["initial_state"])
    extras: dict = {}
    with torch.no_grad():
        net(inputs, state)  # the actor's way (no extras)
        out, _ = net.core(net.torso(data["obs"].flatten(0, 1)).view(2, B, -1), data["action"], data["reward"], first,
                          state, extras=extras)  # fmt: skip
        x0 = torch.cat([net.torso(data["obs"][0]), torch.nn.functional.one_hot(data["action"][0], 3).float(),
                        data["reward"][0].clamp(-1, 1).unsqueeze(-1)], -1)  # fmt: skip
        h0, c0 = net.core.lstm(x0, state)  # the LSTM's one step from the window-start state
    for key in ("dni/first_step_state", "dni/boundary_state"):
        torch.testing.assert_close(extras[key][0], h0)
        torch.testing.assert_close(extras[key][1], c0)
    torch.testing.assert_close(out[0], h0)
    metrics = [learner.step(_rollout(s, T=1)) for s in range(6)]
    assert all(np.isfinite(m["loss/total"]) and np.isfinite(m["dni/sg_loss"]) for m in metrics)
    assert all(np.isfinite(m["dni/aux_loss"]) for m in metrics) and metrics[-1]["dni/pred_norm"] > 0


def test_config_errors_name_the_fix(tmp_path):
    catch = "configs/impala/catch.yaml"
    with pytest.raises(ConfigError, match="dni_lstm"):
        load_config(catch, ["agent.dni.scale=0.3"])
    with pytest.raises(ConfigError, match="scale"):
        load_config(catch, ["agent.core=dni_lstm", "agent.dni.scale=1.5"])
    with pytest.raises(ConfigError, match="context"):
        load_config(catch, ["agent.core=dni_lstm", "agent.dni.context=[returns]"])
    cfg = load_config(catch, ["agent.core=dni_lstm", "agent.dni.context=[reward]"])
    assert isinstance(ImpalaNet(SPEC, cfg.agent.model_copy(update={"torso": "mlp"})).core, DNILSTMCore)
    # A run dir's config.yaml lists every field, the default dni section included: it loads for any core.
    plain = load_config(catch)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(plain.model_dump(mode="json")))
    assert load_config(saved).agent.dni == DNIConfig() and load_config(saved).agent.core == plain.agent.core


# ----------------------------------------------------------------------------------------------- the critic
@pytest.mark.parametrize("hidden", [0, 5])
def test_the_critics_gradient_is_the_gradient_of_its_value(hidden):
    torch.manual_seed(0)
    critic = SyntheticGradientCritic(4, context_size=2, hidden_size=hidden)
    for p in critic.parameters():
        torch.nn.init.normal_(p)
    s, ctx = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    critic = critic.double()
    v, g = critic.value_and_gradient(s, ctx)
    assert v.shape == (3,) and g.shape == (3, 4) and not v.requires_grad and not g.requires_grad
    eps = 1e-6
    for i in range(4):  # central differences of the value in each state coordinate
        d = torch.zeros(4, dtype=torch.float64)
        d[i] = eps
        fd = (critic.value(s + d, ctx) - critic.value(s - d, ctx)) / (2 * eps)
        torch.testing.assert_close(g[:, i], fd.detach(), rtol=1e-6, atol=1e-7)
    if hidden == 0:  # a quadratic form: the gradient is linear in x = [s; context], (A + A^T) x / 2 + b, s's part
        x = torch.cat([s, ctx], -1)
        A, b = critic.quadratic.detach(), critic.linear.weight.detach()[0]
        torch.testing.assert_close(g, (x @ (A + A.T) / 2 + b)[:, :4])


def test_a_zero_critic_is_exactly_truncated_bptt():
    plain, plain_net = _learner("lstm")
    critic, critic_net = _learner("dni_lstm", module="critic")
    plain.step(_rollout(0))
    m = critic.step(_rollout(0))  # the critic is zero during this update: nothing is injected
    a, b = _core_params(plain_net), _core_params(critic_net)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert m["dni/critic_value_loss"] > 0 and m["dni/critic_gradient_loss"] > 0  # it has targets to learn
    plain.step(_rollout(1))
    m = critic.step(_rollout(1))  # now it has moved: a synthetic gradient reaches the core
    assert m["dni/injected_norm"] > 0
    a, b = _core_params(plain_net), _core_params(critic_net)
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_the_critic_targets_are_the_window_loss_and_its_gradient():
    learner, net = _learner("dni_lstm", module="critic", scale=0.5)
    hook = learner.hooks[0]
    for s in range(3):  # move the critic off zero, so the bootstrap term is not trivially 0
        learner.step(_rollout(s))
    batch, state = rollout_to_batch(_rollout(7), torch.device("cpu"))
    leaf = hook.leaf(state)
    outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"), leaf)
    loss, _ = learner.agent.loss_fn(learner.cfg, batch, outputs)
    term, _ = hook.inject(batch, outputs)
    s_T = torch.cat(list(outputs["dni/boundary_state"]), -1)
    v_T = net.core.sg.value(s_T)
    # the injected term has the gradient of lambda * L^(s_T) at s_T; the value target is the column loss plus it
    torch.testing.assert_close(hook.bootstrap, 0.5 * v_T.detach())
    torch.testing.assert_close(outputs["dni/column_loss"].sum(), loss.detach())
    total_per_column = outputs["dni/column_loss"] + hook.bootstrap
    objective = loss + 0.5 * v_T.sum()  # the same value, differentiable in s_0
    (g_obj,) = torch.autograd.grad(objective, leaf[:2], retain_graph=True)[:1]
    (loss + term).backward()
    torch.testing.assert_close(leaf[0].grad, g_obj)  # the target the critic's gradient regresses
    assert total_per_column.shape == (B,)
    before = [p.detach().clone() for p in net.core.sg.parameters()]
    metrics = hook.update(leaf, batch, outputs)
    assert any(not torch.equal(a, p) for a, p in zip(before, net.core.sg.parameters(), strict=True))
    assert {"dni/critic_value_loss", "dni/critic_gradient_loss", "dni/critic_value"} <= set(metrics)


def test_the_critic_fits_a_loss_and_its_gradient():
    """Sobolev regression through the hook's own update: value and gradient targets of a fixed quadratic loss
    (standing in for the window's loss) are fitted, both errors falling by orders of magnitude."""
    torch.manual_seed(0)
    learner, net = _learner("dni_lstm", module="critic", lr=3e-2)
    hook = learner.hooks[0]
    Q = torch.randn(16, 16) / 4
    Q = Q @ Q.T
    errors = []
    for _ in range(300):
        s0 = torch.randn(B, 16)
        h, c = s0[:, :8].requires_grad_(True), s0[:, 8:].requires_grad_(True)
        x = torch.cat([h, c], -1)
        per_column = 0.5 * ((x @ Q) * x).sum(-1) + x[:, 0]
        per_column.sum().backward()
        batch = {"first": torch.zeros(T + 1, B, dtype=torch.bool), "reward": torch.zeros(T + 1, B)}
        hook.bootstrap = 0.0
        m = hook.update((h, c), batch, {"dni/column_loss": per_column.detach()})
        errors.append((m["dni/critic_value_loss"], m["dni/critic_gradient_loss"]))
    first, last = np.mean(errors[:10], 0), np.mean(errors[-10:], 0)
    assert last[0] < 0.01 * first[0] and last[1] < 0.01 * first[1], (first, last)


def test_impala_column_loss_sums_to_the_loss():
    cfg = ImpalaConfig(torso="mlp", hidden_sizes=(16,), baseline_cost=0.7, entropy_cost=0.03)
    torch.manual_seed(0)
    Tn, Bn, A = 4, 3, 5
    batch = {
        "action": torch.randint(0, A, (Tn + 1, Bn)),
        "reward": torch.randn(Tn + 1, Bn),
        "behaviour_logits": torch.randn(Tn + 1, Bn, A),
        "first": torch.zeros(Tn + 1, Bn, dtype=torch.bool),
        "terminated": torch.zeros(Tn + 1, Bn, dtype=torch.bool),
        "truncated": torch.zeros(Tn + 1, Bn, dtype=torch.bool),
        "truncation_value": torch.zeros(Tn + 1, Bn),
    }
    outputs = {"policy_logits": torch.randn(Tn + 1, Bn, A), "baseline": torch.randn(Tn + 1, Bn)}
    for reduction in ("mean", "sum"):
        c = cfg.model_copy(update={"loss_reduction": reduction})
        out = {**outputs, "dni/wants_column_loss": True}
        loss, _ = impala_loss(c, batch, out)
        assert out["dni/column_loss"].shape == (Bn,)
        torch.testing.assert_close(out["dni/column_loss"].sum(), loss)
        plain = dict(outputs)
        impala_loss(c, batch, plain)
        assert "dni/column_loss" not in plain  # only computed when a critic asks for it


def test_critic_configs_that_cannot_work_are_refused():
    catch = "configs/impala/catch.yaml"
    dni = ["agent.core=dni_lstm", "agent.dni.module=critic"]
    cfg = load_config(catch, dni)
    assert cfg.agent.dni.module == "critic" and cfg.agent.dni.critic_value_cost == 0.1
    with pytest.raises(ConfigError, match="normalize"):
        load_config(catch, [*dni, "agent.dni.normalize=true"])
    with pytest.raises(ConfigError, match="critic_gradient_cost are both 0"):
        load_config(catch, [*dni, "agent.dni.critic_value_cost=0", "agent.dni.critic_gradient_cost=0"])
    with pytest.raises(ConfigError, match="module"):
        load_config(catch, ["agent.core=dni_lstm", "agent.dni.module=value"])
    feudal = "configs/feudal/minigrid_doorkey.yaml"
    fun = ["agent.worker_core=dni_lstm", "agent.dni.module=critic"]
    with pytest.raises(ConfigError, match="critic_value_cost=0"):
        load_config(feudal, fun)
    assert load_config(feudal, [*fun, "agent.dni.critic_value_cost=0"]).agent.dni.critic_value_cost == 0
    assert DNIConfig(module="critic", critic_value_cost=0).critic_gradient_cost == 1.0


def test_a_critic_without_the_column_loss_says_what_to_set():
    learner, net = _learner("dni_lstm", module="critic")
    hook = learner.hooks[0]
    batch, state = rollout_to_batch(_rollout(0), torch.device("cpu"))
    leaf = hook.leaf(state)
    outputs, _ = net(net_inputs(batch["obs"], batch["first"], batch["action"], batch["reward"], "cpu"), leaf)
    loss, _ = learner.agent.loss_fn(learner.cfg, batch, outputs)
    (loss + hook.inject(batch, outputs)[0]).backward()
    del outputs["dni/column_loss"]
    with pytest.raises(RuntimeError, match="critic_value_cost=0"):
        hook.update(leaf, batch, outputs)
