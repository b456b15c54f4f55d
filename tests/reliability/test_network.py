"""Offline means no packet leaves the machine, whatever the user's shell has.

`decoupled train` with the default config (offline W&B) runs under `strace -f` (every thread and child process,
W&B's wandb-core service included) with no WANDB_* variable in its environment (tests/conftest.py and `make test`
set WANDB_MODE and WANDB_BASE_URL, which hid a DNS query from W&B's analytics; they are removed here). Every
connect / send to an internet address must be to loopback, and none may go to port 53 (DNS).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")

# one socket address as strace prints it: {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.1")}
# or {sa_family=AF_INET6, sin6_port=htons(443), ..., inet_pton(AF_INET6, "::1", &sin6_addr), ...}
_SOCKADDR = re.compile(r"\{sa_family=(\w+)([^{}]*)\}")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_ADDR = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6?, "([^"]+)"')
_LOCAL_FAMILIES = {"AF_UNIX", "AF_LOCAL", "AF_NETLINK", "AF_UNSPEC"}


def _default_config() -> Path:
    """The config `make demo` trains (the Makefile's DEMO_CONFIG), the project's default."""
    m = re.search(r"^DEMO_CONFIG\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    return ROOT / (m.group(1) if m else "configs/impala/minatar_breakout.yaml")


def _off_machine(trace: str) -> list[str]:
    """The traced connect/send calls that reach past this machine: any internet address but loopback, and any DNS
    (port 53, to whatever address: a query to a local stub resolver is forwarded)."""
    bad = []
    for line in trace.splitlines():
        if "execve(" in line:
            continue
        for family, body in _SOCKADDR.findall(line):
            if family in _LOCAL_FAMILIES:
                continue
            if family not in ("AF_INET", "AF_INET6"):
                bad.append(line)
                break
            port = _PORT.search(body)
            addr = _ADDR.search(body)
            try:
                ip = ipaddress.ip_address(addr.group(1) or addr.group(2))
            except (AttributeError, ValueError):  # an address strace did not print plainly: not shown to be local
                bad.append(line)
                break
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if (port is not None and int(port.group(1)) == 53) or not (ip.is_loopback or ip.is_unspecified):
                bad.append(line)
                break
    return bad


def _strace(cmd: list[str], trace: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STRACE, "-f", "-qq", "-s", "32", "-e", "trace=connect,sendto,sendmsg,sendmmsg,execve", "-o", str(trace),
         *cmd],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _user_env(home: Path) -> dict[str, str]:
    """This environment without the W&B (and Ray) variables the test setup adds, HOME and the XDG dirs in `home`, so
    W&B keeps its config and cache there, not in the user's home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"),
               XDG_DATA_HOME=str(home / ".local" / "share"))  # fmt: skip
    return env


def test_the_trace_sees_a_connection_off_the_machine_from_a_child(tmp_path):
    """The check itself: a grandchild's UDP connects (no packet is sent by a UDP connect) to a DNS server and to an
    internet address are found; loopback is not."""
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.connect(('127.0.0.1', 9)); s.sendto(b'x', ('127.0.0.1', 9))\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('192.0.2.1', 53))\n"
        "try: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).connect(('2001:db8::1', 443))\n"
        "except OSError: pass  # no IPv6 here\n"
    )  # fmt: skip
    trace = tmp_path / "trace"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}], check=True)"
    proc = _strace([sys.executable, "-c", parent], trace, _user_env(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = trace.read_text()
    bad = _off_machine(text)
    ipv6 = [line for line in text.splitlines() if "connect(" in line and "2001:db8::1" in line]  # none without IPv6
    assert len(bad) == 1 + len(ipv6), bad
    assert "192.0.2.1" in bad[0] and "htons(53)" in bad[0] and bad[1:] == ipv6
    assert "127.0.0.1" in text  # traced, and not taken for off the machine


@pytest.mark.slow
def test_offline_training_sends_nothing_off_the_machine(tmp_path):
    run, trace = tmp_path / "run", tmp_path / "trace"
    cmd = [sys.executable, "-m", "decoupled", "train", str(_default_config()), "runner.total_env_frames=3000",
           "--run-dir", str(run)]  # fmt: skip
    proc = _strace(cmd, trace, _user_env(tmp_path / "home"), timeout=300)
    out = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    # it ran, and W&B with it: a finished offline W&B run, and wandb-core (its service process) under the trace
    assert "finished at" in proc.stdout, out
    assert (run / "metrics.jsonl").is_file()
    assert list(run.glob("wandb/offline-run-*/run-*.wandb")), sorted(p.name for p in (run / "wandb").glob("*"))
    text = trace.read_text()
    assert re.search(r'execve\("[^"]*wandb-core"', text), "wandb-core did not run under the trace"
    bad = _off_machine(text)
    assert not bad, "offline training reached past this machine:\n" + "\n".join(bad[:20])


def _own_addresses() -> set[ipaddress._BaseAddress]:
    """The addresses of this machine's interfaces (Ray's processes talk to each other on the machine's address)."""
    import psutil

    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                out.add(ipaddress.ip_address(a.address.split("%")[0]))
            except ValueError:  # a MAC address
                pass
    return out


@pytest.mark.slow
def test_ray_mode_sends_nothing_off_the_machine(tmp_path):
    """`runner.mode: ray` with the local Ray the run starts: Ray's processes talk to each other on the machine's own
    address, and its node-IP lookup `connect`s a UDP socket to 8.8.8.8:53 (which sends nothing); nothing else goes
    out, in particular no probe of the cloud metadata address (169.254.169.254) and no DNS query."""
    pytest.importorskip("ray")
    run, trace = tmp_path / "run", tmp_path / "trace"
    cmd = [sys.executable, "-m", "decoupled", "train", str(ROOT / "configs" / "impala" / "catch_ray.yaml"),
           "runner.total_env_frames=3200", "--run-dir", str(run)]  # fmt: skip
    proc = _strace(cmd, trace, _user_env(tmp_path / "home"), timeout=300)
    out = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and "finished at" in proc.stdout, out
    text = trace.read_text()
    assert re.search(r'execve\("[^"]*raylet"', text), "Ray did not run under the trace"
    own = _own_addresses()
    bad = []
    for line in _off_machine(text):
        addrs = [ipaddress.ip_address(a or b) for a, b in _ADDR.findall(line)]
        addrs = [getattr(a, "ipv4_mapped", None) or a for a in addrs]
        if addrs and all(a in own for a in addrs):
            continue  # Ray's processes to one another, on this machine's address
        if "connect(" in line and 'inet_addr("8.8.8.8")' in line and "htons(53)" in line:
            continue  # the UDP route lookup of Ray's node-IP discovery: a connect, no packet
        bad.append(line)
    sent_to_dns = [line for line in text.splitlines() if "send" in line and "8.8.8.8" in line]
    assert not bad and not sent_to_dns, "ray mode reached past this machine:\n" + "\n".join((bad + sent_to_dns)[:20])
    assert "169.254.169.254" not in text
