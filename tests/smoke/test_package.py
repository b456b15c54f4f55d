"""decoupled as an installed package: the wheel holds one top-level package (`decoupled`, the shipped configs
included) and nothing under generic names, and from a directory with its own `envs/` and `agents/` packages the
installed wheel trains a packaged config by name and its Python API loads the policy and acts."""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "wandb", "*.egg-info", "__pycache__", "logs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "decoupled"
    shutil.copytree(ROOT, src, ignore=_SKIP)  # a copy: the build writes build/ and *.egg-info beside the sources
    dist = src.parent / "dist"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist),
         str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (path,) = dist.glob("decoupled-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_one_package_with_its_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"decoupled", next(t for t in tops if t.endswith(".dist-info"))}
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*/*.yaml")}
    assert {f"decoupled/{p}" for p in shipped} <= set(names)
    for module in ("agents/impala.py", "envs/base.py", "runners/training/train.py", "runners/cli.py", "__main__.py"):
        assert f"decoupled/{module}" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "decoupled = decoupled.runners.cli:main" in entry_points


@pytest.mark.slow
def test_the_installed_wheel_trains_by_name_and_acts_from_a_project_with_its_own_envs_and_agents(wheel, tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    project = tmp_path / "my_project"
    for name in ("envs", "agents", "runners"):  # an RL project's own packages, which used to shadow ours
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text("raise ImportError('the project's own package was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}  # tests the package, not W&B
    run = [
        sys.executable,
        "-m",
        "decoupled",
        "train",
        "impala/catch",
        "runner.total_env_frames=6400",
        "--run-dir",
        "run",
    ]
    out = subprocess.run(run, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    script = textwrap.dedent("""
        import decoupled
        import decoupled.configs
        assert decoupled.__file__.startswith(SITE), decoupled.__file__
        policy = decoupled.load_policy("run")
        env = decoupled.make_env("run", num_envs=3)
        obs, state = env.reset(seed=0), None
        for _ in range(12):
            action, state = policy.predict(obs, state)
            obs, reward, terminated, truncated, info = env.step(action)
        print("actions", action.tolist(), "configs", len(decoupled.configs.names()))
    """).replace("SITE", repr(str(site)))
    out = subprocess.run([sys.executable, "-c", script], cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "actions [" in out.stdout
    version = subprocess.run(
        [sys.executable, "-m", "decoupled", "--version"], cwd=project, env=env, capture_output=True, text=True
    )
    assert version.stdout.strip() == "decoupled 0.1.0"
