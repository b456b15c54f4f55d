"""Serial training is bit-identical to the stored runs of tests/data/golden_runs.npz (made before the runner was
split by role and the synthetic-gradient step moved behind the agent's learner hook): a refactor of the runner must
not change a single update. Exact where the CPU runs the same kernels as when they were stored; elsewhere
(another SIMD level) float summation order differs, so the parameters must agree to float32 rounding."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data"
_spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


@pytest.mark.parametrize("name", list(make_golden.RUNS))
def test_serial_run_matches_the_stored_final_parameters(name, monkeypatch):
    monkeypatch.chdir(make_golden.ROOT)
    stored = np.load(DATA / "golden_runs.npz")
    params = make_golden.final_parameters(name)
    keys = sorted(k.split("/", 1)[1] for k in stored.files if k.startswith(f"{name}/") and k != f"{name}/digest")
    assert sorted(params) == keys
    if str(stored["cpu_capability"]) == torch.backends.cpu.get_cpu_capability():
        assert make_golden.digest(params) == str(stored[f"{name}/digest"])
    else:
        for k in keys:
            np.testing.assert_allclose(params[k], stored[f"{name}/{k}"], rtol=1e-4, atol=1e-5, err_msg=k)
