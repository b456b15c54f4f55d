"""Throughput peers from other projects for `decoupled bench throughput`, each run by the interpreter of a virtual
environment of its own, because their pins clash with ours (Sample Factory 2.1.1 needs gymnasium < 1.0 and
numpy < 2; CleanRL's envpool script the old `gym` 0.23 API). `make peers` builds them from the pinned lists in
runners/bench/peers/ (`<name>.txt`) under `.venv-peers/` (or `$DECOUPLED_PEER_VENVS`).

- `sf_appo`: Sample Factory 2.1.1's APPO (Petrenko et al. 2020, arXiv:2006.11751), its envpool Atari example
  (runners/bench/peers/sf_appo.py starts it) with settings matched to configs/impala/breakout.yaml: 2 rollout
  workers x 8 envs (an envpool of 8 each), rollout 20, learner batch 320 (one unroll of 16 envs), one epoch of one
  batch, Nature CNN (its `convnet_atari`, 512 units), no RNN, CPU; GAE advantages, the example's default, because
  Sample Factory 2.1.1's V-trace path crashes its learner when it records summaries (`mb.advantages` is never set
  there); the cost of either is negligible next to the network's. `sf_appo_1w`: the same with 1 worker x 16 envs.
- `cleanrl_ppo`: CleanRL's ppo_atari_envpool.py (Huang et al. 2022, JMLR 23(274)), vendored unchanged in
  runners/bench/peers/, with its defaults (8 envs, 128 steps, 4 epochs x 4 minibatches, Adam), on the CPU.

`PEER_DEVIATIONS` lists where each differs from our measured config. Each peer runs in a temporary working
directory (its logs and summaries go there); its stdout and stderr lines are read as they come and timed here, and
the agent steps the peer reports (Sample Factory: its learner's "Total num frames", with frame skip left out of its
summaries; CleanRL: one "SPS:" line per 8 x 128 agent steps) give agent steps/s after the warm-up. Peak memory is
the largest sum of resident memory over the peer's whole process tree (Sample Factory runs workers in processes),
sampled every half second. At the end the peer's process group is terminated (SIGTERM, then SIGKILL). A peer inherits
this process's environment, torch's passive OpenMP waiting included (decoupled/__init__.py), as SB3's measurements
do, with W&B disabled.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent / "peers"
VENVS_ENV = "DECOUPLED_PEER_VENVS"


@dataclass(frozen=True)
class ForeignPeer:
    venv: str  # the virtual environment's folder under the peer venvs dir, built from PEERS_DIR/<venv>.txt
    kind: str  # "sf" or "cleanrl": how its command is built and its progress lines are read
    settings: dict[str, Any] = field(default_factory=dict)


# Sample Factory's APPO with configs/impala/breakout.yaml's batch: 16 envs x unroll 20 = 320 samples per update
_SF_MATCHED = {"rollout": 20, "batch_size": 320, "num_epochs": 1, "num_batches_per_epoch": 1, "with_vtrace": False}
FOREIGN_PEERS: dict[str, ForeignPeer] = {
    "sf_appo": ForeignPeer("sample_factory", "sf", {"num_workers": 2, "env_agents": 8, **_SF_MATCHED}),
    "sf_appo_1w": ForeignPeer("sample_factory", "sf", {"num_workers": 1, "env_agents": 16, **_SF_MATCHED}),
    "cleanrl_ppo": ForeignPeer("cleanrl", "cleanrl", {"num_envs": 8, "num_steps": 128}),
}
PEER_DEVIATIONS: dict[str, list[str]] = {
    "sf_appo": [
        "2 rollout worker processes x 8 envs (ours: one actor thread, 16 envs in one envpool)",
        "Adam lr 2.5e-4 (the example's), ours RMSProp lr 6e-4",
        "envpool with episodic life and reward clipping in the env, ours dqn_noop30 (no episodic life)",
        "inference in the rollout workers' policy worker process, the learner in another",
        "GAE advantages instead of V-trace (Sample Factory 2.1.1's V-trace crashes in its summaries)",
    ],
    "cleanrl_ppo": [
        "PPO (8 envs x 128 steps, 4 epochs x 4 minibatches of 256; GAE) instead of one V-trace pass over 16 x 20",
        "acting and learning alternate in one process (synchronous)",
        "Adam lr 2.5e-4, ours RMSProp lr 6e-4; envpool with episodic life and reward clipping",
    ],
}
PEER_DEVIATIONS["sf_appo_1w"] = ["1 rollout worker process x 16 envs", *PEER_DEVIATIONS["sf_appo"][1:]]

_SF_FRAMES = re.compile(r"Total num frames: (\d+)")
_CLEANRL_SPS = re.compile(r"^SPS: \d+")


class PeerUnavailable(RuntimeError):
    """A peer's virtual environment is missing: the message says how to build it."""


def venvs_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / ".venv-peers"
    return Path(os.environ.get(VENVS_ENV) or default)


def peer_python(name: str) -> Path:
    """The interpreter of the peer's virtual environment; PeerUnavailable naming `make peers` when it is missing."""
    peer = FOREIGN_PEERS[name]
    python = venvs_dir() / peer.venv / "bin" / "python"
    if not python.exists():
        raise PeerUnavailable(
            f"{name} runs in a virtual environment of its own, and {python} does not exist: run `make peers` in the "
            f"repository (it builds {venvs_dir() / peer.venv} from runners/bench/peers/{peer.venv}.txt), or point "
            f"${VENVS_ENV} at the folder holding it"
        )
    return python


