"""Bad inputs to the commands end in a clear message and exit 2, not a traceback; a full disk during a checkpoint
says what to do and leaves the previous checkpoint intact; a checkpoint that verifies but holds the wrong content is
skipped for the older good one, by `train --resume` and by `eval`.

The commands run in this process (`decoupled.runners.cli.main`) where they can; a subprocess only where the test
needs a process of its own (a file size limit, another user)."""

import hashlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from decoupled.runners.cli import main
from decoupled.runners.training.checkpoint import CheckpointManager, CheckpointWarning

ROOT = Path(__file__).resolve().parents[2]
CATCH = ROOT / "configs" / "impala" / "catch.yaml"
MINATAR = ROOT / "configs" / "impala" / "minatar_breakout.yaml"
# 16 envs x 20 steps = 320 frames per update: checkpoints at 320, 640 and 960 (the final one)
TINY = [
    "runner.total_env_frames=960",
    "runner.checkpoint_every_env_frames=320",
    "runner.log_every_env_frames=320",
    "runner.progress_every_seconds=1000",
    "wandb.mode=disabled",
    "logger.tensorboard=false",
]


def cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `decoupled ARGV` in this process; argparse's errors are exit 2 too."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def usage_error(capsys, *argv) -> str:
    """stderr of `decoupled ARGV`, which must exit 2 without a traceback."""
    rc, out, err = cli(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and err.strip(), err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny catch run with checkpoints at 320, 640 and 960 env frames (each test copies it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", str(CATCH), *TINY, "--run-dir", str(run)]) == 0
    assert [p.name for p in CheckpointManager(run / "checkpoints").list()] == [
        "ckpt-000000000960",
        "ckpt-000000000640",
        "ckpt-000000000320",
    ]
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


@pytest.fixture
def metrics_run(tmp_path) -> Path:
    run = tmp_path / "metrics_run"
    run.mkdir()
    lines = [{"env_frames": 320 * (i + 1), "perf/wall_time_s": float(i), "train/episode_return": i} for i in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


# ------------------------------------------------------------------------------------------------------------ plot
def _plot_case(tmp_path: Path, metrics_run: Path, case: str) -> tuple[list, str]:
    """The arguments of one bad `decoupled plot` and a piece of the message it must print."""
    (tmp_path / "a_file").write_text("x")
    if case == "missing_dir":
        return [tmp_path / "nope"], "does not exist"
    if case == "file_not_dir":
        return [tmp_path / "a_file"], "is a file, not a run dir"
    if case == "metrics_file_given":
        return [metrics_run / "metrics.jsonl"], f"give its dir, {metrics_run}"
    if case == "no_metrics":
        (tmp_path / "eval").mkdir()
        return [tmp_path / "eval"], "no metrics.jsonl"
    run = tmp_path / "bad"
    run.mkdir()
    if case == "empty_metrics":
        (run / "metrics.jsonl").write_text("")
        return [run], "metrics.jsonl is empty"
    if case == "corrupt_metrics":
        (run / "metrics.jsonl").write_bytes(b"\x00\xffgarbage\n{not json\n")
        return [run], "holds no JSON records"
    if case == "json_but_not_records":
        (run / "metrics.jsonl").write_text("5\n[1, 2]\n")
        return [run], "holds no JSON records"
    if case == "records_without_env_frames":
        (run / "metrics.jsonl").write_text('{"train/episode_return": 1.0}\n')
        return [run], "has train/episode_return values but no env_frames"
    if case == "unknown_key":
        return [metrics_run, "--key", "nope/x"], "no nope/x values yet; it has perf/wall_time_s"
    if case == "smooth_0":
        return [metrics_run, "--smooth", "0"], "argument --smooth: 0 is too small"
    if case == "smooth_negative":
        return [metrics_run, "--smooth", "-3"], "argument --smooth: -3 is too small"
    if case == "labels_mismatch":
        return [metrics_run, "--labels", "a,b"], "give one label per run dir"
    if case == "out_is_a_dir":
        return [metrics_run, "--out", tmp_path], "is a dir: give a file path in it"
    if case == "out_dir_path":
        return [metrics_run, "--out", f"{tmp_path}/new_dir/"], "is a dir: give a file path in it"
    if case == "out_below_a_file":
        return [metrics_run, "--out", tmp_path / "a_file" / "c.png"], "a_file is a file, not a dir"
    if case == "out_without_format":
        return [metrics_run, "--out", tmp_path / "curve"], "give a file name ending in .png"
    raise AssertionError(case)


PLOT_CASES = [
    "missing_dir",
    "file_not_dir",
    "metrics_file_given",
    "no_metrics",
    "empty_metrics",
    "corrupt_metrics",
    "json_but_not_records",
    "records_without_env_frames",
    "unknown_key",
    "smooth_0",
    "smooth_negative",
    "labels_mismatch",
    "out_is_a_dir",
    "out_dir_path",
    "out_below_a_file",
    "out_without_format",
]


@pytest.mark.parametrize("case", PLOT_CASES)
def test_plot_bad_input_is_a_clear_exit_2(case, tmp_path, metrics_run, capsys):
    argv, message = _plot_case(tmp_path, metrics_run, case)
    assert message in usage_error(capsys, "plot", *argv)
    assert not list(tmp_path.rglob("*.png")) and not (tmp_path / "new_dir").exists()


def test_plot_writes_into_new_dirs_of_its_out_path(metrics_run, tmp_path, capsys):
    rc, out, _ = cli(capsys, "plot", metrics_run, "--out", tmp_path / "new" / "dir" / "c.png", "--smooth", "2")
    assert rc == 0 and (tmp_path / "new" / "dir" / "c.png").is_file() and "wrote" in out


# ------------------------------------------------------------------------------------------------------------ eval
def test_eval_out_pointing_at_a_file_fails_before_evaluating(run, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    err = usage_error(capsys, "eval", run, "--episodes", "1", "--no-video", "--out", tmp_path / "a_file")
    assert "--out" in err and "is a file: give a dir" in err
    err = usage_error(capsys, "eval", run, "--episodes", "1", "--no-video", "--out", tmp_path / "a_file" / "sub")
    assert "a_file is a file, not a dir" in err
    assert not (run / "eval").exists()


# ------------------------------------------------------------------------------------------------------------ bench
def test_bench_unknown_names_are_exit_2_before_any_measurement(tmp_path, capsys):
    err = usage_error(capsys, "bench", "throughput", "--only", "impala_ff,nope", "--seconds", "1", "--repeats", "1")
    assert "decoupled bench throughput: unknown measurement(s) nope" in err and "impala_lstm" in err
    err = usage_error(
        capsys, "bench", "throughput", "--game", "Nope", "--only", "env", "--seconds", "1", "--warmup", "0",
        "--repeats", "1",
    )  # fmt: skip
    atari = importlib.util.find_spec("ale_py") is not None  # without the Atari extra, the message says to install it
    assert ("unknown Atari game 'Nope'" in err and "--game" in err) if atari else "decoupled[atari]" in err
    err = usage_error(capsys, "bench", "labyrinth", "--task", "nope", "--seconds", "0.1", "--repeats", "1")
    assert "unknown labyrinth task 'nope'" in err and "nav_maze_static_01" in err
    err = usage_error(capsys, "bench", "labyrinth", "--repeats", "0")
    assert "--repeats: 0 is too small" in err
    out = tmp_path / "peer"
    err = usage_error(capsys, "bench", "peer", "--game", "pong", "--seconds", "1", "--out", out)
    assert "unknown Atari game 'pong'; did you mean Pong?" in err if atari else "decoupled[atari]" in err
    assert not out.exists()
    assert "invalid choice: 'nope'" in usage_error(capsys, "bench", "peer", "--algo", "nope", "--out", out)
    err = usage_error(capsys, "bench", "peer", "--game", "CartPole-v0", "--seconds", "1", "--out", out)
    assert "unknown game 'CartPole-v0'" in err and "CartPole-v1" in err and not out.exists()


def test_bench_unreal_with_a_missing_config_names_it_before_starting_workers(tmp_path, capsys):
    err = usage_error(
        capsys, "bench", "unreal", "--configs", tmp_path / "missing.yaml", "--seeds", "1", "--jobs", "1",
        "--frames", "1000", "--out", tmp_path / "bench",
    )  # fmt: skip
    assert "decoupled bench unreal: invalid config" in err and "missing.yaml" in err and "no config file" in err
    assert "BrokenProcessPool" not in err and not (tmp_path / "bench").exists()


# ------------------------------------------------------------------------------------------------------------ report
def test_report_bad_inputs_are_exit_2_with_what_to_fix(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"games": {"Breakout": {"episode_scores": [1.0, 2.0]}}}))
    out = tmp_path / "report"
    assert "'impala=': no score file after the label" in usage_error(capsys, "report", "impala=", "--out", out)
    assert "no score file after the label" in usage_error(capsys, "report", "impala=,", "--out", out)
    assert "no scores file at" in usage_error(capsys, "report", f"a={tmp_path / 'missing.json'}", "--out", out)
    assert "the label before '=' is empty" in usage_error(capsys, "report", f"={good}", "--out", out)
    (tmp_path / "a_file").write_text("x")
    assert "is a file: give a dir" in usage_error(capsys, "report", good, "--out", tmp_path / "a_file")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"games": {"Breakout": {"episode_scores": [1.0, None]}}}))
    assert "are not numbers" in usage_error(capsys, "report", bad, "--out", out)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------------ render
