"""Crash-safe, verifiable training checkpoints.

Why this module exists: a kill -9, an OOM kill or a pre-emption in the middle of ``torch.save`` leaves a truncated
file, and a resume that picks it up either crashes ("unexpected EOF") or, worse, silently starts over. Several
frameworks learned this the hard way (Lightning #688/#19970, allennlp #2129, marin #5386). The rules here:

* One directory per checkpoint, ``checkpoints/ckpt-{env_frames:012d}/`` holding ``state.pt`` and ``manifest.json``.
  A checkpoint is several files, so an atomic single-file write is not enough: the whole directory is written as
  ``ckpt-N.tmp/``, every file is fsynced, ``manifest.json`` (with sha256 and size of every file) is written *last*, the
  directory is fsynced and then renamed to its final name, and the parent directory is fsynced. A directory whose
  name has no suffix is therefore always complete; anything ending in ``.tmp`` is garbage from a killed save and is
  removed when the next :class:`CheckpointManager` is constructed.
* Loading verifies the manifest, the schema version and every checksum before unpickling, and unpickles with
  ``torch.load(weights_only=True)`` so that a checkpoint can never execute code (ray #9160/#47426: no pickled classes).
  Every failure is a :class:`CheckpointError` that names the checkpoint, the problem and what to do.
* :meth:`CheckpointManager.load_latest` falls back to older checkpoints when the newest one does not verify, and
  retention never deletes the checkpoint just written, so a corrupt newest checkpoint cannot leave zero valid ones.

numpy in ``state``: ``torch.load(weights_only=True)`` in torch 2.13 refuses numpy arrays and numpy scalars (they
pickle through ``numpy.core.multiarray._reconstruct``, which is not on the allow-list), while plain Python ints of any
size, floats, str, bytes, lists, tuples, sets, dicts/OrderedDicts and tensors load fine. Rather than allow-listing
numpy's reconstructors (which would also admit object arrays), :meth:`CheckpointManager.save` encodes every numpy
array / numpy scalar as ``{"__decoupled__": "ndarray" | "npscalar", "descr": <npy dtype descr>, "shape": [...],
"data": <uint8 tensor with the raw C-order bytes>}`` and :meth:`CheckpointManager.load` decodes it back. This is
lossless for every non-object dtype (byte order, structured dtypes, datetimes, fixed-width strings included);
``np.memmap`` comes back as a plain ``ndarray``. Object arrays and other non-plain types are refused at *save* time
with the path of the offending entry, so a checkpoint that could not be loaded is never written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno as _errno
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format

from decoupled.runners.training.config import ConfigBase, load_config

try:  # POSIX only; without it, concurrent managers on one directory are not protected (documented limitation).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SCHEMA_VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "CheckpointWarning",
    "CheckpointManager",
    "check_writable",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the on-disk layout and manifest. Bump it when either changes incompatibly."""

SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})
"""Schema versions this code can read. There are no migrations yet; a migration would add its source version here."""

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_FORMAT = "decoupled-checkpoint"
_MARKER = "__decoupled__"  # reserved dict key for encoded numpy values; refused in user state
_LOCK_FILE = ".lock"
_FINAL_RE = re.compile(r"^ckpt-(\d+)$")
_TMP_RE = re.compile(r"^ckpt-.*\.tmp$")
_OLD_RE = re.compile(r"^(ckpt-\d+)\.old$")
_CHUNK = 1 << 20

# Leaf types that torch.load(weights_only=True) accepts and that round-trip exactly.
_LEAF_TYPES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    torch.dtype,
    torch.device,
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read. The message names the checkpoint, the problem and what to do."""


class CheckpointWriteError(CheckpointError, OSError):
    """The file system refused a write (disk full, file size limit, no permission, read-only): nothing of the failed
    checkpoint is left behind and the earlier checkpoints are intact. An OSError too, with the errno of the cause."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (e.g. corrupt) while looking for the newest valid one."""


