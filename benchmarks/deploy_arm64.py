"""Does a linux deploy bundle give the same answers on a Raspberry Pi as on x86? (issue 19)

Runs a bundle written by ``harness deploy RUN --target linux`` on emulated arm64 CPUs,
Cortex-A72 (Raspberry Pi 4) and Cortex-A76 (Raspberry Pi 5), with qemu-user and a Debian
bookworm arm64 userland (Python 3.11, as on Raspberry Pi OS 12), and compares it with the
same bundle on this x86-64 machine:

1. toolchain  ``qemu-aarch64-static`` (``apt-get install qemu-user-static``) and an arm64
              userland unpacked from Debian's arm64 packages. apt runs with its own state in
              the cache folder, so the host's dpkg architectures and lists are left alone.
2. packages   the bundle's pinned ``requirements.txt`` as aarch64 wheels (``site-<key>/``)
              and as an x86-64 venv (``venv-x86-<key>/``): the bundle's requirements only.
3. runs       on x86 and on each emulated CPU: ``predict.py --selftest``; ten PNG test
              images through ``predict.py --json`` (the Pillow path the selftest skips; one
              is 64 x 64, so the resize runs too); the 10,000 CIFAR-10 test images through
              ``predict.py --npz FILE --dump-probs OUT.npy``.
4. compare    per CPU against x86: argmax agreement, disagreements, largest absolute
              probability difference, test accuracy and its difference in points.
5. record     ``<bundle>/../<bundle-name>.arm64.json`` (``.arm64-first<N>.json`` with
              ``--limit N``); exit status 0 when every bundle
              passes, 1 when one fails, 2 when the toolchain cannot be set up.

Target (issue 19): argmax agreement with x86 >= 99.9% and test accuracy within 0.1 point.

The cache (default ``~/.cache/harness-arm64``, 0.9 GB with both runtimes: userland 140 MB,
one site per requirements set 140-210 MB, one x86 venv each 180 MB) is built on first use,
in about a minute, and reused: nothing large goes into the repository.

Expect (2-core AMD EPYC shared with a training job, nice 19, predict.py's default one
thread; emulated seconds per CPU for the 10,000 images): 5-30 s for the small MLPs, 30-110 s
for a 4.3 MB int8 MLP, 240 s for a 16.9 MB float32 ONNX MLP, 100-360 s for an int8 ResNet-8
and 770-790 s for a float32 ONNX ResNet-8; so 1 to 27 minutes per bundle. Found so far
(records next to the bundles): every int8 and float32 bundle meets the target on both CPUs
(at most 1 of 10,000 images differs); the dynamic-range bundle fails on the A76 only
(99.87%, 13 flips, all where x86's top two classes are within 0.026), probably because
the A76's dot-product instructions give LiteRT another kernel for that layer type.

Emulated wall times are qemu TCG on the x86 host, including interpreter start-up and data
loading. They say how long this check takes, not how fast a Pi answers: they are NOT
device latencies and the record does not report them as such. (The A76 runs int8 models
several times faster here, probably because XNNPACK picks dot-product kernels on it:
fewer, larger instructions to emulate; numpy reports ASIMDDP on the A76 only.)

Usage:
    python benchmarks/deploy_arm64.py results/reference/deploy/<bundle> \\
        --archive /work/shared/data/cifar-10-python.tar.gz
    python benchmarks/deploy_arm64.py results/reference/deploy/*/ --cpu cortex-a72 --limit 500
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- settings

SETTINGS = {
    "cache": "~/.cache/harness-arm64",  # rootfs, wheels, venvs, the test-set .npz
    "debian_suite": "bookworm",  # glibc 2.36 and Python 3.11, as Raspberry Pi OS 12
    "python": "3.11",
    "glibc": 36,  # newest manylinux_2_X tag this userland can load
    # Debian packages whose Depends/Pre-Depends closure makes the userland; libstdc++6 is
    # for the runtimes' C++ extensions (the wheels bundle everything else they need).
    "deb_roots": ("python3.11", "libstdc++6"),
    "min_agreement": 0.999,  # fraction of test images with the x86 argmax
    "max_accuracy_delta": 0.001,  # |accuracy - x86 accuracy|, as a fraction (0.1 pt)
    "images": 10,  # PNG files through predict.py's image path
    "nice": 19,  # others train on this machine; stay out of the way
    "run_timeout_s": 3 * 3600,  # one predict.py run, emulated
}

# What /proc/cpuinfo says on each board (64-bit Raspberry Pi OS). qemu -L serves this file
# to the guest, and onnxruntime and XNNPACK pick their kernels from it (pytorch/cpuinfo):
# with the host's x86 cpuinfo onnxruntime segfaults at import, and with the A76's file
# under ``-cpu cortex-a72`` LiteRT dies of SIGILL in a dot-product kernel. So each CPU gets
# its own file, which must match what ``qemu -cpu`` emulates.
CPUS = {
    "cortex-a72": {
        "board": "Raspberry Pi 4 Model B",
        "variant": "0x0",
        "part": "0xd08",
        "revision": "3",
        "features": "fp asimd evtstrm crc32 cpuid",
    },
    "cortex-a76": {
        "board": "Raspberry Pi 5 Model B",
        "variant": "0x4",
        "part": "0xd0b",
        "revision": "1",
        "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
        "asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    },
}

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
NOT_A_LATENCY = (
    "verification_wall_s is the wall time of one whole predict.py run (start-up, "
    "data loading, inference): on x86 for comparison, on arm64 under qemu-user "
    "TCG emulation on the x86 host. It is not a device latency."
)


class ToolchainError(RuntimeError):
    """The emulator, userland or packages cannot be set up; nothing can be verified."""


class RunFailed(RuntimeError):
    """One predict.py run failed; it is recorded and the other runs go on."""


# --------------------------------------------------------------------------- pure parts


def read_requirements(text: str) -> dict[str, str]:
    """``{name: version}`` of a pinned requirements.txt; raises ValueError for a line that
    is not ``name==version`` (an unpinned bundle cannot be reproduced on the device)."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = line.split(";", 1)[0].split(" --hash", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s,]+)", line)
        if not match:
            raise ValueError(f"requirements.txt: {raw.strip()!r} is not pinned as name==version")
        pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return pins


