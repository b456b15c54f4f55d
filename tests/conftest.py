"""Test-wide settings: nothing leaves this machine (W&B offline, its URL a closed local port); shared fixtures."""

import os
import tempfile

import pytest

_tmp = tempfile.mkdtemp(prefix="decoupled-tests-")
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_CONFIG_DIR", os.path.join(_tmp, "wandb-config"))
os.environ.setdefault("WANDB_CACHE_DIR", os.path.join(_tmp, "wandb-cache"))
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"


def _read_tensorboard_scalars(run_dir):
    """(tag, step, value) of every scalar in the run dir's TensorBoard event files, read as TFRecords (independent
    of the writer), and the purge steps of the files' session-start records."""
    import struct
    from pathlib import Path

    from tensorboardX.proto import event_pb2

    scalars, purges = [], []
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                purges.append(event.step)
            for v in event.summary.value:
                scalars.append((v.tag, event.step, v.simple_value))
    return scalars, purges


@pytest.fixture
def tensorboard_scalars():
    """read(run_dir) -> ([(tag, step, value)], purge steps) of the run dir's TensorBoard event files."""
    return _read_tensorboard_scalars
