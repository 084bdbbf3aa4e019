"""GPU hosts (harness.core.hardware): the device is chosen before the backend starts, refused in
one line when absent, pinned per tuning worker, and recorded with every run and trial.

No GPU is needed: the GPU listings are simulated (``gpu_ids=`` before the backend,
``gpus=`` after it); the training tests run on this machine's CPU in a few seconds.
"""

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from harness.core import hardware, schemas
from harness.core.config import resolve
from harness.core.hardware import Device, DeviceError
from harness.core.records import RunDir
from harness.data import cifar as data
from harness.report import collect, table

REPO = Path(__file__).resolve().parents[1]
TWO_GPUS = ["NVIDIA H200", "NVIDIA H200"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """prepare() writes os.environ, select() remembers its listing: both undone after."""
    saved = dict(os.environ)
    for name in (
        "CUDA_VISIBLE_DEVICES",
        "JAX_PLATFORMS",
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "TF_FORCE_GPU_ALLOW_GROWTH",
        hardware.DEVICE_ENV,
        hardware.GPU_ENV,
        "KERASTUNER_TUNER_ID",
    ):
        os.environ.pop(name, None)
    monkeypatch.setattr(hardware, "_SELECTED", {})
    yield
    os.environ.clear()
    os.environ.update(saved)


def gpus_seen(*names):
    return lambda backend: list(names)


# --------------------------------------------------------------------------- before the backend


def test_cpu_hides_the_gpus_before_the_backend_starts():
    env = {}
    assert hardware.prepare("cpu", environ=env, gpu_ids=lambda e: ["0", "1"]) is None
    assert env == {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "HARNESS_DEVICE": "cpu"}


def test_gpu_processes_share_memory_unless_the_user_chose():
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
    hardware.prepare("auto", environ=env, gpu_ids=lambda e: ["0"])
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"  # the user's own setting stays
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "CUDA_VISIBLE_DEVICES" not in env  # one process, not a worker: every GPU
    env = {}
    hardware.prepare("gpu", environ=env, gpu_ids=lambda e: [])
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" and env["HARNESS_DEVICE"] == "gpu"


@pytest.mark.parametrize(
    "tuner_id,gpus,pinned",
    [
        ("tuner0", 2, "0"),
        ("tuner1", 2, "1"),
        ("tuner2", 2, "0"),
        ("tuner7", 4, "3"),
        ("worker_5", 3, "2"),
        ("tuner3", 1, "0"),
        ("chief", 2, None),  # serves the oracle, trains nothing
        ("worker-3fa0b1c2", 2, None),  # --tuner-id auto: no index
        (None, 2, None),  # not a worker
        ("tuner1", 0, None),  # no GPU to pin to
    ],
)
def test_worker_takes_its_index_modulo_the_visible_gpus(tuner_id, gpus, pinned):
    env = {}
    note = hardware.prepare(
        "auto", tuner_id=tuner_id, environ=env, gpu_ids=lambda e: [str(i) for i in range(gpus)]
    )
    assert env.get("CUDA_VISIBLE_DEVICES") == pinned
    if pinned is not None:
        assert (
            note == f"worker {tuner_id}: GPU {pinned} ({hardware.worker_index(tuner_id)} "
            f"modulo {gpus} visible GPUs)"
        )


def test_worker_pinning_follows_an_existing_cuda_visible_devices():
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    hardware.prepare("auto", tuner_id="tuner4", environ=env)  # the real visible_gpu_ids
    assert env["CUDA_VISIBLE_DEVICES"] == "5"  # index 4 modulo 3 -> the second listed GPU


def test_an_unindexed_worker_on_several_gpus_is_told():
    note = hardware.prepare(
        "auto", tuner_id="worker-ab12cd34", environ={}, gpu_ids=lambda e: ["0", "1"]
    )
    assert "sees every GPU" in note and "--gpu N" in note


def test_explicit_gpu_pins_and_requires_a_gpu():
    env = {}
    assert (
        hardware.prepare(
            "auto", gpu=1, tuner_id="tuner0", environ=env, gpu_ids=lambda e: ["0", "1", "2"]
        )
        == "pinned to GPU 1 (--gpu 1)"
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["HARNESS_DEVICE"] == "gpu"
    with pytest.raises(DeviceError, match=r"--gpu 2: only 2 GPU\(s\) visible \(0-1\)"):
        hardware.prepare("auto", gpu=2, environ={}, gpu_ids=lambda e: ["0", "1"])
    with pytest.raises(DeviceError, match="contradict"):
        hardware.prepare("cpu", gpu=0, environ={})


def test_visible_gpu_ids_from_the_environment():
    assert hardware.visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "0, 2"}) == ["0", "2"]
    assert hardware.visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []


# --------------------------------------------------------------------------- once the backend runs


