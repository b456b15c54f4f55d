import json
import time

import pytest

from decoupled.runners.training.logger import Logger, WandbSink, truncate_metrics
from decoupled.runners.training.wandb_reader import read_run_dir


def _sink(tmp_path, mode="offline", timeout=10.0):
    return WandbSink(tmp_path, {"a": 1}, mode, "t", None, None, (), "run", None, timeout)


def test_jsonl_is_written_first_and_flushed(tmp_path):
    logger = Logger(tmp_path, None)
    logger.write({"train/x": 1.5, "loss/y": float("nan")}, 320)
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())  # readable before close
    assert rec["env_frames"] == 320 and rec["train/x"] == 1.5 and rec["loss/y"] is None
    logger.close()


@pytest.mark.slow
def test_wandb_online_without_network_falls_back_to_offline_in_bounded_time(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key, so wandb really tries the (unreachable) server
    t0 = time.time()
    with pytest.warns(UserWarning, match="online mode failed"):
        sink = _sink(tmp_path, timeout=5.0)
    assert time.time() - t0 < 40
    assert sink.mode == "offline"
    logger = Logger(tmp_path, sink)
    logger.write({"train/x": 2.0}, 640)
    # W&B's service process may still be writing the offline file when finish() returns (an empty history was read
    # once, on a loaded machine): close() waits until the file holds the record, so it is there when it returns
    assert logger.close() is None
    (seg,) = read_run_dir(tmp_path)
    assert seg["history"] and seg["history"][-1]["train/x"] == 2.0 and seg["exit_code"] == 0


def test_wandb_init_that_hangs_is_abandoned_and_training_goes_on(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *a, **k: time.sleep(60))
    t0 = time.time()
    with pytest.warns(UserWarning, match="disabled for this run"):
        sink = _sink(tmp_path, timeout=1.0)
    assert time.time() - t0 < 10
    assert sink.mode == "disabled"
    logger = Logger(tmp_path, sink)
    logger.write({"train/x": 1.0}, 10)
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train/x"] == 1.0


def test_wandb_log_errors_do_not_reach_training(tmp_path):
    sink = _sink(tmp_path)
    assert sink.mode == "offline"

    def boom(*a, **k):
        raise RuntimeError("service died")

    sink.run.log = boom
    logger = Logger(tmp_path, sink)
    with pytest.warns(UserWarning, match="W&B log failed"):
        logger.write({"train/x": 1.0}, 10)
        logger.close()
    assert (tmp_path / "metrics.jsonl").read_text().strip()


def test_disabled_mode_writes_no_wandb_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sink = _sink(tmp_path)
    assert sink.mode == "disabled" and sink.run is None
    assert not (tmp_path / "wandb").exists()


def test_truncate_metrics_keeps_records_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"env_frames": f}) + "\n" for f in (100, 200, 300)) + '{"env_fr')
    assert truncate_metrics(path, 200) == 2  # the record past 200 and the cut line
    assert [json.loads(line)["env_frames"] for line in path.read_text().splitlines()] == [100, 200]


def test_close_returns_when_wandb_is_wedged(tmp_path):
    import threading

    sink = _sink(tmp_path)
    release = threading.Event()
    sink.run.log = lambda *a, **k: release.wait(30)  # W&B stuck inside a log call
    sink._queue.maxsize = 2
    for i in range(5):
        sink.write({"env_frames": i})
    t0 = time.time()
    with pytest.warns(UserWarning, match="left it behind"):
        problem = sink.close(timeout_s=1.0)
    assert time.time() - t0 < 10 and "did not take the last records" in problem
    release.set()


def test_tensorboard_gets_every_metric_on_the_env_frames_axis_and_a_resume_purges_past_the_checkpoint(
    tmp_path, tensorboard_scalars
):
    from decoupled.runners.training.config import load_config
    from decoupled.runners.training.train import train

    overrides = ["logger.tensorboard=true", "wandb.mode=disabled", "runner.total_env_frames=6400",
                 "runner.log_every_env_frames=1600", "runner.checkpoint_every_env_frames=3200"]  # fmt: skip
    cfg = load_config("configs/impala/catch.yaml", overrides)
    train(cfg, tmp_path / "run")
    scalars, purges = tensorboard_scalars(tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    numeric = [(k, r["env_frames"], v) for r in records for k, v in r.items() if k not in ("env_frames", "time")]
    expected = {(k, f) for k, f, v in numeric if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {(tag, step) for tag, step, _ in scalars} == expected
    loss = {step: value for tag, step, value in scalars if tag == "loss/total"}
    assert loss == pytest.approx({r["env_frames"]: r["loss/total"] for r in records if "loss/total" in r}, rel=1e-5)
    assert purges == []  # a fresh run purges nothing
    cfg = load_config("configs/impala/catch.yaml", [*overrides, "runner.total_env_frames=9600"])
    train(cfg, tmp_path / "run", resume=True)
    _, purges = tensorboard_scalars(tmp_path / "run")
    assert purges == [6400]  # the resumed segment's file starts at its checkpoint's frames


def test_offline_tells_wandb_in_the_environment_too_but_only_where_the_user_did_not(monkeypatch):
    import os

    from decoupled.runners.training import logger as lg

    monkeypatch.setattr(lg, "_env_set_here", {})
    for k in ("WANDB_MODE", "WANDB_ERROR_REPORTING"):
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)  # unset now, as they were after the test
    assert lg._wandb_mode("offline") == "offline" and lg._wandb_mode("dryrun") == "offline"
    lg._wandb_environment("offline")
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_ERROR_REPORTING"] == "false"
    # set here, not by the user: a later run whose config asks for online gets online, and the variables are taken back
    assert lg._wandb_mode("online") == "online"
    lg._wandb_environment("online")
    assert "WANDB_MODE" not in os.environ and "WANDB_ERROR_REPORTING" not in os.environ
    # the user's own variables win and are left as they are
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "true")
    assert lg._wandb_mode("offline") == "online"
    lg._wandb_environment("online")
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg._wandb_environment("offline")
    assert os.environ["WANDB_ERROR_REPORTING"] == "true" and lg._env_set_here == {}
