"""UNREAL's auxiliary maths (agents/ops/auxiliary.py) and heads (agents/nets/heads.py) against hand-computed and
slow NumPy versions: the pixel change, the dueling pixel-control head and the n-step targets."""

import numpy as np
import pytest
import torch

from decoupled.agents.nets.heads import FeatureControlHead, PixelControlHead, RewardPredictionHead
from decoupled.agents.ops.auxiliary import (
    feature_change_rewards,
    pixel_change_rewards,
    pixel_control_loss,
    reward_classes,
    reward_prediction_loss,
    value_replay_loss,
)


# ------------------------------------------------------------------------------------------------ U-1
def test_pixel_change_is_the_cell_mean_of_the_central_crop():
    a = torch.zeros(1, 84, 84, dtype=torch.uint8)
    b = a.clone()
    # crop coordinates (8..11, 12..15) are frame pixels (10..13, 14..17) with the 2-pixel border
    b[0, 10:14, 14:18] = 51  # delta = 51 / 255 = 0.2
    r = pixel_change_rewards(a, b)
    assert r.shape == (20, 20)
    expected = torch.zeros(20, 20)
    expected[2, 3] = 0.2
    torch.testing.assert_close(r, expected)
    # a change in the border that the crop drops gives nothing
    c = a.clone()
    c[0, :2, :] = 255
    assert pixel_change_rewards(a, c).abs().max() == 0


def test_pixel_change_averages_channels_and_reads_only_the_selected_ones():
    a = torch.zeros(3, 84, 84, dtype=torch.uint8)
    b = a.clone()
    b[1, 10:14, 14:18] = 51  # one of three RGB channels
    torch.testing.assert_close(pixel_change_rewards(a, b)[2, 3], torch.tensor(0.2 / 3))
    # a frame stack: only the newest frame counts
    stack_a, stack_b = torch.zeros(4, 84, 84), torch.zeros(4, 84, 84)
    stack_b[0, 10:14, 14:18] = 51  # an old frame
    assert pixel_change_rewards(stack_a, stack_b, channels=slice(-1, None)).abs().max() == 0
    stack_b[3, 10:14, 14:18] = 51
    newest = pixel_change_rewards(stack_a, stack_b, channels=slice(-1, None))
    torch.testing.assert_close(newest[2, 3], torch.tensor(0.2))
    # batched leading dims, and MinAtar's 10x10 grid of 1-pixel cells
    x, y = torch.zeros(5, 2, 4, 10, 10), torch.ones(5, 2, 4, 10, 10)
    assert pixel_change_rewards(x, y, crop=0, cell=1, obs_scale=1.0).shape == (5, 2, 10, 10)
    with pytest.raises(ValueError, match="cells"):
        pixel_change_rewards(torch.zeros(1, 84, 84), torch.zeros(1, 84, 84), crop=0, cell=5)


# ------------------------------------------------------------------------------------------------ U-2
@pytest.mark.parametrize("grid", [(20, 20), (10, 10), (10, 5)])
def test_pixel_control_head_is_a_dueling_deconv_of_the_grid(grid):
    torch.manual_seed(0)
    head = PixelControlHead(32, 6, grid)
    x = torch.randn(7, 32)
    q = head(x)
    assert q.shape == (7, 6, *grid)
    h = torch.relu(head.fc(x)).view(-1, *head.map_shape)
    v, a = head.value(h), head.advantage(h)
    torch.testing.assert_close((q - v).mean(dim=1), torch.zeros(7, *grid), atol=1e-6, rtol=0)  # mean_a A is removed
    torch.testing.assert_close(q, v + a - a.mean(1, keepdim=True))
    with torch.no_grad():
        head.value.bias += 1.0  # perturbing only the V stream moves every Q
    torch.testing.assert_close(head(x), q + 1.0)


def test_reward_prediction_and_feature_control_heads_shapes():
    rp = RewardPredictionHead(16, frames=3, hidden_size=128)
    assert rp(torch.randn(3, 5, 16)).shape == (5, 3)
    assert RewardPredictionHead(16, 3, 0)(torch.randn(3, 5, 16)).shape == (5, 3)
    assert FeatureControlHead(32, 4, 64)(torch.randn(9, 32)).shape == (9, 4, 64)
    torch.testing.assert_close(reward_classes(torch.tensor([0.0, 2.0, -0.5, 1.0])), torch.tensor([0, 1, 2, 1]))
    ce, target = reward_prediction_loss(torch.tensor([[10.0, 0.0, 0.0]]), torch.tensor([0.0]))
    assert ce.item() < 1e-3 and target.item() == 0


# ------------------------------------------------------------------------------------------------ U-3
def _q_targets_numpy(rewards, discounts, continues, bootstrap):
    """Slow reference of the pixel-control targets (UNREAL, Sec. 3.1): a pseudo-reward is the change between two
    frames of one episode, so a transition that ends an episode (continues 0: the next slot is the next episode's
    first frame) adds nothing, and nothing after it counts (UNREAL's reference: pixel change 0 at the terminal
    step). Inside the episode R_t = r_t + gamma R_{t+1}, and at the sequence end bootstrap_t = max_a Q(obs_{t+1})."""
    T = len(rewards)
    out = np.zeros_like(rewards)
    for t in range(T):
        g, disc, k = 0.0, 1.0, t
        while continues[k]:  # transition k stays inside the episode
            g += disc * rewards[k]
            disc *= discounts[k]
            if k == T - 1:
                g += disc * bootstrap[k]
                break
            k += 1
        out[t] = g
    return out