def peer_command(name: str, game: str, seconds: float, train_dir: str) -> list[str]:
    """The command line that trains the peer on `game` for about `seconds` (it is stopped from outside anyway)."""
    peer, python = FOREIGN_PEERS[name], str(peer_python(name))
    s = peer.settings
    if peer.kind == "sf":
        return [
            python, "-u", str(PEERS_DIR / "sf_appo.py"), game, "--experiment=bench", f"--train_dir={train_dir}",
            f"--num_workers={s['num_workers']}", "--num_envs_per_worker=1", f"--env_agents={s['env_agents']}",
            "--worker_num_splits=1", f"--rollout={s['rollout']}", f"--batch_size={s['batch_size']}",
            f"--num_epochs={s['num_epochs']}", f"--num_batches_per_epoch={s['num_batches_per_epoch']}",
            f"--with_vtrace={s['with_vtrace']}", "--use_rnn=False", "--device=cpu", "--with_wandb=False",
            "--summaries_use_frameskip=False", f"--train_for_seconds={int(seconds) + 60}",
            "--save_every_sec=1000000", "--keep_checkpoints=1",
        ]  # fmt: skip
    return [
        python, "-u", str(PEERS_DIR / "cleanrl_ppo_atari_envpool.py"), f"--env-id={game}-v5", "--no-cuda",
        f"--num-envs={s['num_envs']}", f"--num-steps={s['num_steps']}", "--total-timesteps=1000000000",
    ]  # fmt: skip


def steps_seen(kind: str, lines: list[tuple[float, str]], settings: dict[str, Any]) -> list[tuple[float, int]]:
    """(time, agent steps so far) from a peer's timed output lines."""
    points: list[tuple[float, int]] = []
    if kind == "sf":
        for t, line in lines:
            m = _SF_FRAMES.search(line)
            if m:
                points.append((t, int(m.group(1))))
        return points
    per_line = settings["num_envs"] * settings["num_steps"]
    k = 0
    for t, line in lines:
        if _CLEANRL_SPS.match(line.strip()):
            k += 1
            points.append((t, k * per_line))
    return points


def rate_after(points: list[tuple[float, int]], warmup: float) -> dict[str, float]:
    """Agent steps/s between the first and the last point after `warmup` seconds, and the rate over the last third of
    that window against the first third's (1.0: steady)."""
    after = [p for p in points if p[0] >= warmup]
    if len(after) < 2 or after[-1][0] <= after[0][0]:
        raise RuntimeError(f"fewer than two progress reports after the {warmup:g}-second warm-up; raise --seconds")
    (t0, s0), (t1, s1) = after[0], after[-1]
    out = {"steps_per_s": (s1 - s0) / (t1 - t0)}
    third = (t1 - t0) / 3.0

    def window(lo: float, hi: float) -> float | None:
        inside = [p for p in after if lo <= p[0] <= hi]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    first, last = window(t0, t0 + third), window(t1 - third, t1)
    # None: a third of the window held fewer than two progress reports (a short window on a loaded machine)
    out["last_third_over_first"] = round(last / first, 3) if first and last else None
    return out


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader is gone; its workers may not be
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def measure(a: dict[str, Any]) -> dict[str, Any]:
    """One measurement of the foreign peer `a["what"]` on `a["game"]`: `a["warmup"]` seconds, then `a["seconds"]`."""
    name = a["what"]
    peer = FOREIGN_PEERS[name]
    total = a["warmup"] + a["seconds"]
    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory(prefix=f"decoupled-{name}-") as tmp:
        cmd = peer_command(name, a["game"], total, f"{tmp}/train_dir")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_SERVICE", "VIRTUAL_ENV"))}
        env["WANDB_MODE"], env["PYTHONUNBUFFERED"] = "disabled", "1"  # progress lines as they happen
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True,
        )  # fmt: skip

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.perf_counter() - t0, line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        peak, exited = 0.0, None
        try:
            while time.perf_counter() - t0 < total and proc.poll() is None:
                peak = max(peak, _tree_rss_mb(proc.pid))
                time.sleep(0.5)
            exited = proc.poll()  # None: still running at the end, as it should be
        finally:
            _stop(proc)
            reader.join(timeout=10.0)
    points = steps_seen(peer.kind, lines, peer.settings)
    try:
        out: dict[str, Any] = rate_after(points, a["warmup"])
    except RuntimeError as e:
        how = f"exited with {exited} after {time.perf_counter() - t0:.0f} s" if exited is not None else "ran"
        tail = "\n".join(line for _, line in lines[-15:])
        raise RuntimeError(f"{name} {how}, and {e}; its last output:\n{tail}") from None
    if out["steps_per_s"] <= 0:  # Sample Factory keeps reporting after its learner has died
        errors = [line for _, line in lines if "Error" in line or "exception" in line][-5:]
        raise RuntimeError(f"{name} trained no steps after the warm-up; its errors:\n" + "\n".join(errors))
    out.update({"peak_rss_mb": round(peak, 1), **peer.settings, "deviations": PEER_DEVIATIONS[name]})
    return out