def test_auto_prints_the_device_it_found(capsys):
    device = hardware.select("jax", "auto", gpus=gpus_seen(*TWO_GPUS))
    assert device == Device("jax", "gpu", "NVIDIA H200", 2)
    assert capsys.readouterr().err == "device: jax gpu: 2x NVIDIA H200\n"
    device = hardware.select("tensorflow", "auto", gpus=gpus_seen())
    assert (device.kind, device.count, device.name) == ("cpu", 1, hardware.cpu_name())
    assert capsys.readouterr().err.startswith("device: tensorflow cpu: ")


def test_gpu_is_refused_in_one_line_when_none_is_visible():
    with pytest.raises(DeviceError) as e:
        hardware.select("jax", "gpu", gpus=gpus_seen())
    assert str(e.value).startswith("--device gpu: jax sees no GPU (") and "\n" not in str(e.value)
    assert hardware.select("jax", "gpu", gpus=gpus_seen("NVIDIA L4")).kind == "gpu"


def test_cpu_is_refused_where_the_backend_already_sees_gpus():
    with pytest.raises(DeviceError, match="started before the GPUs could be hidden"):
        hardware.select("jax", "cpu", gpus=gpus_seen("NVIDIA L4"))


def test_the_request_comes_from_the_environment():
    os.environ[hardware.DEVICE_ENV] = "gpu"
    with pytest.raises(DeviceError):
        hardware.select("tensorflow", gpus=gpus_seen())
    os.environ[hardware.DEVICE_ENV] = "tpu"
    with pytest.raises(DeviceError, match="must be one of auto, cpu, gpu"):
        hardware.select("tensorflow", gpus=gpus_seen())


def test_this_machine_lists_no_gpu_and_trains_on_its_cpu(capsys):
    import keras

    backend = keras.backend.backend()
    device = hardware.select(backend)
    assert device.kind == "cpu" and device.backend == backend
    hardware.select(backend)
    assert capsys.readouterr().err.count("device:") == 1  # listed and printed once


# --------------------------------------------------------------------------- the CLI option


def _command(listing):
    @click.command()
    @hardware.device_option
    @click.option("--tuner-id")
    def fake(tuner_id):
        """Stands for train: prepares nothing more, then selects as train() does."""
        click.echo(hardware.select("jax", gpus=listing).label)
        click.echo(f"visible={os.environ.get('CUDA_VISIBLE_DEVICES')}")

    return fake


def test_the_option_refuses_gpu_with_exit_1_and_one_line():
    result = CliRunner().invoke(_command(gpus_seen()), ["--device", "gpu"])
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: --device gpu: jax sees no GPU \([^\n]*\)\n", result.output)


def test_the_option_reads_its_environment_and_validates():
    result = CliRunner().invoke(
        _command(gpus_seen("NVIDIA A100")), [], env={hardware.DEVICE_ENV: "gpu"}
    )
    assert result.exit_code == 0 and "jax gpu: NVIDIA A100" in result.output
    result = CliRunner().invoke(_command(gpus_seen()), ["--device", "tpu"])
    assert result.exit_code == 2 and "Invalid value for '--device'" in result.output
    result = CliRunner().invoke(_command(gpus_seen()), ["--gpu", "-1"])
    assert result.exit_code == 2


def test_the_option_pins_an_explicit_gpu():
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"  # what visible_gpu_ids reads first
    result = CliRunner().invoke(_command(gpus_seen("NVIDIA A100")), ["--gpu", "1"])
    assert result.exit_code == 0, result.output
    assert "visible=1" in result.output and "pinned to GPU 1" in result.output


@pytest.mark.parametrize("command", ["train", "tune", "sweep-lr"])
def test_the_commands_take_device_and_gpu(command):
    from harness.cli import main

    params = {p.name: p for p in main.commands[command].params}
    assert params["device"].envvar == hardware.DEVICE_ENV
    assert list(params["device"].type.choices) == list(hardware.DEVICES)
    assert params["gpu"].envvar == hardware.GPU_ENV


