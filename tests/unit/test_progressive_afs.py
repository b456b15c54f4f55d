"""Average Fisher and Perturbation Sensitivity (runners/evaluation/analyze.py): per-sample gradients from one backward
equal the batch-of-one ones; a column the policy cannot see gets 0, a column it reads alone gets 1 (both measures);
the CLI writes their files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from decoupled.agents.progressive import ProgressiveConfig, ProgressiveNet
from decoupled.envs import make_vec_env
from decoupled.runners.evaluation.analyze import fisher_sensitivity, lateral_scale


def _net(spec, core: str = "none") -> ProgressiveNet:
    torch.manual_seed(0)
    cfg = ProgressiveConfig(columns=("random",), torso="mlp", hidden_sizes=(16, 8), core=core, lstm_size=8)
    return ProgressiveNet(spec, cfg)


@pytest.mark.parametrize("core", ["none", "lstm"])
def test_one_backward_gives_each_samples_own_gradient(core):
    spec = make_vec_env("catch", "catch", 1, 0).spec
    net = _net(spec, core)
    g = torch.Generator().manual_seed(1)
    B = 5
    inputs = {"obs": torch.randint(0, 2, (1, B, *spec.obs_shape), generator=g).to(torch.uint8),
              "first": torch.zeros(1, B, dtype=torch.bool), "prev_action": torch.randint(0, 3, (1, B), generator=g),
              "prev_reward": torch.zeros(1, B)}  # fmt: skip
    state = tuple(torch.randn(s.shape, generator=g) for s in net.initial_state(B))
    actions = torch.randint(0, 3, (B,), generator=g)
    out, acts, _ = net.forward_with_activations(inputs, state)
    logp = torch.log_softmax(out["policy_logits"][0], -1).gather(-1, actions[:, None]).sum()
    keys = list(acts)
    batched = torch.autograd.grad(logp, [acts[k] for k in keys])
    for b in range(B):
        one = {k: v[:, b : b + 1] for k, v in inputs.items()}
        out1, acts1, _ = net.forward_with_activations(one, tuple(s[b : b + 1] for s in state))
        lp = torch.log_softmax(out1["policy_logits"][0], -1)[0, actions[b]]
        single = torch.autograd.grad(lp, [acts1[k] for k in keys])
        for k, gb, gs in zip(keys, batched, single, strict=True):
            torch.testing.assert_close(gb[b : b + 1], gs, msg=str(k))


def test_a_column_the_policy_cannot_see_scores_0_and_one_it_reads_alone_scores_1():
    with make_vec_env("catch", "catch", 4, 0) as env:
        net = _net(env.spec)
        with torch.no_grad():  # no lateral reaches column 2: the frozen column 1 is invisible to the policy
            for adapter in [*net.adapters[1].torso, net.adapters[1].policy, net.adapters[1].baseline]:
                adapter.u.weight.zero_()
        r = fisher_sensitivity(net, env, steps=20, seed=0)
        for name in r["layers"]:
            assert r["per_layer"][name]["afs"][0] == pytest.approx(0.0, abs=1e-9), name
            assert r["per_layer"][name]["afs"][1] == pytest.approx(1.0), name
        net = _net(env.spec)
        with torch.no_grad():  # the new column's own output weights at 0: the policy reads column 1 alone
            net.columns[1].heads.policy.weight.zero_()
        r = fisher_sensitivity(net, env, steps=20, seed=0)
        for name in r["layers"]:
            assert r["per_layer"][name]["afs"][0] == pytest.approx(1.0), name
            assert sum(r["per_layer"][name]["share"]) == pytest.approx(1.0)


@pytest.mark.parametrize("core", ["none", "lstm"])
def test_laterals_measure_the_lateral_term_beside_the_own_pre_activation(core):
    """With the policy fixed (its weights and its adapter's at 0, so the same states come every time), scaling one
    adapter's U by 3 scales its lateral spread by 3 and leaves the own spread alone; U at 0 gives a ratio of 0."""
    with make_vec_env("catch", "catch", 4, 0) as env:
        net = _net(env.spec, core)
        ad = net.adapters[1]
        with torch.no_grad():
            net.columns[1].heads.policy.weight.zero_()
            ad.policy.u.weight.zero_()
        before = lateral_scale(net, env, steps=15, seed=0)["columns"]["1"]
        with torch.no_grad():
            ad.torso[0].u.weight.mul_(3.0)
        after = lateral_scale(net, env, steps=15, seed=0)["columns"]["1"]
    labels = ["fc2", "policy", "baseline"] + (["core"] if core == "lstm" else [])
    assert sorted(before) == sorted(labels)
    assert after["fc2"]["lateral_std"] == pytest.approx(3 * before["fc2"]["lateral_std"], rel=1e-5)
    assert after["fc2"]["own_std"] == pytest.approx(before["fc2"]["own_std"], rel=1e-6)
    assert before["fc2"]["lateral_std"] > 0 and before["fc2"]["own_std"] > 0
    assert before["policy"]["lateral_std"] == 0.0 and before["policy"]["ratio"] == 0.0
    assert before["fc2"]["alpha"] == pytest.approx(float(ad.torso[0].alpha.detach()))


def test_analyze_afs_and_aps_write_their_json_and_figures(tmp_path):
    import decoupled
    from decoupled.runners.cli import main

    src, run = tmp_path / "src", tmp_path / "p2"
    small = {"runner": {"total_env_frames": 1600, "mode": "serial"}, "wandb": {"mode": "disabled"}}
    decoupled.train("impala/catch", run_dir=src, **small)
    decoupled.train("impala/catch", run_dir=run, agent={"name": "progressive", "columns": [str(src)]},
                    env={"transform": "hflip"}, **small)  # fmt: skip
    assert main(["analyze", "afs", str(run), "--steps", "10", "--num-envs", "2"]) == 0
    result = json.loads((run / "analysis" / "afs.json").read_text())
    assert result["layers"] == ["fc1", "fc2"] and result["columns"] == [0, 1]
    for v in result["per_layer"].values():
        assert np.isclose(sum(v["afs"]), 1.0) and all(0 <= x <= 1 for x in v["afs"])
    assert (run / "analysis" / "afs.png").stat().st_size > 0
    assert main(["analyze", "afs", str(src)]) == 2  # one column: nothing to compare
    args = ["analyze", "aps", str(run), "--episodes", "2", "--bisections", "2", "--score-offset", "-1"]
    assert main(args) == 0
    aps = json.loads((run / "analysis" / "aps.json").read_text())
    assert aps["layers"] == ["fc1", "fc2"] and all(np.isclose(sum(v["aps"]), 1.0) for v in aps["per_layer"].values())
    assert (run / "analysis" / "aps.png").stat().st_size > 0
    assert main(["analyze", "laterals", str(run), "--steps", "10", "--num-envs", "2"]) == 0
    lat = json.loads((run / "analysis" / "laterals.json").read_text())
    assert sorted(lat["columns"]["1"]) == ["baseline", "fc2", "policy"]
    assert all(v["own_std"] > 0 and v["ratio"] >= 0 for v in lat["columns"]["1"].values())
    assert main(["analyze", "laterals", str(src)]) == 2  # one column: no laterals


def test_aps_and_afs_give_everything_to_the_column_the_policy_copies(tmp_path):
    """A 2-column net whose policy is exactly its frozen column's (the head adapter copies that column's policy
    layer, the new column's own output weights are 0): noise in the new column never costs return (APS ~ 0), noise
    in the frozen one does (APS ~ 1), and the Fisher agrees."""
    import decoupled
    from decoupled.runners.evaluation.analyze import perturbation_sensitivity
    from decoupled.runners.training.train import load_run_checkpoint

    src = tmp_path / "src"
    decoupled.train("impala/catch", run_dir=src, runner={"total_env_frames": 60_000, "mode": "serial"},
                    wandb={"mode": "disabled"})  # fmt: skip
    _, state, _ = load_run_checkpoint(src)
    with make_vec_env("catch", "catch", 4, 0) as env:
        spec = env.spec
    net = ProgressiveNet(spec, ProgressiveConfig(columns=(str(src),), torso="mlp", hidden_sizes=(64, 64)))
    net.columns[0].load_state_dict(state["net"])
    ad, own = net.adapters[1].policy, net.columns[1].heads.policy
    with torch.no_grad():
        ad.alpha.fill_(1.0)
        ad.v.weight.copy_(torch.eye(64))
        ad.v.bias.zero_()
        ad.u.weight.copy_(net.columns[0].heads.policy.weight)
        own.weight.zero_()
        own.bias.copy_(net.columns[0].heads.policy.bias)

    def make_env():
        return make_vec_env("catch", "catch", 8, 0, mode="eval")

    r = perturbation_sensitivity(net, make_env, episodes=16, seed=0, bisections=6, score_offset=-1.0)
    assert r["clean_score"] > 0.5  # the source policy catches
    for name in r["layers"]:
        assert r["per_layer"][name]["aps"][0] > 0.99, (name, r["per_layer"][name])
    with make_vec_env("catch", "catch", 4, 0) as env:
        f = fisher_sensitivity(net, env, steps=20, seed=0)
    for name in f["layers"]:
        assert f["per_layer"][name]["afs"][0] == pytest.approx(1.0), name
