import numpy as np
import pytest
import torch

from decoupled.agents.impala import ImpalaConfig, ImpalaNet
from decoupled.agents.nets.cores import LSTMCore
from decoupled.agents.nets.torsos import ImpalaResNet, MinAtarCNN, NatureCNN, make_torso
from decoupled.envs.base import EnvSpec

ATARI = EnvSpec("atari", (4, 84, 84), np.dtype(np.uint8), 6, 4, {"obs_scale": 1 / 255})


@pytest.mark.parametrize("cls,out", [(NatureCNN, 512), (ImpalaResNet, 256)])
def test_atari_torsos_take_uint8_and_give_features(cls, out):
    torso = cls(ATARI.obs_shape)
    x = torch.randint(0, 256, (3, *ATARI.obs_shape), dtype=torch.uint8)
    y = torso(x)
    assert y.shape == (3, out) and y.dtype == torch.float32
    # the uint8 -> float scaling happens inside: the same pixels as floats in [0,1] give the same features
    torso.obs_scale = 1.0
    assert torch.allclose(torso(x.float() / 255), y, atol=1e-5)


def test_minatar_torso_shape():
    y = MinAtarCNN((4, 10, 10))(torch.zeros(5, 4, 10, 10, dtype=torch.uint8))
    assert y.shape == (5, 128)


def _inputs(T, B, first=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randint(0, 2, (T, B, 1, 10, 5), dtype=torch.uint8, generator=g),
        "first": torch.zeros(T, B, dtype=torch.bool) if first is None else first,
        "prev_action": torch.randint(0, 3, (T, B), generator=g),
        "prev_reward": torch.randn(T, B, generator=g),
    }


def _lstm_net():
    torch.manual_seed(0)
    spec = EnvSpec("catch", (1, 10, 5), np.dtype(np.uint8), 3, 1, {"obs_scale": 1.0})
    return ImpalaNet(spec, ImpalaConfig(torso="mlp", hidden_sizes=(16,), core="lstm", lstm_size=8))


def test_outputs_contract():
    net = _lstm_net()
    out, state = net(_inputs(5, 3), net.initial_state(3))
    assert out["policy_logits"].shape == (5, 3, 3) and out["baseline"].shape == (5, 3)
    assert [s.shape for s in state] == [(3, 8), (3, 8)]


def test_lstm_state_hand_off_equals_one_long_unroll():
    net = _lstm_net()
    x = _inputs(8, 4)
    full, s_full = net(x, net.initial_state(4))
    a, s_a = net({k: v[:3] for k, v in x.items()}, net.initial_state(4))
    b, s_b = net({k: v[3:] for k, v in x.items()}, s_a)
    assert torch.equal(torch.cat([a["baseline"], b["baseline"]]), full["baseline"])
    assert all(torch.equal(p, q) for p, q in zip(s_b, s_full))


def test_lstm_resets_exactly_at_episode_start():
    net = _lstm_net()
    first = torch.zeros(6, 2, dtype=torch.bool)
    first[3, 0] = True  # env 0 starts a new episode at t=3
    x = _inputs(6, 2, first)
    out, _ = net(x, net.initial_state(2))
    # env 0 from t=3 on equals a fresh run on its steps 3.. from the initial state
    fresh, _ = net({k: v[3:, :1] for k, v in x.items()}, net.initial_state(1))
    assert torch.allclose(out["baseline"][3:, 0], fresh["baseline"][:, 0], atol=1e-6)
    # and with a different (random) state before, the outputs after the reset do not change
    state = tuple(torch.randn_like(s) for s in net.initial_state(2))
    out2, _ = net(x, state)
    assert torch.allclose(out2["baseline"][3:, 0], out["baseline"][3:, 0], atol=1e-6)
    assert not torch.allclose(out2["baseline"][:3, 0], out["baseline"][:3, 0])
    # env 1 never resets: its outputs depend on the earlier state
    assert not torch.allclose(out2["baseline"][3:, 1], out["baseline"][3:, 1])


def test_prev_action_and_reward_are_inputs_zeroed_at_start():
    core = LSTMCore(4, num_actions=3, hidden_size=5)
    feats = torch.zeros(1, 2, 4)
    first = torch.tensor([[True, False]])
    a = torch.tensor([[2, 2]])
    r = torch.tensor([[1.0, 1.0]])
    out1, _ = core(feats, a, r, first, core.initial_state(2))
    out2, _ = core(feats, torch.zeros_like(a), torch.zeros_like(r), first, core.initial_state(2))
    assert torch.allclose(out1[0, 0], out2[0, 0])  # env 0 starts: a_tm1, r_tm1 ignored
    assert not torch.allclose(out1[0, 1], out2[0, 1])  # env 1 continues: they matter


@pytest.mark.parametrize("torso", ["nature_cnn", "impala_resnet", "minatar_cnn"])
def test_channels_last_layout_computes_the_same_net(torso):
    shape = (4, 10, 10) if torso == "minatar_cnn" else (4, 84, 84)
    torch.manual_seed(0)
    nchw = make_torso(torso, shape, 1 / 255, (64,), channels_last=False)
    nhwc = make_torso(torso, shape, 1 / 255, (64,), channels_last=True)
    nhwc.load_state_dict(nchw.state_dict())  # checkpoints load across layouts
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    obs = torch.randint(0, 255, (5, *shape), dtype=torch.uint8)
    a, b = nchw(obs), nhwc(obs)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    b.sum().backward()
    assert all(p.grad is not None for p in nhwc.parameters())
    nchw.load_state_dict(nhwc.state_dict())


@pytest.mark.parametrize("torso", ["nature_cnn", "impala_resnet"])
def test_orthogonal_init_gains_and_layout(torso):
    """agent.init=orthogonal: orthogonal rows scaled by the gain (sqrt 2 torso, 0.01 policy, 1 baseline), zero
    biases, and the channels-last layout kept; torch's init is the default and differs."""
    hidden = (512,) if torso == "nature_cnn" else (256,)
    net = ImpalaNet(ATARI, ImpalaConfig(torso=torso, hidden_sizes=hidden, init="orthogonal"))
    w = net.heads.policy.weight.detach()  # [A, H]: rows orthonormal times the gain
    torch.testing.assert_close(w @ w.T, 0.01**2 * torch.eye(w.shape[0]), atol=1e-7, rtol=1e-4)
    fc = net.torso.fc.weight.detach()
    torch.testing.assert_close(fc @ fc.T, 2.0 * torch.eye(fc.shape[0]), atol=1e-4, rtol=1e-4)
    conv = next(m for m in net.torso.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.bias.any()
    assert net.heads.baseline.bias.item() == 0.0
    default = ImpalaNet(ATARI, ImpalaConfig(torso=torso, hidden_sizes=hidden))
    assert default.heads.policy.weight.abs().max() > 0.02  # torch's uniform init is larger than 0.01 rows