def cpuinfo_text(cpu: str, processors: int) -> str:
    """A /proc/cpuinfo as the board of ``cpu`` shows it, with ``processors`` entries (the
    host's count, so that it agrees with the /sys files the guest also reads)."""
    spec = CPUS[cpu]
    block = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {variant}\n"
        "CPU part\t: {part}\nCPU revision\t: {revision}\n\n"
    )
    text = "".join(block.format(i=i, **spec) for i in range(processors))
    return text + f"Model\t\t: {spec['board']} (emulated by qemu -cpu {cpu})\n"


def manylinux_platforms(glibc_minor: int) -> list[str]:
    """pip ``--platform`` tags an aarch64 glibc 2.``glibc_minor`` userland can load. pip does
    not widen a given tag to older ones, so every tag is listed."""
    return ["manylinux2014_aarch64"] + [
        f"manylinux_2_{m}_aarch64" for m in range(17, glibc_minor + 1)
    ]


def compare_probs(
    probs: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None,
    min_agreement: float = SETTINGS["min_agreement"],
    max_accuracy_delta: float = SETTINGS["max_accuracy_delta"],
) -> dict:
    """Figures of ``probs`` (N, classes) against the x86 ``reference`` for the same images:
    argmax agreement (fraction), disagreements, max |probs - reference|, and, with
    ``labels``, accuracy of both and the difference in points; ``passed`` applies the
    targets. Raises ValueError when the shapes differ or hold no images."""
    probs, reference = np.asarray(probs), np.asarray(reference)
    if probs.shape != reference.shape or probs.ndim != 2 or len(probs) == 0:
        raise ValueError(
            f"probabilities of shape {probs.shape} cannot be compared with "
            f"the x86 reference of shape {reference.shape}"
        )
    pred, ref_pred = probs.argmax(axis=1), reference.argmax(axis=1)
    agreement = float((pred == ref_pred).mean())
    figures = {
        "images": int(len(probs)),
        "argmax_agreement": agreement,
        "disagreements": int((pred != ref_pred).sum()),
        "max_abs_prob_diff": float(
            np.abs(probs.astype(np.float64) - reference.astype(np.float64)).max()
        ),
    }
    # 1e-9: exactly at a limit (e.g. 9,990 of 10,000) is within it despite rounding.
    passed = agreement >= min_agreement - 1e-9
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        accuracy, ref_accuracy = float((pred == labels).mean()), float((ref_pred == labels).mean())
        delta = accuracy - ref_accuracy
        figures.update(
            accuracy=accuracy,
            x86_accuracy=ref_accuracy,
            accuracy_delta_points=round(100 * delta, 4),
        )
        passed = passed and abs(delta) <= max_accuracy_delta + 1e-9
    figures["passed"] = bool(passed)
    return figures


