"""Read an offline W&B run (`run-<id>.wandb`) without a server.

wandb 0.31 ships no Python reader for its transaction log (the old `datastore` module and `wandb sync --view`
are gone), yet a run dir's W&B files must be checkable offline (tests; "does W&B hold what metrics.jsonl
holds?"). The file is a LevelDB-style log of `wandb_internal.Record` protobufs in 32 KiB blocks; the protobuf
classes ship with wandb, so only the framing is ours. A record cut by a crash ends the read quietly.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK, _HDR = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    buf = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", buf[:_HDR])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a .wandb log ({ident!r} {magic:#x} v{version})")
    pos, parts = _HDR, []
    while pos + _HDR <= len(buf):
        left = _BLOCK - pos % _BLOCK
        if left < _HDR:  # block trailer: zero padding
            pos += left
            continue
        crc, n, typ = struct.unpack("<IHB", buf[pos : pos + _HDR])
        if typ == 0 and n == 0:  # zero-filled tail of a file still being written
            break
        data = buf[pos + _HDR : pos + _HDR + n]
        if len(data) < n:  # cut by a crash
            break
        if zlib.crc32(data, zlib.crc32(bytes([typ]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos += _HDR + n
        if typ in (_FIRST, _FULL):
            parts = [data]
        else:
            parts.append(data)
        if typ in (_FIRST, _MIDDLE):
            continue
        rec = pb.Record()
        rec.ParseFromString(b"".join(parts))
        parts = []
        yield rec


def _key(item: Any) -> str:
    return ".".join(item.nested_key) if item.nested_key else item.key


def read_run(path: str | Path) -> dict[str, Any]:
    """-> {"run_id", "history": [row, ...], "config": {...}, "summary": {...}, "exit_code"}."""
    out: dict[str, Any] = {"run_id": None, "history": [], "config": {}, "summary": {}, "exit_code": None}
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                out["summary"][_key(i)] = json.loads(i.value_json)
        elif kind == "config":
            for i in rec.config.update:
                out["config"][_key(i)] = json.loads(i.value_json)
        elif kind == "run":
            out["run_id"] = rec.run.run_id
            for i in rec.run.config.update:  # wandb >= 0.31 puts the initial config in the run record
                if _key(i) != "_wandb":
                    out["config"][_key(i)] = json.loads(i.value_json)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def read_run_dir(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every offline W&B segment of a run dir (one per start or resume), oldest first."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    return [read_run(f) for f in files]
