"""Unit tests for decoupled.runners.training.checkpoint.

Why: a checkpoint that silently fails to restore (numpy state lost, a corrupt newest file picked, a pickle that runs
code, retention that deletes the last good one) costs whole training runs; each test below targets one of those.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import math
import random
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from decoupled.runners.training.checkpoint import (
    SCHEMA_VERSION,
    CheckpointError,
    CheckpointManager,
    CheckpointWarning,
)

# ----------------------------------------------------------------------------------------------------------- helpers


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Exact structural equality: same types, dtypes, shapes, bytes (NaN-safe), recursively."""
    assert type(a) is type(b), f"{where}: type {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, where
        assert a.detach().reshape(-1).view(torch.uint8).tolist() == b.detach().reshape(-1).view(torch.uint8).tolist(), (
            where
        )
    elif isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
        if isinstance(a, OrderedDict):
            assert set(vars(a)) == set(vars(b)), f"{where}: attributes {vars(a)} != {vars(b)}"
            for k in vars(a):
                assert_same(getattr(a, k), getattr(b, k), f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def small_state(tag: int) -> dict[str, Any]:
    return {"tag": tag, "w": torch.full((4,), float(tag)), "arr": np.arange(3, dtype=np.int32) + tag}


def rewrite_manifest(ckpt: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = ckpt / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def refresh_checksums(ckpt: Path) -> None:
    """Make the manifest match the current state.pt, as an attacker (or a foreign tool) could."""
    data = (ckpt / "state.pt").read_bytes()

    def edit(m: dict[str, Any]) -> None:
        m["files"]["state.pt"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    rewrite_manifest(ckpt, edit)


@pytest.fixture
def mgr(tmp_path: Path) -> CheckpointManager:
    return CheckpointManager(tmp_path / "run" / "checkpoints", keep=3)


# ----------------------------------------------------------------------------------------------------------- round trip


def test_round_trip_nested_state_is_exact(mgr: CheckpointManager) -> None:
    rng = np.random.default_rng(0)
    rng.random(3)  # advance so the state is not the trivial seed state
    random.seed(7)
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 2))
    # Shaped like torch.optim.Adam.state_dict() after one step (optim.step() itself would import torch._dynamo: 2 s).
    optim_state = {
        "state": {
            i: {"step": torch.tensor(1.0), "exp_avg": torch.randn_like(p)} for i, p in enumerate(model.parameters())
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "amsgrad": False, "params": [0, 1, 2, 3, 4, 5]}],
    }
    structured = np.zeros(3, dtype=[("x", "<i4"), ("y", "<f8", (2,))])
    structured["y"] = 1.5
    state = {
        "model": model.state_dict(),  # OrderedDict with _metadata
        "optim": optim_state,  # int keys, nested dicts, tuples, 0-d tensors
        "rng": {
            "numpy_pcg64": rng.bit_generator.state,  # 128-bit Python ints
            "numpy_mt19937": np.random.MT19937(123).state,  # dict holding a uint32 key array
            "legacy_tuple": ("MT19937", np.arange(624, dtype=np.uint32), 624, 0, 0.0),  # RandomState.get_state() form
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
        },
        "tensors": [torch.randn(2, 3), torch.zeros(0), torch.arange(5, dtype=torch.int64), torch.ones(2).bfloat16()],
        "arrays": {
            "f32": np.linspace(0, 1, 7, dtype=np.float32),
            "f64_nan": np.array([np.nan, np.inf, -0.0]),
            "f16": np.ones((2, 2), np.float16),
            "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
            "i16": np.array([-3, 4], np.int16),
            "u64": np.array([2**64 - 1], np.uint64),
            "bool": np.array([True, False]),
            "c64": np.array([1 + 2j], np.complex64),
            "big_endian": np.arange(4, dtype=">i4"),
            "strided": np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],
            "zero_d": np.array(3.5),
            "empty": np.zeros((0, 5), np.float32),
            "unicode": np.array(["ab", "cde"]),
            "bytes": np.array([b"x", b"yz"]),
            "datetime": np.array(["2020-01-01"], dtype="datetime64[D]"),
            "structured": structured,
        },
        "np_scalars": [np.float32(1.25), np.int64(-7), np.bool_(True), np.uint8(255)],
        "ints": [0, -1, 2**127 + 12345, -(2**200)],
        "floats": [0.1, float("inf"), float("nan")],
        "strings": ["", "héllo"],
        "none": None,
        "tuple": (1, (2, "3")),
        "set": {1, 2, 3},
        "raw": b"\x00\xff",
    }
    path = mgr.save(1000, state, meta={"git_sha": "deadbeef", "config_hash": "abc"})
    loaded, manifest = mgr.load(path)
    assert_same(state, loaded)
    assert manifest["meta"] == {"git_sha": "deadbeef", "config_hash": "abc"}
    assert manifest["env_frames"] == 1000 and manifest["schema_version"] == SCHEMA_VERSION

    # RNG states restore to generators that continue identically.
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = loaded["rng"]["numpy_pcg64"]
    assert rng2.random(5).tolist() == rng.random(5).tolist()
    mt = np.random.MT19937()
    mt.state = loaded["rng"]["numpy_mt19937"]
    assert np.random.Generator(mt).integers(0, 2**31, 4).tolist() == (
        np.random.Generator(np.random.MT19937(123)).integers(0, 2**31, 4).tolist()
    )
    random.setstate(loaded["rng"]["python"])
    expected = [random.random() for _ in range(3)]
    random.setstate(state["rng"]["python"])
    assert [random.random() for _ in range(3)] == expected
    torch.set_rng_state(loaded["rng"]["torch"])
    t1 = torch.rand(3)
    torch.set_rng_state(state["rng"]["torch"])
    assert torch.equal(t1, torch.rand(3))
    # The state dicts load back into fresh modules.
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 2))
    model2.load_state_dict(loaded["model"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_loaded_numpy_arrays_are_writable_and_independent(mgr: CheckpointManager) -> None:
    arr = np.arange(6, dtype=np.float64)
    loaded, _ = mgr.load(mgr.save(1, {"a": arr}))
    loaded["a"][0] = 100.0  # callers restore buffers in place; a read-only array would break them
    assert arr[0] == 0.0


def test_manifest_and_layout(mgr: CheckpointManager) -> None:
    path = mgr.save(42, small_state(1), meta={"run_id": "xyz"})
    assert path == mgr.directory / "ckpt-000000000042"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "state.pt"]
    assert sorted(p.name for p in mgr.directory.iterdir()) == [".lock", "ckpt-000000000042"]  # nothing left over
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / "state.pt").read_bytes()
    assert manifest["files"] == {"state.pt": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    assert manifest["schema_version"] == SCHEMA_VERSION == 1
    assert manifest["env_frames"] == 42
    assert manifest["torch_version"] == torch.__version__
    assert manifest["python_version"].count(".") == 2
    assert isinstance(manifest["created_unix"], float) and manifest["created_utc"].startswith("20")
    assert manifest["meta"] == {"run_id": "xyz"}


def test_state_pt_is_plain_torch_file(mgr: CheckpointManager) -> None:
    """Tensor-only states are stored untouched, so other tools can read them with torch.load(weights_only=True)."""
    path = mgr.save(1, {"w": torch.ones(3)})
    assert torch.equal(torch.load(path / "state.pt", weights_only=True)["w"], torch.ones(3))


def test_load_latest_empty_returns_none(mgr: CheckpointManager) -> None:
    assert mgr.list() == []
    assert mgr.load_latest() is None


def test_list_is_newest_first_and_load_latest_picks_highest_frames(mgr: CheckpointManager) -> None:
    for ef in (10, 3000, 200):
        mgr.save(ef, small_state(ef))
    assert [p.name for p in mgr.list()] == ["ckpt-000000003000", "ckpt-000000000200", "ckpt-000000000010"]
    state, manifest = mgr.load_latest()
    assert state["tag"] == 3000 and manifest["env_frames"] == 3000


# ----------------------------------------------------------------------------------------------------------- refusals


class _Custom:
    pass


class _Pair(NamedTuple):
    a: int
    b: int


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"a": [1, _Custom()]}, r"state\['a'\]\[1\].*_Custom"),
        ({"a": np.array([1, "x"], dtype=object)}, r"state\['a'\].*object dtype"),
        ({"a": {np.int64(3): 1}}, r"state\['a'\].*dict key"),
        ({"a": {"__decoupled__": 1}}, r"reserved"),
        ({"a": _Pair(1, 2)}, r"state\['a'\].*_Pair"),
        ({"a": frozenset([1])}, r"state\['a'\].*frozenset"),
        ({"a": np.ma.masked_array([1, 2])}, r"state\['a'\].*MaskedArray"),
    ],
)
def test_unloadable_state_is_refused_at_save(mgr: CheckpointManager, state: dict, where: str) -> None:
    with pytest.raises(CheckpointError, match=where):
        mgr.save(1, state)
    assert mgr.list() == [] and not any(p.name.endswith(".tmp") for p in mgr.directory.iterdir())