_NO_SPACE = {_errno.ENOSPC, _errno.EFBIG, getattr(_errno, "EDQUOT", _errno.ENOSPC)}


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc` (itself, or its cause or context: torch's zip writer reports a failed write as
    "unexpected pos" with the OSError only as the context)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _run_dir_hint(directory: Path) -> str:
    """The run dir of RUN/checkpoints and RUN/checkpoints/best, for the resume command in messages."""
    for path in (directory, *directory.parents[:1]):
        if path.name == "checkpoints":
            return str(path.parent)
    return "RUN_DIR"


def _write_error(exc: OSError, what: str, directory: Path, previous: Path | None) -> CheckpointWriteError:
    """A CheckpointWriteError saying why `what` could not be written and how to continue."""
    reason = exc.strerror or str(exc)
    run = _run_dir_hint(directory)
    intact = (
        f"The previous checkpoint {previous} is intact (nothing of the failed save is left behind)"
        if previous is not None
        else "There is no earlier checkpoint (nothing of the failed save is left behind)"
    )
    if exc.errno in _NO_SPACE:
        message = (
            f"could not write {what}: no space left on device (or file size limit) [{reason}]. {intact}: free space "
            f"and resume with `decoupled train --resume {run}`"
        )
    else:
        message = (
            f"could not write {what}: {reason} [errno {exc.errno}]. {intact}: make {directory} writable (or give the "
            f"run a dir you can write) and resume with `decoupled train --resume {run}`"
        )
    error = CheckpointWriteError(message)
    error.errno = exc.errno  # (str(error) stays the message: no strerror / filename set on it)
    return error


def check_writable(directory: str | Path) -> None:
    """Create `directory` (and its parents) and write a file in it, or raise a CheckpointWriteError that says what to
    do: before a run starts, not at its first checkpoint."""
    directory = Path(directory)
    probe = directory / f".write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in _NO_SPACE:
            advice = "free space on its file system, or give the run a dir on another one"
        else:
            advice = "give the run a dir you can write (--run-dir), or fix its permissions"
        error = CheckpointWriteError(f"cannot write to the run dir {directory} ({reason}: {exc.filename}): {advice}")
        error.errno = exc.errno
        raise error from exc


# --------------------------------------------------------------------------------------------------------------------
# numpy <-> tensor encoding (weights_only=True cannot load numpy objects)
# --------------------------------------------------------------------------------------------------------------------


def _encode_array(arr: np.ndarray, kind: str, where: str) -> dict[str, Any]:
    """Encode an array as raw bytes + npy dtype descr, because that is lossless for every non-object dtype."""
    if arr.dtype.hasobject:
        raise CheckpointError(
            f"{where} is a numpy array with object dtype {arr.dtype}; it cannot be stored without pickling Python "
            "objects. Convert it to a numeric/string array or to a list before saving."
        )
    if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d arrays into 1-d)
        arr = arr.copy(order="C")
    descr = npy_format.dtype_to_descr(arr.dtype)
    raw = arr.reshape(-1).view(np.uint8) if arr.dtype.itemsize else np.zeros(0, np.uint8)
    with warnings.catch_warnings():
        # Read-only arrays (e.g. np.memmap mode "r") trigger a "not writable" warning; torch.save only reads them.
        warnings.simplefilter("ignore", UserWarning)
        data = torch.from_numpy(raw)
    return {_MARKER: kind, "descr": descr, "shape": [int(s) for s in arr.shape], "data": data}


def _check_key(key: Any, where: str) -> None:
    """Dict keys are pickled as-is, so they must be loadable leaf types (not numpy scalars)."""
    if isinstance(key, tuple) and type(key) is tuple:
        for i, k in enumerate(key):
            _check_key(k, f"{where}[key {key!r}][{i}]")
        return
    if type(key) not in _LEAF_TYPES:
        raise CheckpointError(
            f"{where} has a dict key or set element {key!r} of type {type(key).__name__}, which cannot be loaded "
            "with weights_only=True. Use str/int/float/bool/tuple values (e.g. int(x) for numpy integers)."
        )
    if key == _MARKER:
        raise CheckpointError(f"{where} uses the reserved dict key {_MARKER!r}; rename it.")


def _encode(obj: Any, where: str) -> Any:
    """Return ``obj`` with numpy values encoded; validate that everything else is weights_only-loadable.

    Containers are only copied when something inside them changes, so a tensor-only state is passed to torch.save
    untouched (no copies of large tensors, ``state_dict()._metadata`` preserved).
    """
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAF_TYPES or type(obj) is torch.Size:
        return obj
    if isinstance(obj, np.generic):
        return _encode_array(np.asarray(obj), "npscalar", where)
    if type(obj) is np.ndarray or type(obj) is np.memmap:
        return _encode_array(obj, "ndarray", where)
    if type(obj) is dict or type(obj) is OrderedDict:
        changed = False
        items = []
        for k, v in obj.items():
            _check_key(k, where)
            nv = _encode(v, f"{where}[{k!r}]")
            changed |= nv is not v
            items.append((k, nv))
        extra = vars(obj) if type(obj) is OrderedDict else {}  # e.g. nn.Module.state_dict()._metadata
        new_extra = {k: _encode(v, f"{where}.{k}") for k, v in extra.items()}
        changed |= any(new_extra[k] is not v for k, v in extra.items())
        if not changed:
            return obj
        out = type(obj)(items)
        for k, v in new_extra.items():
            setattr(out, k, v)
        return out
    if type(obj) is list or type(obj) is tuple:
        new = [_encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(n is o for n, o in zip(new, obj)):
            return obj
        return type(obj)(new)
    if type(obj) is set:
        for v in obj:
            _check_key(v, where)
        return obj
    raise CheckpointError(
        f"{where} has type {type(obj).__module__}.{type(obj).__qualname__}, which a checkpoint cannot hold: "
        "checkpoints contain only tensors, numpy arrays/scalars, Python scalars, str/bytes and dict/list/tuple/set "
        "of those, so that loading never unpickles classes. Store its state_dict() or plain data instead."
    )


def _decode_array(enc: dict[str, Any], where: str) -> np.ndarray | np.generic:
    """Inverse of :func:`_encode_array`. Validates everything, because the file may have been crafted."""
    try:
        kind, descr, shape, data = enc[_MARKER], enc["descr"], enc["shape"], enc["data"]
        dtype = npy_format.descr_to_dtype(descr)
        shape = tuple(int(s) for s in shape)
    except Exception as exc:
        raise CheckpointError(f"{where}: malformed encoded numpy value ({exc!r}); the checkpoint is corrupt.") from exc
    if kind not in ("ndarray", "npscalar") or not isinstance(data, torch.Tensor) or data.dtype != torch.uint8:
        raise CheckpointError(f"{where}: malformed encoded numpy value; the checkpoint is corrupt.")
    if dtype.hasobject:  # reinterpreting bytes as object pointers would be memory-unsafe
        raise CheckpointError(f"{where}: encoded numpy value claims object dtype; refusing (corrupt or crafted file).")
    count = 1
    for s in shape:
        count *= s  # Python ints: no overflow on crafted shapes
    if data.dim() != 1 or any(s < 0 for s in shape) or data.numel() != count * dtype.itemsize:
        raise CheckpointError(
            f"{where}: encoded numpy value has {data.numel()} bytes, expected {count * dtype.itemsize} for shape "
            f"{shape} and dtype {dtype}; the checkpoint is corrupt."
        )
    try:
        if dtype.itemsize == 0:
            arr = np.empty(shape, dtype)
        else:
            arr = data.detach().cpu().numpy().view(dtype).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{where}: cannot rebuild encoded numpy value ({exc}); the checkpoint is corrupt."
        ) from exc
    return arr[()] if kind == "npscalar" else arr


def _decode(obj: Any, where: str) -> Any:
    """Inverse of :func:`_encode`; containers are only copied when something inside them changes."""
    if type(obj) is dict or type(obj) is OrderedDict:
        if _MARKER in obj:
            return _decode_array(obj, where)
        changed = False
        items = []
        for k, v in obj.items():
            nv = _decode(v, f"{where}[{k!r}]")
            changed |= nv is not v
            items.append((k, nv))
        extra = vars(obj) if type(obj) is OrderedDict else {}
        new_extra = {k: _decode(v, f"{where}.{k}") for k, v in extra.items()}
        changed |= any(new_extra[k] is not v for k, v in extra.items())
        if not changed:
            return obj
        out = type(obj)(items)
        for k, v in new_extra.items():
            setattr(out, k, v)
        return out
    if type(obj) is list or type(obj) is tuple:
        new = [_decode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(n is o for n, o in zip(new, obj)):
            return obj
        return type(obj)(new)
    return obj


# --------------------------------------------------------------------------------------------------------------------
# file-system helpers
# --------------------------------------------------------------------------------------------------------------------


class _HashingWriter:
    """File wrapper that hashes and counts bytes as torch.save writes them, so state.pt is not read back to hash it.

    torch's zip writer only ever calls ``write`` (its C++ writer is append-only), so the digest covers the file exactly;
    the size is cross-checked against ``fstat`` after writing anyway.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: Any) -> int:
        self.sha.update(b)
        try:
            n = self._f.write(b)
        except OSError as exc:  # torch reports it as "unexpected pos"; save() reports this one
            self.error = exc
            raise
        self.size += n
        return n

    error: OSError | None = None

    def flush(self) -> None:
        self._f.flush()


def _fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created/renamed in it survive a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# --------------------------------------------------------------------------------------------------------------------
# manager
# --------------------------------------------------------------------------------------------------------------------


class CheckpointManager:
    """Write, list, verify, load and prune the checkpoints of one run (``<run_dir>/checkpoints``).

    ``keep`` newest checkpoints are retained; with ``keep_every_env_frames=N`` the first checkpoint at or after each
    multiple of N (N, 2N, ...) is additionally kept forever, so sparse long-term history survives rolling retention.
    "Newest" always means highest ``env_frames``. After a rollback that saves a lower ``env_frames`` than existing
    checkpoints, those higher ones are still considered newest: delete them if they should not be resumed from.

    One process should write to a directory at a time. Saves hold an ``flock`` on ``checkpoints/.lock`` so that a
    second manager constructed meanwhile (e.g. an evaluator) does not delete the in-progress ``.tmp`` directory.
    """

    def __init__(self, directory: str | Path, keep: int = 3, keep_every_env_frames: int | None = None) -> None:
        if type(keep) is not int or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        if keep_every_env_frames is not None and (type(keep_every_env_frames) is not int or keep_every_env_frames < 1):
            raise ValueError(f"keep_every_env_frames must be None or an int >= 1, got {keep_every_env_frames!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.keep_every_env_frames = keep_every_env_frames
        existed = self.directory.is_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(exc, f"the checkpoint dir {self.directory}", self.directory, None) from exc
        if not existed:
            _fsync_dir(self.directory.parent)
        self._recover()

    # ---------------------------------------------------------------------------------------------------- locking
    @contextlib.contextmanager
    def _lock(self, blocking: bool = True) -> Iterator[bool]:
        """Hold an exclusive flock on the directory; yields False when ``blocking=False`` and it is held elsewhere."""
        if fcntl is None:  # pragma: no cover - Windows
            yield True
            return
        try:
            fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            if blocking:  # saving needs a writable directory anyway
                raise
            # Read-only directory (e.g. evaluating an archived run): nothing can be cleaned, but loading must work.
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock; so does the death of the process (kill -9)

    def _recover(self) -> None:
        """Undo what a killed save or prune left behind: restore ``.old`` dirs, delete ``.tmp`` dirs."""
        with self._lock(blocking=False) as got:
            if not got:
                logger.info("%s: locked by a save in progress or read-only; skipping cleanup", self.directory)
                return
            for entry in sorted(self.directory.iterdir()):
                m = _OLD_RE.match(entry.name)
                if not m:
                    continue
                final = self.directory / m.group(1)
                if final.exists():  # the replacement was committed; the old copy is garbage
                    logger.warning("removing %s left by an interrupted checkpoint replacement", entry)
                    _remove(entry)
                else:  # killed between the two renames: the old copy is the last complete one
                    logger.warning("restoring %s from %s left by an interrupted checkpoint replacement", final, entry)
                    os.rename(entry, final)
            for entry in sorted(self.directory.iterdir()):
                if _TMP_RE.match(entry.name):
                    logger.warning("removing stale %s left by an interrupted checkpoint save or prune", entry)
                    _remove(entry)
            _fsync_dir(self.directory)

    # ---------------------------------------------------------------------------------------------------- saving
    def path_for(self, env_frames: int) -> Path:
        """Final directory of the checkpoint at ``env_frames``."""
        return self.directory / f"ckpt-{env_frames:012d}"

    def save(self, env_frames: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
        """Atomically write a checkpoint and prune old ones; returns its final directory.

        ``state`` may hold tensors, numpy arrays/scalars, Python scalars (ints of any size), str/bytes, None and
        dict/list/tuple/set of those; anything else is refused here with its path, not at load time. ``meta`` (JSON
        serialisable, e.g. git sha, config hash, W&B run id) goes into the manifest, readable without torch.
        Saving the same ``env_frames`` twice replaces the earlier checkpoint; a crash mid-way leaves one of the two.
        """
        if type(env_frames) is not int or env_frames < 0:
            raise ValueError(f"env_frames must be a non-negative int, got {env_frames!r}")
        if not isinstance(state, dict):
            raise CheckpointError(f"state must be a dict, got {type(state).__name__}")
        encoded = _encode(state, "state")
        manifest: dict[str, Any] = {
            "format": _FORMAT,
            "schema_version": SCHEMA_VERSION,
            "env_frames": env_frames,
            "created_unix": time.time(),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": {},
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
            "meta": dict(meta) if meta else {},
        }
        try:
            json.dumps(manifest["meta"], sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"meta must be JSON serialisable: {exc}") from exc

        final = self.path_for(env_frames)
        tmp = final.with_name(final.name + ".tmp")
        with self._lock():
            if tmp.exists():
                _remove(tmp)
            writer, previous = None, None
            try:
                tmp.mkdir()
                with open(tmp / STATE_FILE, "wb") as f:
                    writer = _HashingWriter(f)
                    torch.save(encoded, writer)
                    f.flush()
                    os.fsync(f.fileno())
                    size = os.fstat(f.fileno()).st_size
                digest = writer.sha.hexdigest() if size == writer.size else _sha256_file(tmp / STATE_FILE)
                manifest["files"][STATE_FILE] = {"sha256": digest, "size": size}
                with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:  # last: its presence marks completeness
                    json.dump(manifest, f, indent=2, sort_keys=True)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_dir(tmp)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)  # e.g. disk full: do not leave a half-written .tmp behind
                cause = (writer.error if writer is not None else None) or _os_error(exc)
                if cause is None or not isinstance(exc, (OSError, RuntimeError)):
                    raise
                with contextlib.suppress(OSError):
                    previous = next(iter(self.list()), None)  # what load_latest resumes from
                raise _write_error(cause, f"checkpoint {final}", self.directory, previous) from exc
            if final.exists():
                # os.rename cannot replace a non-empty directory. Move the old one aside first; if we die between
                # the two renames, _recover() puts it back, so a complete checkpoint of this name always survives.
                old = final.with_name(final.name + ".old")
                if old.exists():
                    _remove(old)
                os.rename(final, old)
                os.rename(tmp, final)
                _fsync_dir(self.directory)
                _remove(old)
            else:
                os.rename(tmp, final)
            _fsync_dir(self.directory)
            self._prune(just_written=final)
        return final

    def _is_permanent(self, env_frames: int, all_frames: list[int]) -> bool:
        """First checkpoint at/after a multiple of keep_every_env_frames; stable over time since those are never
        deleted and later saves have higher env_frames."""
        n = self.keep_every_env_frames
        if n is None:
            return False
        bucket = env_frames // n
        return bucket >= 1 and env_frames == min(f for f in all_frames if f // n == bucket)

    def _prune(self, just_written: Path) -> None:
        """Keep the newest ``keep`` structurally valid checkpoints, permanent ones and the one just written.

        Only checkpoints that pass the cheap structural check (manifest parses, files present with the right sizes)
        count towards ``keep``, so a broken checkpoint never displaces a good one (marin #5386); broken ones newer
        than the oldest kept valid one stay for inspection and age out later. Deletion renames to ``.tmp`` first so a
        kill during ``rmtree`` leaves garbage that is cleaned, never a half-deleted checkpoint.
        """
        ckpts = self.list()
        frames = [self._frames(p) for p in ckpts]
        kept_valid = 0
        for path, ef in zip(ckpts, frames):
            keep_it = kept_valid < self.keep or path == just_written or self._is_permanent(ef, frames)
            if kept_valid < self.keep and self._structure_ok(path):
                kept_valid += 1
            if not keep_it:
                doomed = path.with_name(path.name + ".pruned.tmp")
                os.rename(path, doomed)
                shutil.rmtree(doomed)

    # ---------------------------------------------------------------------------------------------------- listing
    @staticmethod
    def _frames(path: Path) -> int:
        m = _FINAL_RE.match(path.name)
        if not m:
            raise CheckpointError(f"{path} is not a checkpoint directory name (expected ckpt-<env_frames>)")
        return int(m.group(1))

    def list(self) -> list[Path]:
        """Complete (committed) checkpoint directories, newest (highest env_frames) first. Not verified."""
        out = [p for p in self.directory.iterdir() if _FINAL_RE.match(p.name) and p.is_dir()]
        return sorted(out, key=self._frames, reverse=True)

    # ---------------------------------------------------------------------------------------------------- loading
    def _read_manifest(self, path: Path) -> dict[str, Any]:
        """Parse and structurally validate manifest.json; raises CheckpointError naming the problem."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
        mpath = path / MANIFEST_FILE
        if not mpath.is_file():
            raise CheckpointError(
                f"checkpoint {path} has no {MANIFEST_FILE}: the save was interrupted or the directory was not "
                "written by decoupled. Resume from an older checkpoint (load_latest does this) or delete it."
            )
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"{mpath} is unreadable or not valid JSON ({exc}); the checkpoint is corrupt. "
                "Resume from an older checkpoint (load_latest does this) or delete it."
            ) from exc
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise CheckpointError(f"{mpath} is not a decoupled checkpoint manifest (format != {_FORMAT!r}).")
        version = manifest.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            newer = isinstance(version, int) and version > SCHEMA_VERSION
            raise CheckpointError(
                f"checkpoint {path} has schema_version {version!r}, but this decoupled reads schema_version "
                f"{sorted(SUPPORTED_SCHEMA_VERSIONS)} (current {SCHEMA_VERSION}). "
                + (
                    "It was written by a newer decoupled: upgrade decoupled to load it."
                    if newer
                    else "No migration from that version exists: load it with the decoupled version that wrote it "
                    f"(manifest meta: {manifest.get('meta')!r}) or start a new run."
                )
            )
        files = manifest.get("files")
        ef = manifest.get("env_frames")
        if not isinstance(files, dict) or STATE_FILE not in files or type(ef) is not int:
            raise CheckpointError(f"{mpath} lacks valid 'files' (with {STATE_FILE}) / 'env_frames'; it is corrupt.")
        m = _FINAL_RE.match(path.name)
        if m and int(m.group(1)) != ef:
            raise CheckpointError(
                f"{mpath} says env_frames={ef} but the directory name says {int(m.group(1))}; it was renamed or "
                "corrupted. Rename the directory back to ckpt-{env_frames:012d} or delete it."
            )
        for name, info in files.items():
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise CheckpointError(f"{mpath} lists an invalid file name {name!r}; it is corrupt or crafted.")
            if (
                not isinstance(info, dict)
                or type(info.get("size")) is not int
                or not isinstance(info.get("sha256"), str)
            ):
                raise CheckpointError(f"{mpath} entry for {name!r} lacks size/sha256; it is corrupt.")
        return manifest

    def _structure_ok(self, path: Path) -> bool:
        """Cheap check (no hashing) used by pruning: manifest valid and every file present with the listed size."""
        try:
            manifest = self._read_manifest(path)
            return all(
                (path / name).is_file() and (path / name).stat().st_size == info["size"]
                for name, info in manifest["files"].items()
            )
        except (CheckpointError, OSError):
            return False

    def verify(self, path: str | Path) -> dict[str, Any]:
        """Check manifest, schema and every file's size and sha256 without unpickling; returns the manifest."""
        path = Path(path)
        manifest = self._read_manifest(path)
        for name, info in manifest["files"].items():
            fpath = path / name
            if not fpath.is_file():
                raise CheckpointError(
                    f"checkpoint {path} is missing {name} listed in its manifest; it is incomplete or was tampered "
                    "with. Resume from an older checkpoint (load_latest does this) or delete it."
                )
            size = fpath.stat().st_size
            if size != info["size"]:
                raise CheckpointError(
                    f"{fpath} has {size} bytes but the manifest says {info['size']} (truncated or overwritten); "
                    "the checkpoint is corrupt. Resume from an older checkpoint (load_latest does this) or delete it."
                )
            digest = _sha256_file(fpath)
            if digest != info["sha256"]:
                raise CheckpointError(
                    f"{fpath} sha256 {digest} does not match the manifest ({info['sha256']}); the file is corrupt. "
                    "Resume from an older checkpoint (load_latest does this) or delete it."
                )
        return manifest

    def load(self, path: str | Path, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify and load one checkpoint; returns ``(state, manifest)``. Never executes code from the file."""
        path = Path(path)
        manifest = self.verify(path)
        spath = path / STATE_FILE
        try:
            raw = torch.load(spath, map_location=map_location, weights_only=True)
        except Exception as exc:
            hint = "" if map_location == "cpu" else f" Also check that map_location={map_location!r} exists here."
            raise CheckpointError(
                f"{spath} could not be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
                "The file is corrupt or was not written by decoupled (checkpoints may only contain tensors and plain "
                f"data; loading never executes code).{hint}"
            ) from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{spath} holds a {type(raw).__name__}, not a state dict; not written by decoupled.")
        return _decode(raw, "state"), manifest

    def load_latest(
        self, map_location: Any = "cpu", accept: Callable[[dict[str, Any]], Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Load the newest checkpoint that verifies, warning about each newer one skipped; None if there is none.

        ``accept(state)``, when given, checks the content of a checkpoint that verifies (e.g. that its parameters fit
        the net they are for) and raises to reject it; a rejected checkpoint is skipped like a corrupt one, with a
        CheckpointWarning naming it and the reason. Raises CheckpointError when checkpoints exist but none verifies
        (and is accepted), because silently starting from scratch would look like a successful resume.
        """
        failures: list[str] = []
        for path in self.list():
            try:
                state, manifest = self.load(path, map_location=map_location)
            except CheckpointError as exc:
                why = f"because it does not verify: {exc}"
            else:
                if accept is None:
                    return state, manifest
                try:
                    accept(state)
                    return state, manifest
                except Exception as exc:  # noqa: BLE001 - whatever rejects it, the next older one is tried
                    why = f"because it verifies but its content cannot be used: {exc}"
            failures.append(f"{path.name} {why}")
            warnings.warn(f"skipping checkpoint {path} {why}", CheckpointWarning, stacklevel=2)
            logger.warning("skipping checkpoint %s %s", path, why)
        if failures:
            usable = " verifies" if accept is None else " verifies and is usable"
            raise CheckpointError(
                f"none of the {len(failures)} checkpoints in {self.directory}{usable}:\n  "
                + "\n  ".join(failures)
                + "\nRestore them from a backup, or move the directory away to start the run from scratch."
            )
        return None


# ----------------------------------------------------------------------------------------------- a run's checkpoints
def load_run_checkpoint(
    target: Path, accept: Callable[[ConfigBase], Callable[[dict[str, Any]], Any]] | None = None
) -> tuple[ConfigBase, dict[str, Any], str]:
    """A run dir (its newest checkpoint that verifies) or one checkpoint dir -> (config, saved state, checkpoint
    path). `accept(cfg)`, when given, makes the check of a checkpoint's content under the run's config (it raises to
    reject a state, e.g. `check_net_state` against the run's net): a run dir then falls back to the newest checkpoint
    that passes (a CheckpointWarning names each one skipped), and one checkpoint dir that fails is a CheckpointError."""
    target = Path(target)
    manager_dir = None
    if (target / "manifest.json").is_file():
        ckpt_dir, run_dir = target, _run_dir_above(target)
    elif (target / "config.yaml").is_file():
        ckpt_dir, run_dir = None, target
    elif target.name == "best" and (target.parent.parent / "config.yaml").is_file():  # RUN/checkpoints/best
        ckpt_dir, run_dir, manager_dir = None, target.parent.parent, target
    else:
        raise FileNotFoundError(f"{target} is neither a run dir (config.yaml) nor a checkpoint dir (manifest.json)")
    cfg = load_config(run_dir / "config.yaml")
    manager_dir = manager_dir or (ckpt_dir.parent if ckpt_dir is not None else run_dir / "checkpoints")
    if ckpt_dir is None and not manager_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} has no checkpoint")
    manager = CheckpointManager(manager_dir)
    check = accept(cfg) if accept is not None else None
    if ckpt_dir is not None:
        state, manifest = manager.load(ckpt_dir)
        try:
            if check is not None:
                check(state)
        except Exception as exc:  # noqa: BLE001 - whatever rejects it: say which checkpoint and why
            raise CheckpointError(
                f"{ckpt_dir} verifies but its content cannot be used: {exc}. Give the run dir to use its newest "
                "usable checkpoint, or another checkpoint dir"
            ) from None
    else:
        restored = manager.load_latest(accept=check)
        if restored is None:
            raise FileNotFoundError(f"{run_dir} has no checkpoint that verifies")
        state, manifest = restored
    return cfg, state, str(ckpt_dir or manager.path_for(manifest["env_frames"]))


def _run_dir_above(ckpt_dir: Path) -> Path:
    """RUN of RUN/checkpoints/ckpt-N and of RUN/checkpoints/best/ckpt-N."""
    for path in ckpt_dir.parents[:3]:
        if (path / "config.yaml").is_file():
            return path
    return ckpt_dir.parent.parent
