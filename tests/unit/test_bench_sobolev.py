"""`decoupled bench sobolev` (runners/bench/sobolev.py): the functions' gradients are right, and fitting the gradients
too lowers the test error on a smooth function, as Sobolev Training reports."""

from __future__ import annotations

import pytest
import torch

from decoupled.runners.bench.sobolev import FUNCTIONS, run_cell, sample


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_sampled_gradients_are_the_functions_own(name):
    f, _ = FUNCTIONS[name]
    x, y, g = sample(name, 8, torch.Generator().manual_seed(0))
    xd = x.double()
    torch.testing.assert_close(f(xd[:, 0], xd[:, 1]).float(), y, rtol=1e-5, atol=1e-4)
    eps = 1e-5
    for j in range(2):
        d = torch.zeros_like(xd)
        d[:, j] = eps
        fd = (f(*(xd + d).T) - f(*(xd - d).T)) / (2 * eps)
        torch.testing.assert_close(fd.float(), g[:, j], rtol=1e-3, atol=1e-2)


def test_sobolev_fits_a_smooth_function_better_from_20_points():
    errors = run_cell("booth", 20, seed=0, steps=300, test_points=500)
    assert set(errors) == {"regular", "sobolev", "stochastic_sobolev"}
    assert errors["sobolev"] < errors["regular"] and errors["stochastic_sobolev"] < errors["regular"]