def test_bad_arguments(tmp_path: Path, mgr: CheckpointManager) -> None:
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path / "c", keep=0)
    with pytest.raises(ValueError, match="keep_every_env_frames"):
        CheckpointManager(tmp_path / "c", keep_every_env_frames=0)
    with pytest.raises(ValueError, match="env_frames"):
        mgr.save(-1, {})
    with pytest.raises(ValueError, match="env_frames"):
        mgr.save(True, {})  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="JSON"):
        mgr.save(1, {}, meta={"x": object()})
    with pytest.raises(CheckpointError, match="JSON"):
        mgr.save(1, {}, meta={1: "a", "b": 2})  # mixed keys cannot be written with sort_keys
    with pytest.raises(CheckpointError, match="dict"):
        mgr.save(1, [1, 2])  # type: ignore[arg-type]
    assert mgr.list() == []


# ----------------------------------------------------------------------------------------------------------- corruption


def _truncate(ckpt: Path) -> None:
    f = ckpt / "state.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _zero_length(ckpt: Path) -> None:
    (ckpt / "state.pt").write_bytes(b"")


def _flip_byte(ckpt: Path) -> None:
    f = ckpt / "state.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can catch it
    f.write_bytes(bytes(data))


def _missing_state(ckpt: Path) -> None:
    (ckpt / "state.pt").unlink()