def test_render_bad_steps_task_and_out_are_exit_2(tmp_path, capsys):
    out = tmp_path / "render"
    assert "--steps: -5 is too small" in usage_error(capsys, "render", "nav_maze_static_01", "--steps", "-5")
    assert "--steps: 0 is too small" in usage_error(capsys, "render", "nav_maze_static_01", "--steps", "0")
    err = usage_error(capsys, "render", "nope", "--steps", "3", "--out", out)
    assert "unknown labyrinth task 'nope'" in err and not out.exists()
    (tmp_path / "a_file").write_text("x")
    err = usage_error(capsys, "render", "nav_maze_static_01", "--steps", "3", "--out", tmp_path / "a_file")
    assert "is a file: give a dir" in err


# ------------------------------------------------------------------------------------------------------------ suite
def test_suite_with_an_invalid_game_config_exits_2_before_creating_anything(tmp_path, capsys, monkeypatch):
    out = tmp_path / "suite"
    args = ["--games", "breakout,NotAGame", "--out", out, "--no-eval", "runner.total_env_frames=2000"]
    err = usage_error(capsys, "suite", MINATAR, *args)
    assert "env.id" in err and "game 'NotAGame'" in err and "game 'breakout'" not in err
    assert not out.exists()
    monkeypatch.chdir(tmp_path)  # a packaged config's name works from any directory, as for `decoupled train`
    err = usage_error(capsys, "suite", "impala/minatar_breakout", *args)
    assert "env.id" in err and "NotAGame" in err and not out.exists()
    (tmp_path / "a_file").write_text("x")
    err = usage_error(capsys, "suite", MINATAR, "--games", "breakout", "--out", tmp_path / "a_file", "--no-eval")
    assert "is a file: give a dir" in err