def test_pixel_control_targets_by_hand_with_a_terminal_cut():
    """3 transitions, 1 cell, 2 actions, gamma_pc 0.9; the episode ends at transition 1 (slot 2 starts anew)."""
    q = torch.zeros(4, 1, 2, 1, 1)
    q[3, 0, :, 0, 0] = torch.tensor([2.0, 5.0])  # bootstrap max_a Q(obs_3) = 5
    q[2, 0, :, 0, 0] = torch.tensor([7.0, 1.0])  # would be the bootstrap of transition 1 if it did not end
    r = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1, 1)
    continues = torch.tensor([1.0, 0.0, 1.0]).view(3, 1)
    discounts = 0.9 * continues
    actions = torch.tensor([[0], [1], [1]])
    loss, targets = pixel_control_loss(q, actions, r, discounts, continues, torch.ones(3, 1))
    # the cut transition's 0.2 is the change into the next episode's first frame: no pseudo-reward, no bootstrap
    want = [0.1, 0.0, 0.3 + 0.9 * 5.0]
    torch.testing.assert_close(targets.view(3), torch.tensor(want))
    taken = torch.tensor([0.0, 0.0, 1.0])  # Q(obs_t, a_t): 0, 0 and Q(obs_2, 1) = 1
    torch.testing.assert_close(loss.view(3), 0.5 * (torch.tensor(want) - taken) ** 2)
    mask = torch.tensor([[1.0], [0.0], [1.0]])
    loss_masked, _ = pixel_control_loss(q, actions, r, discounts, continues, mask)
    assert loss_masked[1].item() == 0.0


def test_pixel_control_targets_match_numpy_over_cells_and_batch():
    g = torch.Generator().manual_seed(1)
    T, N, A, G = 6, 3, 4, 2
    q = torch.randn(T + 1, N, A, G, G, generator=g)
    r = torch.rand(T, N, G, G, generator=g)
    continues = (torch.rand(T, N, generator=g) > 0.25).float()
    discounts = 0.9 * continues
    actions = torch.randint(0, A, (T, N), generator=g)
    loss, targets = pixel_control_loss(q, actions, r, discounts, continues, torch.ones(T, N))
    max_q = q[1:].max(2).values.numpy()
    for n in range(N):
        for i in range(G):
            for j in range(G):
                ref = _q_targets_numpy(r[:, n, i, j].numpy(), discounts[:, n].numpy(), continues[:, n].numpy(),
                                       max_q[:, n, i, j])  # fmt: skip
                np.testing.assert_allclose(targets[:, n, i, j].numpy(), ref, rtol=1e-5, atol=1e-6)
    taken = q[:-1].gather(2, actions.view(T, N, 1, 1, 1).expand(T, N, 1, G, G)).squeeze(2)
    torch.testing.assert_close(loss, 0.5 * ((targets - taken) ** 2).sum((-2, -1)))


def test_value_replay_targets_by_hand():
    """R_t over 3 steps, gamma 0.99, bootstrap V(obs_3) = 2; a termination at transition 0 cuts it."""
    values = torch.zeros(3, 1, requires_grad=True)
    rewards = torch.tensor([[1.0], [0.0], [1.0]])
    nxt = torch.tensor([[0.0], [0.0], [2.0]])
    terminated = torch.tensor([[1.0], [0.0], [0.0]])
    discounts, continues = 0.99 * (1 - terminated), 1 - terminated
    loss, targets = value_replay_loss(values, rewards, discounts, continues, nxt)
    want = torch.tensor([[1.0], [0.99 * (1.0 + 0.99 * 2.0)], [1.0 + 0.99 * 2.0]])
    torch.testing.assert_close(targets, want)
    loss.sum().backward()
    torch.testing.assert_close(values.grad, -(want - 0.0))  # d/dV 1/2 (R - V)^2 = V - R; the target is fixed


def test_pixel_control_loss_gradcheck_and_feature_change():
    g = torch.Generator().manual_seed(2)
    T, N, A, G = 3, 2, 3, 2
    q0 = torch.randn(1, N, A, G, G, generator=g, dtype=torch.float64, requires_grad=True)
    rest = torch.randn(T, N, A, G, G, generator=g, dtype=torch.float64)  # slots 1..T also set the targets
    r = torch.rand(T, N, G, G, generator=g, dtype=torch.float64)
    c = torch.ones(T, N, dtype=torch.float64)
    actions = torch.randint(0, A, (T, N), generator=g)
    f = lambda q0: pixel_control_loss(torch.cat([q0, rest]), actions, r, 0.9 * c, c, c)[0].sum()  # noqa: E731
    assert torch.autograd.gradcheck(f, (q0,))
    m_t, m_tp1 = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    m_tp1[:, 1] = -1.0
    torch.testing.assert_close(feature_change_rewards(m_t, m_tp1), torch.ones(2, 3))
