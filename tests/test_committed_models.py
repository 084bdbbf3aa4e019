"""The model files committed with the records (results/reference/runs/<run>/exports/*.tflite):
each is at most 1 MB and has the bytes its export record names (sha256), and every bench
record's row for that file names the same sha256, so a clone reproduces the claims with
`harness bench RUN` from the files themselves."""

import json
import subprocess
from pathlib import Path

from harness.edge.predict import sha256

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # bytes per committed model file


def committed_models() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / p for p in listed if p.endswith(".tflite") and "/exports/" in p]


def test_committed_models_match_their_records():
    models = committed_models()
    assert models, "no model file committed with the reference records"
    for path in models:
        record = json.loads(path.with_name(path.name + ".json").read_text())
        assert path.stat().st_size <= LIMIT, f"{path}: over 1 MB"
        assert record["size_bytes"] == path.stat().st_size, path
        assert record["sha256"] == sha256(path), f"{path}: not the file its record names"
        run = path.parent.parent.name
        for bench in (path.parents[3] / "bench").glob(f"{run}*.json"):
            rows = [r for r in json.loads(bench.read_text())["rows"] if r["file"] == path.name]
            for row in rows:
                if row["run"] == run and "sha256" in row:
                    assert row["sha256"] == record["sha256"], f"{bench}: {path.name}"


def test_every_exported_file_has_its_record_and_checksum():
    """A .tflite committed without its export record (or a record without a sha256) could
    not be checked; none is."""
    for path in committed_models():
        sidecar = path.with_name(path.name + ".json")
        assert sidecar.exists(), f"{path}: no export record beside it"
        assert len(json.loads(sidecar.read_text()).get("sha256") or "") == 64, sidecar