# ------------------------------------------------------------------------------------------------------------ train
def test_train_into_a_run_dir_that_cannot_be_written_is_exit_2(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    err = usage_error(capsys, "train", CATCH, *TINY, "--run-dir", tmp_path / "a_file" / "run")
    assert "cannot write to the run dir" in err and "--run-dir" in err


def test_train_into_a_read_only_run_dir_is_exit_2(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", ro], capture_output=True).returncode:
        pytest.skip("root writes into any dir, and this machine cannot make one immutable (chattr +i)")
    try:
        err = usage_error(capsys, "train", CATCH, *TINY, "--run-dir", ro)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", ro], check=True)
        ro.chmod(0o755)
    assert "cannot write to the run dir" in err and ("Permission denied" in err or "not permitted" in err)
    assert "give the run a dir you can write (--run-dir)" in err
    assert list(ro.iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_says_how_to_resume(run, capsys):
    ckpts = CheckpointManager(run / "checkpoints")
    for newer in ckpts.list()[:2]:  # as if the run had been stopped right after its checkpoint at 320 frames
        shutil.rmtree(newer)
    (kept,) = ckpts.list()
    size = (kept / "state.pt").stat().st_size
    limit = size // 2  # state.pt no longer fits; config, metrics and summary files (a few KB) do

    def file_size_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises OSError(EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    proc = subprocess.run(
        [sys.executable, "-m", "decoupled", "train", "--resume", str(run)], capture_output=True, text=True,
        timeout=300, env=env, cwd=ROOT, preexec_fn=file_size_limit,
    )  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr
    assert "no space left on device (or file size limit)" in last, proc.stderr
    assert f"previous checkpoint {kept} is intact" in last
    assert f"free space and resume with `decoupled train --resume {run}`" in last
    assert "unexpected pos" not in proc.stderr and "Traceback" not in proc.stderr
    assert ckpts.list() == [kept] and ckpts.verify(kept)["env_frames"] == 320
    assert sorted(p.name for p in ckpts.directory.iterdir()) == [".lock", kept.name]  # no .tmp left behind
    # space again: the run continues from that checkpoint to its end
    rc, out, err = cli(capsys, "train", "--resume", run)
    assert rc == 0, err
    assert f"at 320 env frames from {kept}" in out
    assert ckpts.list()[0].name == "ckpt-000000000960"


# ------------------------------------------------------------------------------------------------------------ item 8
def _rewrite_with_a_valid_manifest(ckpt: Path, change) -> None:
    """Change the content of `ckpt`'s state.pt and give it a manifest that verifies (sha256 and size as save writes)."""
    raw = torch.load(ckpt / "state.pt", weights_only=True)
    change(raw)
    torch.save(raw, ckpt / "state.pt")
    data = (ckpt / "state.pt").read_bytes()
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    CheckpointManager(ckpt.parent).verify(ckpt)  # it does verify


def _no_net(raw: dict) -> None:
    del raw["net"]


def _wrong_shapes(raw: dict) -> None:
    name = next(iter(raw["net"]))
    raw["net"][name] = torch.zeros(3, 7)


WRONG = {"no_net": (_no_net, "no 'net' entry"), "wrong_shapes": (_wrong_shapes, r"has shape \[3, 7\]")}


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_resume_and_eval_fall_back_from_a_verifying_checkpoint_with_wrong_content(kind, run, capsys):
    change, why = WRONG[kind]
    newest, older = CheckpointManager(run / "checkpoints").list()[:2]
    _rewrite_with_a_valid_manifest(newest, change)

    with pytest.warns(CheckpointWarning, match=rf"skipping checkpoint .*{newest.name} .*content cannot be used.*{why}"):
        rc, out, err = cli(capsys, "eval", run, "--episodes", "2", "--no-video")
    assert rc == 0, err
    assert json.loads((run / "eval" / "scores.json").read_text())["games"]["catch"]["checkpoint"] == str(older)

    # the bad checkpoint given by itself: no fallback, a clear error
    err = usage_error(capsys, "eval", newest, "--episodes", "2", "--no-video", "--out", run / "eval_bad")
    assert "verifies but its content cannot be used" in err and newest.name in err

    with pytest.warns(CheckpointWarning, match=rf"skipping checkpoint .*{newest.name} .*content cannot be used.*{why}"):
        rc, out, err = cli(capsys, "train", "--resume", run)
    assert rc == 0, err
    assert f"at 640 env frames from {older}" in out
    state, manifest = CheckpointManager(run / "checkpoints").load_latest()
    assert manifest["env_frames"] == 960 and "net" in state  # the run went on and rewrote its final checkpoint
