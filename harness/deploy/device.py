"""A bundle benchmarked on the user's own device over ssh: ``harness bench BUNDLE --on URL``.

Uses the system's ``ssh`` and ``scp`` (the user's ~/.ssh/config, keys and known hosts), in
batch mode with a connect timeout, so nothing ever waits for a password. On the device:

    ~/.cache/harness-device/<archive sha256>/      ($HARNESS_DEVICE_CACHE overrides the root)
        <bundle>/          the bundle, unpacked from its .tar.gz
        venv/              python -m venv --system-site-packages, the bundle's requirements
        .ready             written last: a folder without it is removed and made again

then the bundle's own ``predict.py --selftest`` and ``predict.py --bench`` run there, and the
bench record comes back to ``<results>/bench/<bundle>-on-<host>.json``, its machine marked
with how it was reached (``via``), so that the device has its own Pareto front.

Written by hand on ``subprocess``: the job is two commands a user would type (scp, ssh), and
a Python ssh library would ignore the user's own ssh configuration.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from harness.core.records import Results, check_name, write_record

MIN_PYTHON = (3, 9)
CACHE = "${HARNESS_DEVICE_CACHE:-$HOME/.cache/harness-device}"


class DeviceError(RuntimeError):
    """The device could not be reached, set up or run the bundle: one line."""


class BadTarget(ValueError):
    """An --on URL harness cannot use: one line."""


@dataclass(frozen=True)
class Target:
    """``ssh://[USER@]HOST[:PORT]``."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise BadTarget(f"{url}: the port is not a number from 1 to 65535") from None
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
            raise BadTarget(f"{url}: expected ssh://[USER@]HOST[:PORT]")
        if parts.query or parts.fragment or parts.password:
            raise BadTarget(f"{url}: expected ssh://[USER@]HOST[:PORT], nothing more")
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", parts.hostname):
            raise BadTarget(f"{url}: {parts.hostname!r} is not a host name")
        if parts.username is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", parts.username):
            raise BadTarget(f"{url}: {parts.username!r} is not a user name")
        return cls(parts.hostname, parts.username, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def label(self) -> str:
        return f"ssh {self.destination}" + (f":{self.port}" if self.port else "")


@dataclass(frozen=True)
class Ssh:
    """How to reach the device: the target, a key, and seconds to wait for a connection."""

    target: Target
    identity: Path | None = None
    config: Path | None = None  # ssh -F: another client configuration than ~/.ssh/config
    connect_timeout: int = 10

    def options(self, port_flag: str) -> list[str]:
        opts = ["-F", str(self.config)] if self.config else []
        opts += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.target.port:
            opts += [port_flag, str(self.target.port)]
        if self.identity:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return opts

    def run(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``script`` in the device's shell (sh -c), its output captured."""
        command = ["ssh", *self.options("-p"), self.target.destination, script]
        return _run(command, timeout)

    def copy(self, local: Path, remote: str, timeout: float = 600) -> None:
        command = [
            "scp",
            "-q",
            *self.options("-P"),
            str(local),
            f"{self.target.destination}:{remote}",
        ]
        done = _run(command, timeout)
        if done.returncode:
            raise DeviceError(f"scp to {self.target.label} failed: {_last(done.stderr)}")


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise DeviceError(f"no {command[0]} on this machine (install OpenSSH's client)") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{command[0]} gave no answer in {timeout:.0f} s") from None


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def ssh_failure(ssh: Ssh, stderr: str) -> str:
    """Why ssh itself failed (exit 255), in the user's words."""
    where = ssh.target.label
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return f"{where} refused the key ({_last(stderr)}); --identity names one"
    if "Host key verification failed" in stderr:
        return f"{where}: its host key is unknown or changed ({_last(stderr)})"
    return f"cannot reach {where}: {_last(stderr)}"


def check_python(ssh: Ssh, python: str) -> str:
    """The device's Python version ('3.11.2'); DeviceError when ssh fails or it is missing
    or older than MIN_PYTHON."""
    probe = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
    done = ssh.run(f"{shlex.quote(python)} -c {shlex.quote(probe)}", timeout=60)
    if done.returncode == 255:
        raise DeviceError(ssh_failure(ssh, done.stderr))
    version = done.stdout.strip()
    if done.returncode or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise DeviceError(
            f"no usable {python} on {ssh.target.label} ({_last(done.stderr)}); --python names one"
        )
    if tuple(map(int, version.split(".")[:2])) < MIN_PYTHON:
        raise DeviceError(
            f"{python} on {ssh.target.label} is Python {version}; the bundle needs "
            f">= {'.'.join(map(str, MIN_PYTHON))} (--python names another)"
        )
    return version


def install(ssh: Ssh, archive: Path, sha256: str, bundle: str, python: str) -> str:
    """The bundle unpacked in its own venv on the device (reused when ``.ready``); returns
    the device folder. A failed set-up is removed before DeviceError says why."""
    home = f"{CACHE}/{sha256}"
    ready = ssh.run(f'test -f "{home}/.ready" && cd "{home}" && pwd', timeout=60)
    if ready.returncode == 255:
        raise DeviceError(ssh_failure(ssh, ready.stderr))
    if ready.returncode == 0 and ready.stdout.strip():
        return ready.stdout.strip()
    made = ssh.run(f'rm -rf "{home}" && mkdir -p "{home}" && cd "{home}" && pwd', timeout=60)
    if made.returncode:
        raise DeviceError(f"cannot make {home} on {ssh.target.label}: {_last(made.stderr)}")
    folder = made.stdout.strip()
    ssh.copy(archive, f"{folder}/{archive.name}")
    steps = (
        ("unpacking the bundle", f"tar xzf {shlex.quote(archive.name)}"),
        ("making the venv", f"{shlex.quote(python)} -m venv --system-site-packages venv"),
        (
            "pip install -r requirements.txt",
            f"venv/bin/python -m pip install -q --disable-pip-version-check "
            f"-r {shlex.quote(bundle)}/requirements.txt",
        ),
    )
    for what, command in steps:
        done = ssh.run(f"cd {shlex.quote(folder)} && {command}", timeout=1800)
        if done.returncode:
            ssh.run(f"rm -rf {shlex.quote(folder)}", timeout=60)
            raise DeviceError(
                f"{what} failed on {ssh.target.label} ({_last(done.stderr or done.stdout)}); "
                f"nothing left there"
            )
    ssh.run(f"cd {shlex.quote(folder)} && rm -f {shlex.quote(archive.name)} && touch .ready")
    return folder


def bench_on(
    ssh: Ssh,
    bundle: Path,
    results: Path,
    python: str = "python3",
    calls: int = 2000,
    warmup: int = 200,
    threads: int = 1,
) -> tuple[Path, dict]:
    """Set the bundle up on the device, run its selftest and its benchmark there, and write
    the record (the selftest's line in it) under ``results``; returns its path and it."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    archive = bundle.parent / f"{bundle.name}.tar.gz"
    sums = bundle.parent / f"{bundle.name}.tar.gz.sha256"
    if not archive.is_file() or not sums.is_file():
        raise DeviceError(f"{archive} or its .sha256 is missing: make the bundle again")
    sha256 = sums.read_text().split()[0]
    version = check_python(ssh, python)
    folder = install(ssh, archive, sha256, bundle.name, python)
    run = f"cd {shlex.quote(folder)}/{shlex.quote(bundle.name)} && ../venv/bin/python predict.py"
    selftest = ssh.run(f"{run} --selftest", timeout=600)
    if selftest.returncode:
        why = _last(selftest.stderr or selftest.stdout)
        raise DeviceError(f"the selftest failed on {ssh.target.label}: {why}")
    out = "device-bench.json"
    timed = ssh.run(
        f"{run} --bench --calls {int(calls)} --warmup {int(warmup)} --threads {int(threads)} "
        f"--out {out} >&2 && cat {out}",
        timeout=3600,
    )
    if timed.returncode:
        raise DeviceError(f"the benchmark failed on {ssh.target.label}: {_last(timed.stderr)}")
    try:
        record = json.loads(timed.stdout)
    except ValueError:
        raise DeviceError(f"the benchmark on {ssh.target.label} wrote no record") from None
    record["machine"]["via"] = ssh.target.label
    record["machine"]["python"] = version
    record["device_cache"] = sha256  # the bundle's folder under the device's cache root
    record["selftest"] = _last(selftest.stdout)
    name = check_name(f"{manifest['bundle']}-on-{ssh.target.host}".replace(":", "-"))
    path = Results(Path(results)).bench(name)
    write_record("bench", path, record)
    return path, record


def format_result(record: dict, path: Path) -> str:
    """What ``harness bench --on`` prints of a device's record."""
    row, machine = record["rows"][0], record["machine"]
    return (
        f"{record['bundle']} on {machine['via']}: {record['selftest']}\n"
        f"  batch-1 p50 {row['p50_us']:.1f} us, p90 {row['p90_us']:.1f} us, p99 "
        f"{row['p99_us']:.1f} us; {row['throughput_ips']:,.0f} img/s at batch 256 "
        f"({machine['cpu']}, {machine['cores']} cores)  ->  {path}"
    )