def _missing_manifest(ckpt: Path) -> None:
    (ckpt / "manifest.json").unlink()


def _checksum_mismatch(ckpt: Path) -> None:
    rewrite_manifest(ckpt, lambda m: m["files"]["state.pt"].update(sha256="0" * 64))


def _garbage_manifest(ckpt: Path) -> None:
    (ckpt / "manifest.json").write_bytes(b"\x00{not json")


def _manifest_not_ours(ckpt: Path) -> None:
    (ckpt / "manifest.json").write_text('{"hello": 1}')


def _frames_mismatch(ckpt: Path) -> None:
    rewrite_manifest(ckpt, lambda m: m.update(env_frames=1))


def _not_a_dict(ckpt: Path) -> None:
    torch.save([1, 2], ckpt / "state.pt")
    refresh_checksums(ckpt)


CORRUPTIONS = {
    "truncated": (_truncate, r"has \d+ bytes but the manifest says \d+"),
    "zero_length": (_zero_length, r"has 0 bytes but the manifest says"),
    "flipped_byte": (_flip_byte, r"sha256 .* does not match"),
    "missing_state": (_missing_state, r"missing state\.pt"),
    "missing_manifest": (_missing_manifest, r"has no manifest\.json"),
    "checksum_mismatch": (_checksum_mismatch, r"sha256 .* does not match"),
    "garbage_manifest": (_garbage_manifest, r"not valid JSON"),
    "manifest_not_ours": (_manifest_not_ours, r"not a decoupled checkpoint manifest"),
    "frames_mismatch": (_frames_mismatch, r"env_frames=1 but the directory name says 200"),
    "state_not_a_dict": (_not_a_dict, r"not a state dict"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_newest_is_detected_and_load_latest_falls_back(mgr: CheckpointManager, kind: str) -> None:
    corrupt, message = CORRUPTIONS[kind]
    mgr.save(100, small_state(100))
    bad = mgr.save(200, small_state(200))
    corrupt(bad)
    with pytest.raises(CheckpointError, match=message) as info:
        mgr.load(bad)
    assert "ckpt-000000000200" in str(info.value)
    with pytest.warns(CheckpointWarning, match=r"skipping checkpoint .*ckpt-000000000200") as record:
        state, manifest = mgr.load_latest()
    assert any(re.search(message, str(w.message)) for w in record)
    assert state["tag"] == 100 and manifest["env_frames"] == 100
    assert_same(state, small_state(100))


def test_all_checkpoints_corrupt_raises_naming_each(mgr: CheckpointManager) -> None:
    _zero_length(mgr.save(100, small_state(1)))
    _missing_manifest(mgr.save(200, small_state(2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(CheckpointError, match=r"none of the 2 checkpoints") as info:
            mgr.load_latest()
    assert "ckpt-000000000100" in str(info.value) and "ckpt-000000000200" in str(info.value)


def test_load_of_missing_directory(mgr: CheckpointManager) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        mgr.load(mgr.directory / "ckpt-000000000999")


@pytest.mark.parametrize(("version", "words"), [(SCHEMA_VERSION + 1, "newer"), (0, "No migration"), ("1", "")])
def test_unsupported_schema_version_names_both_versions(mgr: CheckpointManager, version: Any, words: str) -> None:
    path = mgr.save(5, small_state(5))
    rewrite_manifest(path, lambda m: m.update(schema_version=version))
    with pytest.raises(CheckpointError, match=r"schema_version") as info:
        mgr.load(path)
    text = str(info.value)
    assert repr(version) in text and f"current {SCHEMA_VERSION}" in text and words in text


def test_code_executing_pickle_is_refused(mgr: CheckpointManager, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (builtins.exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    path = mgr.save(7, small_state(7))
    torch.save({"model": Evil()}, path / "state.pt")
    refresh_checksums(path)  # checksums are right: only weights_only stands between the file and exec()
    with pytest.raises(CheckpointError, match=r"corrupt or was not written by decoupled") as info:
        mgr.load(path)
    assert "never executes code" in str(info.value)
    assert not marker.exists()
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match="none of the 1"):
        warnings.simplefilter("ignore", CheckpointWarning)
        mgr.load_latest()
    assert not marker.exists()
    # Sanity check that the payload is live, i.e. the assertions above can fail.
    torch.load(path / "state.pt", weights_only=False)
    assert marker.read_text() == "pwned"


def test_crafted_object_dtype_marker_is_refused(mgr: CheckpointManager) -> None:
    path = mgr.save(7, small_state(7))
    fake = {"__decoupled__": "ndarray", "descr": "|O", "shape": [1], "data": torch.zeros(8, dtype=torch.uint8)}
    torch.save({"a": fake}, path / "state.pt")
    refresh_checksums(path)
    with pytest.raises(CheckpointError, match="object dtype"):
        mgr.load(path)


def test_crafted_marker_with_wrong_size_is_refused(mgr: CheckpointManager) -> None:
    path = mgr.save(7, small_state(7))
    fake = {"__decoupled__": "ndarray", "descr": "<f8", "shape": [10**30], "data": torch.zeros(8, dtype=torch.uint8)}
    torch.save({"a": fake}, path / "state.pt")
    refresh_checksums(path)
    with pytest.raises(CheckpointError, match="bytes, expected"):
        mgr.load(path)


# ----------------------------------------------------------------------------------------------------------- recovery


def test_stale_tmp_dirs_are_removed_at_construction(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "checkpoints"
    mgr = CheckpointManager(directory)
    mgr.save(100, small_state(100))
    half = directory / "ckpt-000000000200.tmp"
    half.mkdir()
    (half / "state.pt").write_bytes(b"PK\x03\x04 half written")
    pruned = directory / "ckpt-000000000050.pruned.tmp"
    pruned.mkdir()
    (directory / "notes.txt").write_text("not ours")
    with caplog.at_level(logging.WARNING, logger="decoupled.runners.training.checkpoint"):
        mgr2 = CheckpointManager(directory)
    assert not half.exists() and not pruned.exists()
    assert (directory / "notes.txt").exists()
    assert "ckpt-000000000200.tmp" in caplog.text and "ckpt-000000000050.pruned.tmp" in caplog.text
    assert [p.name for p in mgr2.list()] == ["ckpt-000000000100"]
    assert mgr2.load_latest()[0]["tag"] == 100


def test_tmp_of_a_save_in_progress_elsewhere_is_not_removed(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    writer = CheckpointManager(directory)
    in_progress = directory / "ckpt-000000000300.tmp"
    in_progress.mkdir()
    with writer._lock():  # what save() holds while it writes
        CheckpointManager(directory)
        assert in_progress.exists()
    CheckpointManager(directory)
    assert not in_progress.exists()


def test_interrupted_replacement_is_recovered(tmp_path: Path) -> None:
    """save() of an existing env_frames renames final->.old, tmp->final; a kill between them must lose nothing."""
    directory = tmp_path / "checkpoints"
    mgr = CheckpointManager(directory)
    final = mgr.save(100, small_state(1))
    # Killed after the first rename: only .old (complete) and a complete .tmp exist.
    final.rename(directory / "ckpt-000000000100.old")
    (directory / "ckpt-000000000100.tmp").mkdir()
    mgr = CheckpointManager(directory)
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "ckpt-000000000100"]
    assert mgr.load_latest()[0]["tag"] == 1
    # Killed after the second rename (or during rmtree of .old): final is the new one, .old is garbage.
    mgr.save(100, small_state(2))
    old = directory / "ckpt-000000000100.old"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    mgr = CheckpointManager(directory)
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "ckpt-000000000100"]
    assert mgr.load_latest()[0]["tag"] == 2


def test_saving_same_env_frames_twice_replaces(mgr: CheckpointManager) -> None:
    mgr.save(100, small_state(1))
    path = mgr.save(100, small_state(2))
    assert [p.name for p in mgr.list()] == ["ckpt-000000000100"]
    assert sorted(p.name for p in mgr.directory.iterdir()) == [".lock", "ckpt-000000000100"]
    assert mgr.load(path)[0]["tag"] == 2


def test_failed_save_leaves_no_tmp_and_keeps_previous(mgr: CheckpointManager, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr.save(100, small_state(100))

    def disk_full(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        mgr.save(200, small_state(200))
    monkeypatch.undo()
    assert sorted(p.name for p in mgr.directory.iterdir()) == [".lock", "ckpt-000000000100"]
    assert mgr.load_latest()[0]["tag"] == 100


# ----------------------------------------------------------------------------------------------------------- retention


def _frames(mgr: CheckpointManager) -> list[int]:
    return [int(p.name.split("-")[1]) for p in mgr.list()]


def test_retention_keeps_newest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "c", keep=2)
    for ef in (100, 200, 300, 400):
        mgr.save(ef, small_state(ef))
    assert _frames(mgr) == [400, 300]
    mgr1 = CheckpointManager(tmp_path / "d", keep=1)
    for ef in (1, 2, 3):
        mgr1.save(ef, small_state(ef))
    assert _frames(mgr1) == [3]


def test_retention_keeps_permanent_checkpoints(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "c", keep=2, keep_every_env_frames=1000)
    history = []
    for ef in (0, 400, 900, 1100, 1500, 1900, 2000, 2600, 3300, 3700, 4100):
        mgr.save(ef, small_state(ef))
        history.append(_frames(mgr))
    # First checkpoint at/after each multiple of 1000 is permanent: 1100, 2000, 3300, 4100. Plus the 2 newest.
    assert _frames(mgr) == [4100, 3700, 3300, 2000, 1100]
    assert history[5] == [1900, 1500, 1100]  # 1500 is still one of the 2 newest; 400/900/0 are gone
    for path in mgr.list():
        mgr.load(path)  # everything retained verifies


def test_corrupt_checkpoints_do_not_use_up_retention(tmp_path: Path) -> None:
    """marin #5386: a corrupt checkpoint plus retention must never leave zero valid ones."""
    mgr = CheckpointManager(tmp_path / "c", keep=2)
    mgr.save(100, small_state(100))
    _missing_state(mgr.save(200, small_state(200)))
    mgr.save(300, small_state(300))
    assert _frames(mgr) == [300, 200, 100]  # the broken 200 does not count as one of the 2 kept
    _flip_byte(mgr.path_for(300))  # undetectable without hashing: the newest is now silently bad
    with pytest.warns(CheckpointWarning) as record:
        assert mgr.load_latest()[0]["tag"] == 100
    assert ["ckpt-000000000300" in str(w.message) for w in record] == [True, False]
    assert ["ckpt-000000000200" in str(w.message) for w in record] == [False, True]
    mgr.save(400, small_state(400))
    assert _frames(mgr) == [400, 300]  # broken ones age out like any other


def test_checkpoint_just_written_is_never_pruned(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "c", keep=2)
    mgr.save(500, small_state(500))
    mgr.save(600, small_state(600))
    path = mgr.save(100, small_state(100))  # e.g. after a rollback: lower env_frames than existing ones
    assert path.exists() and _frames(mgr) == [600, 500, 100]
    mgr.save(700, small_state(700))
    assert _frames(mgr) == [700, 600]