def test_train_refuses_gpu_on_this_machine(tmp_path, archive):
    from harness.cli import main

    result = CliRunner().invoke(
        main,
        [
            "--archive",
            str(archive),
            "--results",
            str(tmp_path),
            "train",
            "--preset",
            "selu",
            "--layers",
            "1",
            "--units",
            "8",
            "--epochs",
            "1",
            "--device",
            "gpu",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "sees no GPU" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # refused before any file was written


# --------------------------------------------------------------------------- the records


def tiny_run(results, ds, **overrides):
    from harness.train.fit import train

    cfg = resolve(
        "selu",
        overrides=dict(batch_size=64, backend=None, layers=1, units=8, epochs=1, **overrides),
    )
    train(cfg, ds, results, verbose=0)
    return RunDir.named(results, cfg.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, archive):
    import keras

    results = tmp_path_factory.mktemp("results")
    hardware._SELECTED.clear()
    run = tiny_run(results, data.load(archive, home=results / "home"), name="dev")
    return results, run, keras.backend.backend()


def test_metrics_record_the_device(trained):
    results, run, backend = trained
    m = run.read_metrics()
    assert m["backend"] == backend
    assert m["device"] == {
        "backend": backend,
        "kind": "cpu",
        "name": hardware.cpu_name(),
        "count": 1,
    }
    schemas.check_run(m)


def test_records_without_device_still_read_and_bad_ones_do_not(trained):
    _, run, _ = trained
    m = run.read_metrics()
    old = {k: v for k, v in m.items() if k not in ("device", "backend")}
    assert schemas.check_run(old) is old  # records from before issue 21
    with pytest.raises(schemas.RecordError, match="field 'device.count' is -1"):
        schemas.check_run({**m, "device": {**m["device"], "count": -1}})


def test_compare_shows_the_device_column(trained):
    results, run, backend = trained
    rows = table.mark_pareto(table.build_rows(collect.collect_records([results])))
    assert [r["device"] for r in rows] == [f"{backend} cpu: {hardware.cpu_name()}"]
    text = table.format_rows(rows, "table", table.parse_columns("model,device"))
    assert text.splitlines()[0].split() == ["model", "device"]
    assert f"{backend} cpu:" in text.splitlines()[1]
    rows[0]["device"] = None  # a run recorded before issue 21
    assert table.format_rows(rows, "csv", ("model", "device")).splitlines()[1].startswith("dev,,")


def test_tuning_trials_record_their_device(tmp_path, archive):
    import keras

    from harness.search.space import SearchSpace
    from harness.search.tune import tune

    base = resolve("selu", overrides={"epochs": 1, "batch_size": 64, "backend": None})
    tune(
        base,
        data.load(archive),
        tmp_path,
        "t",
        SearchSpace(layers=(1, 1), units=(8, 8)),
        "random",
        max_trials=1,
        verbose=0,
    )
    root = tmp_path / "tuning" / "t"
    backend = keras.backend.backend()
    expected = {"backend": backend, "kind": "cpu", "name": hardware.cpu_name(), "count": 1}
    [meta] = [json.loads(p.read_text()) for p in (root / "trial_meta").iterdir()]
    assert meta["device"] == expected
    [row] = json.loads((root / "trials.json").read_text())
    assert row["device"] == f"{backend} cpu: {hardware.cpu_name()}"
    assert json.loads((root / "best" / "metrics.json").read_text())["device"] == expected


# --------------------------------------------------------------------------- the GPU image


def _pick_extras(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CUDA_VERSION", "JAX_CUDA")}
    return subprocess.run(
        ["sh", str(REPO / "docker" / "pick-extras.sh")],
        env={**clean, **env},
        capture_output=True,
        text=True,
    )


def test_the_cuda_extra_brings_jax_cuda_plugin_at_jax_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [jax_pin] = [d for d in project["dependencies"] if d.startswith("jax")]
    [cuda] = project["optional-dependencies"]["cuda"]
    # jax's own extra pins jaxlib and the plugin to exactly the jax installed
    assert cuda == jax_pin.replace("jax", "jax[cuda12]", 1)


def test_the_gpu_build_installs_the_cuda_extra():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu" in dockerfile
    assert re.search(r"extras=\$\(.*sh docker/pick-extras\.sh\)", dockerfile)
    assert 'pip install -e ".${extras:+[$extras]}"' in dockerfile
    assert "!docker/pick-extras.sh" in (REPO / ".dockerignore").read_text().splitlines()
    # The default base is built on nvidia/cuda, which sets CUDA_VERSION (12.x for TF 2.21).
    assert _pick_extras(CUDA_VERSION="12.5.1").stdout == "cuda\n"
    assert _pick_extras().stdout == ""  # a CPU base: as before
    assert _pick_extras(JAX_CUDA="none", CUDA_VERSION="12.5.1").stdout == ""
    assert _pick_extras(JAX_CUDA="cuda").stdout == "cuda\n"
    wrong = _pick_extras(CUDA_VERSION="13.0.1")
    assert wrong.returncode == 1 and "CUDA 13" in wrong.stderr  # never a CPU-only JAX silently


def test_compose_gives_each_gpu_worker_its_own_gpu():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    per_gpu = {name: s for name, s in services.items() if name.startswith("tune-gpu")}
    ids = [
        s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for s in per_gpu.values()
    ]
    assert len(per_gpu) >= 2 and sorted(ids) == [[str(i)] for i in range(len(per_gpu))]
    for name, service in services.items():
        gpu = "deploy" in service
        device = service.get("environment", {}).get(hardware.DEVICE_ENV)
        assert device == ("gpu" if gpu else "cpu" if name.endswith("-cpu") else None), name
        assert service.get("environment", {}).get("HARNESS_ARCHIVE") is not None, name
