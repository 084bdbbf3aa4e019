"""An int8 .tflite file compiled for an Arm Ethos-U NPU with Arm's Vela, and what Vela says.

Vela (``pip install -e ".[npu]"``: ``ethos-u-vela``) rewrites the operators the NPU runs into
one Ethos-U custom operator and reports, for its default system configuration of the chosen
accelerator, the NPU cycles of one inference, inferences per second at the NPU's clock, the
SRAM and flash the compiled model uses, and the operators left to the CPU. These are Vela's
performance estimates (its cycle model), not a measurement on silicon.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# --target and --npu-macs: the configurations Vela 5.2 knows for each NPU.
NPU_MACS = {"ethos-u55": (32, 64, 128, 256), "ethos-u65": (256, 512)}


class NpuError(RuntimeError):
    """Vela is missing or could not compile the file: one line."""


class NpuChoice(ValueError):
    """An NPU or MAC count Vela does not know: one line."""


def accelerator(target: str, macs: int | None) -> str:
    """Vela's --accelerator-config for ``target`` and ``macs`` (its largest by default)."""
    if target not in NPU_MACS:
        raise NpuChoice(f"unknown NPU {target!r}; choose from {', '.join(NPU_MACS)}")
    macs = macs or NPU_MACS[target][-1 if target == "ethos-u65" else 2]
    if macs not in NPU_MACS[target]:
        raise NpuChoice(
            f"{target} comes with {', '.join(map(str, NPU_MACS[target]))} MACs per cycle"
        )
    return f"{target}-{macs}"


def compile_for_npu(model: Path, out: Path, target: str, macs: int | None = None) -> dict:
    """Compile ``model`` into ``out`` (the Vela .tflite); returns Vela's figures."""
    vela = shutil.which("vela", path=str(Path(sys.executable).parent)) or shutil.which("vela")
    if vela is None:
        raise NpuError('Vela is not installed: pip install -e ".[npu]" (ethos-u-vela)')
    config = accelerator(target, macs)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                vela,
                str(model),
                "--accelerator-config",
                config,
                "--output-dir",
                tmp,
                "--show-cpu-operations",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:
            last = (done.stderr or done.stdout).strip().splitlines() or ["no message"]
            raise NpuError(f"Vela could not compile {model.name} for {config}: {last[-1]}")
        compiled = next(Path(tmp).glob("*_vela.tflite"))
        (summary,) = Path(tmp).glob("*_summary_*.csv")
        with open(summary, newline="") as f:
            row = next(csv.DictReader(f))
        shutil.copyfile(compiled, out)
    said = done.stdout + done.stderr  # "Warning (supported operators) operator: ELU, ofm: ..."
    cpu = sorted(set(re.findall(r"\(supported operators\) operator: (\w+)", said)))
    counted = re.search(r"CPU operators = (\d+).*?NPU operators = (\d+)", done.stdout, re.S)
    clock = float(row["core_clock"])
    return {
        "kind": "estimate",
        "tool": f"Vela {_vela_version(vela)} (ethos-u-vela), its cycle model",
        "accelerator": config,
        "system_config": row["system_config"],
        "memory_mode": row["memory_mode"],
        "clock_mhz": clock / 1e6,
        "npu_cycles": int(float(row["cycles_total"])),
        "inference_ms": float(row["inference_time"]) * 1e3,
        "inferences_per_second": float(row["inferences_per_second"]),
        "sram_kib": float(row["sram_memory_used"]),
        "flash_kib": float(row["off_chip_flash_memory_used"])
        + float(row["on_chip_flash_memory_used"]),
        "macs": int(float(row["nn_macs"])),
        "cpu_operators": int(counted.group(1)) if counted else None,
        "npu_operators": int(counted.group(2)) if counted else None,
        "cpu_operator_types": cpu,
        "file": out.name,
    }


def _vela_version(vela: str) -> str:
    done = subprocess.run([vela, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def format_npu(figures: dict) -> str:
    cpu = figures["cpu_operators"]
    left = "none" if not cpu else f"{cpu} ({', '.join(figures['cpu_operator_types']) or '?'})"
    return (
        f"{figures['accelerator']} @ {figures['clock_mhz']:g} MHz (Vela's estimate): "
        f"{figures['npu_cycles']:,} cycles, {figures['inference_ms']:.3f} ms, "
        f"{figures['inferences_per_second']:,.0f} inferences/s; SRAM "
        f"{figures['sram_kib']:.1f} KiB, flash {figures['flash_kib']:.1f} KiB"
        + (f", DRAM {figures['dram_kib']:.1f} KiB" if figures.get("dram_kib") else "")
        + "; operators "
        f"left to the CPU: {left}"
    )