# --------------------------------------------------------------------------- helpers


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_command(
    cmd: list[str],
    *,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` and return it; a nonzero exit raises ToolchainError with stderr's tail."""
    done = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True)
    if done.returncode:
        raise ToolchainError(
            f"{' '.join(map(str, cmd[:4]))} ... exited {done.returncode}: "
            f"{done.stderr.strip()[-2000:]}"
        )
    return done


def build_atomically(target: Path, build) -> Path:
    """``build(tmp)`` into a temporary sibling folder, then rename it to ``target``, so a
    killed build never leaves a plausible-looking cache entry behind."""
    if target.exists():
        return target
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def clean_env(**extra: str) -> dict:
    """An environment free of this venv's settings: the bundle sees only its own packages."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return {**env, **extra}


# --------------------------------------------------------------------------- 1. toolchain


@dataclass(frozen=True)
class Emulator:
    qemu: str  # path of qemu-aarch64-static
    version: str  # its --version line
    rootfs: Path  # the unpacked Debian arm64 userland
    packages: dict  # Debian package -> version inside it

    @property
    def python(self) -> Path:
        return self.rootfs / "usr" / "bin" / f"python{SETTINGS['python']}"


def find_qemu() -> tuple[str, str]:
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not qemu:
        raise ToolchainError("qemu-aarch64-static not found: apt-get install qemu-user-static")
    return qemu, run_command([qemu, "--version"]).stdout.splitlines()[0].strip()


def apt_options(state: Path) -> list[str]:
    """apt-get/apt-cache options for arm64 bookworm with all state under ``state``."""
    suite = SETTINGS["debian_suite"]
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "sources.list.d").mkdir(exist_ok=True)
    sources = state / "sources.list"
    sources.write_text(
        "".join(
            f"deb [arch=arm64 signed-by={DEBIAN_KEYRING}] "
            f"http://deb.debian.org/{repo} {dist} main\n"
            for repo, dist in (
                ("debian", suite),
                ("debian", f"{suite}-updates"),
                ("debian-security", f"{suite}-security"),
            )
        )
    )
    return [
        "-o",
        "APT::Architecture=arm64",
        "-o",
        "APT::Architectures::=arm64",
        "-o",
        f"Dir::State::Lists={state / 'lists'}",
        "-o",
        f"Dir::Cache={state / 'cache'}",
        "-o",
        "Dir::State::status=/dev/null",
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        f"Dir::Etc::SourceParts={state / 'sources.list.d'}",
    ]


def build_rootfs(cache: Path) -> Path:
    """The arm64 userland at ``cache/rootfs-<suite>``: the Depends closure of
    SETTINGS['deb_roots'] downloaded with apt and unpacked with ``dpkg -x`` (no scripts
    run, nothing installed on the host); ``debian-packages.json`` lists what it holds."""
    if not Path(DEBIAN_KEYRING).exists():
        raise ToolchainError(f"{DEBIAN_KEYRING} missing: apt-get install debian-archive-keyring")

    def build(tmp: Path) -> None:
        opts = apt_options(cache / "apt")
        print(f"[toolchain] apt-get update (arm64 {SETTINGS['debian_suite']})", flush=True)
        run_command(["apt-get", *opts, "-qq", "update"])
        tree = run_command(
            [
                "apt-cache",
                *opts,
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
                *SETTINGS["deb_roots"],
            ]
        ).stdout
        names = sorted(
            {
                line.strip()
                for line in tree.splitlines()
                if line and not line.startswith(" ") and not line.startswith("<")
            }
        )
        debs = tmp.parent / f".debs.tmp{os.getpid()}"
        shutil.rmtree(debs, ignore_errors=True)
        debs.mkdir()
        try:
            print(f"[toolchain] downloading {len(names)} Debian arm64 packages", flush=True)
            run_command(["apt-get", *opts, "-qq", "download", *names], cwd=debs)
            tmp.mkdir()
            versions = {}
            for deb in sorted(debs.glob("*.deb")):
                run_command(["dpkg-deb", "-x", str(deb), str(tmp)])
                name, version, _ = deb.name.split("_")
                versions[name] = version.replace("%3a", ":")
        finally:
            shutil.rmtree(debs, ignore_errors=True)
        (tmp / "debian-packages.json").write_text(json.dumps(versions, indent=1) + "\n")

    return build_atomically(cache / f"rootfs-{SETTINGS['debian_suite']}", build)


def cpu_view(cache: Path, rootfs: Path, cpu: str) -> Path:
    """``cache/views/<cpu>``: the rootfs through symlinks plus that board's proc/cpuinfo;
    the ``-L`` prefix for one CPU, so several CPUs share one userland."""
    view = cache / "views" / cpu
    (view / "proc").mkdir(parents=True, exist_ok=True)
    for entry in rootfs.iterdir():
        link = view / entry.name
        if entry.name != "proc" and not link.is_symlink():
            link.symlink_to(entry.resolve())
    (view / "proc" / "cpuinfo").write_text(cpuinfo_text(cpu, os.cpu_count() or 1))
    return view


def prepare_emulator(cache: Path) -> Emulator:
    qemu, version = find_qemu()
    rootfs = build_rootfs(cache)
    packages = json.loads((rootfs / "debian-packages.json").read_text())
    emulator = Emulator(qemu, version, rootfs, packages)
    if not emulator.python.exists():
        raise ToolchainError(f"{emulator.python} missing: delete {rootfs} and run again")
    return emulator


def emulated(emulator: Emulator, cache: Path, cpu: str, site: Path) -> tuple[list, dict]:
    """Command prefix and environment to run the arm64 Python on ``cpu`` with ``site``."""
    view = cpu_view(cache, emulator.rootfs, cpu)
    cmd = [
        "nice",
        "-n",
        str(SETTINGS["nice"]),
        emulator.qemu,
        "-cpu",
        cpu,
        "-L",
        str(view),
        str(emulator.python),
    ]
    return cmd, clean_env(PYTHONPATH=str(site))


# --------------------------------------------------------------------------- 2. packages


def requirements_key(pins: dict[str, str]) -> str:
    text = "\n".join(f"{name}=={version}" for name, version in sorted(pins.items()))
    return sha256_bytes(f"py{SETTINGS['python']}\n{text}".encode())[:12]


def build_arm64_site(cache: Path, requirements: Path, pins: dict) -> Path:
    """The bundle's requirements as aarch64 cp311 wheels, installed with ``pip --target``
    into ``cache/site-<key>`` (wheels are kept in ``cache/wheels``)."""
    wheels = cache / "wheels"
    platform_args = [
        arg for tag in manylinux_platforms(SETTINGS["glibc"]) for arg in ("--platform", tag)
    ]
    tags = [
        "--only-binary=:all:",
        *platform_args,
        "--python-version",
        SETTINGS["python"],
        "--implementation",
        "cp",
        "--abi",
        "cp" + SETTINGS["python"].replace(".", ""),
    ]

    def build(tmp: Path) -> None:
        print(
            f"[packages] aarch64 wheels for {', '.join(f'{k}=={v}' for k, v in pins.items())}",
            flush=True,
        )
        run_command(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                *tags,
                "-d",
                str(wheels),
                "-r",
                str(requirements),
            ]
        )
        run_command(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--isolated",
                "--no-index",
                "--find-links",
                str(wheels),
                *tags,
                "--target",
                str(tmp),
                "-r",
                str(requirements),
            ]
        )

    return build_atomically(cache / f"site-{requirements_key(pins)}", build)


def build_x86_venv(cache: Path, requirements: Path, pins: dict) -> Path:
    """A venv at ``cache/venv-x86-<key>`` holding the bundle's requirements and nothing
    else; returns its python. (A venv survives the rename: bin/python is a symlink and
    pyvenv.cfg is found next to it; only pip's console scripts would break.)"""

    def build(tmp: Path) -> None:
        print("[packages] x86-64 venv with the bundle's requirements", flush=True)
        run_command([sys.executable, "-m", "venv", str(tmp)])
        run_command(
            [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(requirements)]
        )

    return build_atomically(cache / f"venv-x86-{requirements_key(pins)}", build) / "bin" / "python"


def installed_versions(python_cmd: list[str], env: dict, cwd: Path) -> dict:
    """``{distribution: version}`` and numpy's detected CPU features, as the target's own
    interpreter sees them: proof of what actually ran there."""
    probe = (
        "import json, platform, importlib.metadata as m\n"
        "try:\n    import numpy._core._multiarray_umath as u\n"
        "except ImportError:\n    import numpy.core._multiarray_umath as u\n"
        "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
        " 'packages': {d.metadata['Name'].lower(): d.version for d in m.distributions()},"
        " 'numpy_cpu_features': sorted(k for k, v in u.__cpu_features__.items() if v)}))"
    )
    # cwd: ``-c`` puts it on sys.path, and the repository's harness.egg-info is no package
    # of the bundle's.
    done = subprocess.run(
        [*python_cmd, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if done.returncode:
        raise ToolchainError(f"probe exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- 3-4. runs


def run_predict(
    python_cmd: list[str], env: dict, bundle: Path, args: list[str]
) -> tuple[dict, str]:
    """Run the bundle's predict.py with ``args`` in the bundle folder; returns (wall
    seconds and output tail, stdout), or raises RunFailed with the output tail."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [*python_cmd, "predict.py", *args],
            env=env,
            cwd=bundle,
            capture_output=True,
            text=True,
            timeout=SETTINGS["run_timeout_s"],
        )
    except subprocess.TimeoutExpired:
        raise RunFailed(f"predict.py {args[0]}: over {SETTINGS['run_timeout_s']} s") from None
    seconds = round(time.perf_counter() - start, 2)
    # The JSON lines of an image run are compared, not kept; the rest is kept as evidence.
    said = "\n".join(
        line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("{")
    ).replace(str(Path.home()), "~")  # no absolute paths
    if done.returncode:
        raise RunFailed(
            f"predict.py {args[0]} exited {done.returncode} after {seconds} s: {said[-1500:]}"
        )
    return {"verification_wall_s": seconds, "output_tail": said[-300:]}, done.stdout


def load_test_set(
    cache: Path, archive: Path | None, limit: int | None
) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """The CIFAR-10 test set as ``x`` uint8 (N, 32, 32, 3) and ``y`` int64 (N,), saved once
    as ``cache/cifar10-test-<sha>.npz`` (the first ``limit`` images when given)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from harness.data import cifar as data  # the one reader of the archive; needs numpy only

    ds = data.load(Path(archive).expanduser() if archive else None)
    x, y = ds.x_test[:limit], ds.y_test[:limit].astype(np.int64)
    path = cache / f"cifar10-test-{ds.sha256[:12]}{f'-first{limit}' if limit else ''}.npz"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, x=x, y=y)
        tmp.replace(path)
    return (
        path,
        x,
        y,
        {"images": int(len(y)), "archive_sha256": ds.sha256, "source": ds.record["source"]},
    )


def write_images(folder: Path, x: np.ndarray, count: int) -> list[Path]:
    """The first ``count`` test images as PNG files for predict.py's image path (Pillow),
    which the selftest (an .npz) leaves out; the last is 64 x 64 so the resize runs too."""
    from PIL import Image

    files = []
    for i in range(min(count, len(x))):
        image = Image.fromarray(x[i])
        if i == count - 1:
            image = image.resize((64, 64), Image.Resampling.NEAREST)
        files.append(folder / f"test{i:05d}.png")
        image.save(files[-1])
    return files


def read_json_lines(text: str, classes: int) -> np.ndarray:
    """predict.py ``--json --top <classes>`` output as probabilities (N, classes) in class
    order; raises ValueError on output of another form."""
    try:
        rows = [json.loads(line)["top"] for line in text.splitlines() if line.startswith("{")]
        probs = np.zeros((len(rows), classes))
        for out, top in zip(probs, rows):
            for entry in top:
                out[entry["index"]] = entry["probability"]
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"predict.py --json printed something else: {e!r}") from None
    return probs


def run_target(
    name: str,
    python_cmd: list,
    env: dict,
    bundle: Path,
    npz: Path,
    images: list[Path],
    classes: int,
    work: Path,
) -> tuple[dict, dict]:
    """Selftest, image files and test set on one target; returns its record and the
    probabilities of the image files and of the test set (left out where a run failed)."""
    record, probs = {}, {}
    try:
        record["selftest"] = {
            "passed": True,
            **run_predict(python_cmd, env, bundle, ["--selftest"])[0],
        }
    except RunFailed as e:
        record["selftest"] = {"passed": False, "error": str(e)}
    try:
        record["images"], out = run_predict(
            python_cmd, env, bundle, ["--json", "--top", str(classes), *map(str, images)]
        )
        probs["images"] = read_json_lines(out, classes)
    except (RunFailed, ValueError) as e:
        record["images"] = {"passed": False, "error": str(e)}
    dump = work / f"{name}.npy"
    try:
        record["test_set"] = run_predict(
            python_cmd, env, bundle, ["--npz", str(npz), "--dump-probs", str(dump)]
        )[0]
        probs["test_set"] = np.load(dump)
    except (RunFailed, OSError, ValueError) as e:
        record["test_set"] = {"passed": False, "error": str(e)}
    print(
        f"  {name:11s} "
        + "  ".join(
            f"{part} {'FAILED' if 'error' in record[part] else 'ran'}"
            for part in ("selftest", "images", "test_set")
        ),
        flush=True,
    )
    return record, probs


def compare_target(record: dict, probs: dict, reference: dict, labels: np.ndarray) -> None:
    """Add the figures against x86 to an arm64 ``record`` in place."""
    for part, truth in (("images", None), ("test_set", labels)):
        if "error" in record[part]:
            continue
        if part not in reference:
            record[part].update(passed=False, error="no x86 run to compare with")
            continue
        try:
            record[part].update(
                compare_probs(
                    probs[part],
                    reference[part],
                    truth[: len(probs[part])] if truth is not None else None,
                )
            )
        except ValueError as e:
            record[part].update(passed=False, error=str(e))


# --------------------------------------------------------------------------- 5. one bundle


def describe_bundle(bundle: Path, pins: dict) -> dict:
    """What the record says about the bundle; fields of manifest.json are read when there."""
    raw = (bundle / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    model, runtime = manifest.get("model", {}), manifest.get("runtime", {})
    where = bundle.resolve()  # recorded relative to the working folder, never absolute
    path = os.path.relpath(where) if where.is_relative_to(Path.cwd().resolve()) else bundle.name
    return {
        "name": bundle.name,
        "path": path,
        "manifest_sha256": sha256_bytes(raw),
        "model": model.get("file"),
        "precision": model.get("precision"),
        "runtime": runtime.get("name"),
        "requirements": pins,
        "manifest_test_accuracy": manifest.get("measured", {}).get("test", {}).get("accuracy"),
    }


def record_path(bundle: Path, limit: int | None) -> Path:
    """Where the record of ``bundle`` goes; a quick check never overwrites a full one."""
    return bundle.parent / f"{bundle.name}.arm64{f'-first{limit}' if limit else ''}.json"


def verify_bundle(
    bundle: Path,
    cpus: list[str],
    cache: Path,
    emulator: Emulator,
    test_set: tuple,
    x86_python: str | None,
    out: Path,
) -> dict:
    """Every stage for one bundle; returns the record, also written to ``out``."""
    npz, x, labels, data_record = test_set
    requirements = bundle / "requirements.txt"
    pins = read_requirements(requirements.read_text())
    classes = len(json.loads((bundle / "manifest.json").read_text()).get("classes", range(10)))
    site = build_arm64_site(cache, requirements, pins)
    x86_cmd = [
        "nice",
        "-n",
        str(SETTINGS["nice"]),
        x86_python or str(build_x86_venv(cache, requirements, pins)),
    ]
    record = {
        "kind": "deploy-arm64-verification",
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": describe_bundle(bundle, pins),
        "data": data_record,
        "targets": {
            "min_argmax_agreement": SETTINGS["min_agreement"],
            "max_accuracy_delta_points": 100 * SETTINGS["max_accuracy_delta"],
        },
        "emulator": {
            "qemu": emulator.version,
            "mode": "qemu-user (TCG), -L per-CPU rootfs view",
            "userland": f"Debian {SETTINGS['debian_suite']} arm64, python3.11 "
            f"{emulator.packages.get('python3.11', '?')}",
        },
        "note": NOT_A_LATENCY,
        # Emulated: a check of correctness only. harness compare never puts it on a front.
        "emulated": True,
        "use": "correctness only",
    }
    with tempfile.TemporaryDirectory(dir=cache, prefix="work-") as tmp:
        work = Path(tmp)
        images = write_images(work, x, SETTINGS["images"])
        print(f"[{bundle.name}] x86-64 ({host_cpu()})", flush=True)
        x86, reference = run_target(
            "x86-64", x86_cmd, clean_env(), bundle, npz, images, classes, work
        )
        if "test_set" in reference:
            x86["test_set"]["accuracy"] = float((reference["test_set"].argmax(1) == labels).mean())
        record["x86_64"] = {
            "cpu": host_cpu(),
            **installed_versions(x86_cmd, clean_env(), work),
            **x86,
        }
        record["arm64"] = {}
        for cpu in cpus:
            cmd, env = emulated(emulator, cache, cpu, site)
            print(f"[{bundle.name}] arm64 {cpu} ({CPUS[cpu]['board']})", flush=True)
            target = {
                "board": CPUS[cpu]["board"],
                "qemu_cpu": cpu,
                "cpuinfo_part": CPUS[cpu]["part"],
            }
            try:
                target.update(installed_versions(cmd, env, work))
            except ToolchainError as e:
                target["probe_error"] = str(e)
            runs, probs = run_target(cpu, cmd, env, bundle, npz, images, classes, work)
            compare_target(runs, probs, reference, labels)
            record["arm64"][cpu] = {**target, **runs}
    record["passed"] = "error" not in record["x86_64"]["selftest"] and all(
        "error" not in t["selftest"] and t["images"].get("passed") and t["test_set"].get("passed")
        for t in record["arm64"].values()
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    return record


def host_cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def summarize(record: dict) -> str:
    """A few lines per bundle for the terminal; the record holds everything."""
    bundle, x86 = record["bundle"], record["x86_64"]
    lines = [
        f"{bundle['name']} ({bundle['runtime']} {bundle['precision']}): x86-64 test "
        f"accuracy {x86['test_set'].get('accuracy', float('nan')):.4f}, selftest "
        f"{'ok' if 'error' not in x86['selftest'] else 'FAILED'}"
    ]
    for cpu, t in record["arm64"].items():
        s, img = t["test_set"], t["images"]
        line = (
            f"  {cpu:10s} selftest {'ok' if 'error' not in t['selftest'] else 'FAILED'}  "
            f"images {'ok' if img.get('passed') else 'FAILED'}  "
        )
        if "argmax_agreement" in s:
            line += (
                f"agreement {100 * s['argmax_agreement']:.2f}% ({s['disagreements']} "
                f"differ)  max|dp| {s['max_abs_prob_diff']:.2e}  accuracy "
                f"{s['accuracy']:.4f} ({s['accuracy_delta_points']:+.2f} pt)  "
                f"{'PASS' if t['test_set']['passed'] else 'FAIL'}  "
                f"[emulated run {s['verification_wall_s']} s]"
            )
        else:
            line += f"test set FAILED: {s.get('error', '?')[:200]}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders (with predict.py)")
    parser.add_argument(
        "--archive",
        type=Path,
        help="cifar-10-python.tar.gz (default: the harness cache or $HARNESS_ARCHIVE)",
    )
    parser.add_argument(
        "--cpu",
        action="append",
        choices=sorted(CPUS),
        help="emulated CPU, repeatable (default: all)",
    )
    parser.add_argument("--limit", type=int, help="only the first N test images (quick check)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(SETTINGS["cache"]).expanduser(),
        help=f"folder for rootfs, wheels and venvs (default {SETTINGS['cache']})",
    )
    parser.add_argument(
        "--x86-python",
        help="run the x86 side with this interpreter instead "
        "of a venv built from the bundle's requirements.txt",
    )
    args = parser.parse_args(argv)
    bundles = [
        b
        for b in args.bundles
        if all((b / f).is_file() for f in ("predict.py", "requirements.txt", "manifest.json"))
    ]
    for bundle in sorted(set(args.bundles) - set(bundles)):  # e.g. an mcu bundle in a glob
        print(
            f"[{bundle.name}] skipped: not a linux bundle (needs predict.py, "
            f"requirements.txt and manifest.json)",
            file=sys.stderr,
        )
    if not bundles:
        parser.error("no linux bundle given")
    args.cache.mkdir(parents=True, exist_ok=True)
    try:
        emulator = prepare_emulator(args.cache)
        test_set = load_test_set(args.cache, args.archive, args.limit)
    except ToolchainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    passed = True
    for bundle in bundles:
        start, out = time.perf_counter(), record_path(bundle.resolve(), args.limit)
        try:
            record = verify_bundle(
                bundle.resolve(),
                args.cpu or sorted(CPUS),
                args.cache,
                emulator,
                test_set,
                args.x86_python,
                out,
            )
        except (ToolchainError, ValueError) as e:
            print(f"[{bundle.name}] error: {e}", file=sys.stderr)
            passed = False
            continue
        print(summarize(record))
        print(
            f"[{bundle.name}] {'PASSED' if record['passed'] else 'FAILED'}; record {out} "
            f"({time.perf_counter() - start:.0f} s for this bundle)",
            flush=True,
        )
        passed = passed and record["passed"]
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
