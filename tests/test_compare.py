"""harness compare: the record formats (read and written), rows, the Pareto front, the
report files, the CLI.

Every record here is written by hand (no training): a run directory, a bench record and a
tuning summary shaped like the ones the other stages write.
"""

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.core import schemas
from harness.core.records import RunDir, write_record
from harness.report import collect, plots, table
from harness.report import compare as cmp

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def metrics(name: str, accuracy: float = 0.5, **extra) -> dict:
    return {
        "schema": 1,
        "run": name,
        "status": "completed",
        "config": {
            "arch": "batchnorm",
            "activation": "relu",
            "layers": 2,
            "units": 8,
            "preset": "bn-elu-fast",
            "l1": 0.0,
        },
        "params": {"total": 1234},
        "test": {"accuracy": accuracy, "loss": 1.5},
        **extra,
    }


def bench_row(run: str, runtime: str, precision: str, accuracy: float, p50: float) -> dict:
    return {
        "run": run,
        "runtime": runtime,
        "format": "tflite",
        "precision": precision,
        "file": f"model_{precision}.tflite",
        "params": 1234,
        "size_bytes": 5000,
        "sparsity": 0.0,
        "p50_us": p50,
        "p90_us": p50 * 1.2,
        "p99_us": p50 * 2,
        "throughput_ips": 1e5,
        "test": {"accuracy": accuracy, "loss": 1.5},
        "flagged": False,
        "calls": 100,
    }


def footprint(row: dict, macs: int, arena: int | None, note: str | None = None) -> dict:
    """A bench row with the footprint fields bench writes since issue 19."""
    row = {**row, "macs": macs, "flash_bytes": row["size_bytes"], "arena_bytes": arena}
    return {**row, "arena_note": note} if note else row


def bench(run: str, rows: list[dict], cpu: str = "Test CPU") -> dict:
    return {
        "benchmark": "bench",
        "run": run,
        "created": "2026-11-26T20:16:33+0000",
        "machine": {"cpu": cpu, "cores": 2},
        "data": {},
        "threads": {},
        "calls": 100,
        "warmup": 10,
        "rows": rows,
    }


def summary(name: str = "search") -> dict:
    return {
        "name": name,
        "trials": 3,
        "completed": 3,
        "search_seconds": 12.5,
        "best_trial": "02",
        "best_val_accuracy": 0.52,
        "best_test_accuracy": 0.51,
        "best_hyperparameters": {"n_hidden": 3, "n_neurons": 64, "learning_rate": 1e-4},
        "best_run": "results/tuning/search/best",
    }


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def write_run(results: Path, name: str, accuracy: float = 0.5, epochs: int = 4, **extra) -> Path:
    run = results / "runs" / name
    write_json(run / "metrics.json", metrics(name, accuracy, **extra))
    lines = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    lines += [f"{e},0.5,1.0,{0.2 + 0.05 * e + accuracy / 10:.4f},1.0" for e in range(epochs)]
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def results(tmp_path) -> Path:
    """Two benchmarked runs, one without a bench record, and a tuning search with its best."""
    root = tmp_path / "results"
    write_run(root, "fast", 0.45)
    write_run(root, "big", 0.55)
    write_run(root, "plain", 0.50)
    write_json(
        root / "bench" / "fast.json",
        bench(
            "fast",
            [
                bench_row("fast", "litert", "dynamic", 0.45, 12.0),
                bench_row("fast", "onnxruntime", "float32", 0.45, 40.0),
            ],
        ),
    )
    write_json(
        root / "bench" / "big.json",
        bench(
            "big",
            [
                bench_row("big", "litert", "dynamic", 0.55, 20.0),
                bench_row("big", "litert", "int8", 0.54, 45.0),
                bench_row("big", "keras-call", "float32", 0.55, 9000.0),
            ],
        ),
    )
    best = root / "tuning" / "search" / "best"
    write_json(
        best / "metrics.json",
        metrics("search/best", 0.51, tuning={"name": "search", "trial_id": "02"}),
    )
    write_json(root / "tuning" / "search" / "summary.json", summary())
    return root


# --------------------------------------------------------------------------- schema


def test_valid_records_pass_validation():
    assert schemas.check_run(metrics("a"))["run"] == "a"
    assert schemas.check_bench(bench("a", [bench_row("a", "litert", "int8", 0.5, 10.0)]))
    # The footprint fields are optional (older records lack them); the arena may be null.
    assert schemas.check_bench(
        bench(
            "a",
            [
                footprint(bench_row("a", "litert", "int8", 0.5, 10.0), 1000, 2048),
                footprint(
                    bench_row("a", "litert", "int8", 0.5, 10.0), 1000, None, "TFLM is missing"
                ),
            ],
        )
    )
    assert schemas.check_tuning(summary())["name"] == "search"
    # An unfinished run needs only its name and status: it is noted, not compared.
    assert schemas.check_run({"schema": 1, "run": "a", "status": "running"})


def _without(record: dict, dotted: str) -> dict:
    record = copy.deepcopy(record)
    *parents, last = dotted.split(".")
    target = record
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    del target[last]
    return record


def _with(record: dict, dotted: str, value) -> dict:
    record = copy.deepcopy(record)
    *parents, last = dotted.split(".")
    target = record
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[last] = value
    return record


GOOD_BENCH = bench("a", [bench_row("a", "litert", "int8", 0.5, 10.0)])


@pytest.mark.parametrize(
    "validate, record, message",
    [
        (
            schemas.check_run,
            _without(metrics("a"), "test.accuracy"),
            "missing field 'test.accuracy'",
        ),
        (schemas.check_run, _without(metrics("a"), "config"), "missing field 'config.arch'"),
        (
            schemas.check_run,
            _with(metrics("a"), "test.accuracy", 1.5),
            "field 'test.accuracy' is 1.5, expected a number in [0, 1]",
        ),
        (
            schemas.check_run,
            _with(metrics("a"), "config.layers", "5"),
            "field 'config.layers' is \"5\", expected an integer",
        ),
        (
            schemas.check_run,
            _with(metrics("a"), "params.total", True),
            "field 'params.total' is true, expected an integer >= 0",
        ),
        (
            schemas.check_run,
            _with(metrics("a"), "status", "done"),
            "field 'status' is 'done', expected running, completed or failed",
        ),
        (
            schemas.check_run,
            _with(metrics("a"), "schema", 99),
            "schema 99 is newer than this harness reads (1)",
        ),
        (
            schemas.check_run,
            _with(metrics("a"), "sparsity", -0.1),
            "field 'sparsity' is -0.1, expected a number in [0, 1]",
        ),
        (
            schemas.check_bench,
            _without(GOOD_BENCH, "rows.0.p50_us"),
            "missing field 'rows[0].p50_us'",
        ),
        (
            schemas.check_bench,
            _with(GOOD_BENCH, "rows.0.p99_us", 0),
            "field 'rows[0].p99_us' is 0, expected a positive number",
        ),
        (
            schemas.check_bench,
            _with(GOOD_BENCH, "rows.0.run", "b"),
            "field 'rows[0].run' is 'b', expected the record's run 'a'",
        ),
        (schemas.check_bench, _with(GOOD_BENCH, "rows", []), "field 'rows' is empty"),
        (schemas.check_bench, _without(GOOD_BENCH, "machine"), "missing field 'machine'"),
        (
            schemas.check_bench,
            _with(GOOD_BENCH, "rows.0.arena_bytes", -1),
            "field 'rows[0].arena_bytes' is -1, expected an integer >= 0 or null",
        ),
        (
            schemas.check_bench,
            _with(GOOD_BENCH, "rows.0.macs", None),
            "field 'rows[0].macs' is null, expected an integer >= 0",
        ),
        (
            schemas.check_tuning,
            _without(summary(), "best_test_accuracy"),
            "missing field 'best_test_accuracy'",
        ),
    ],
)
def test_missing_and_bad_fields_are_named(validate, record, message):
    with pytest.raises(schemas.RecordError) as e:
        validate(record)
    assert message in str(e.value)


def test_every_problem_is_reported_not_just_the_first():
    record = _without(_without(metrics("a"), "test"), "params")
    with pytest.raises(schemas.RecordError) as e:
        schemas.check_run(record)
    assert "'params.total'" in str(e.value) and "'test.accuracy'" in str(e.value)


def test_writers_refuse_a_record_that_breaks_its_format(tmp_path):
    path = tmp_path / "bench" / "a.json"
    bad = _with(GOOD_BENCH, "rows.0.p50_us", -1.0)
    with pytest.raises(
        schemas.RecordError,
        match=r"not a valid bench record: field "
        r"'rows\[0\].p50_us' is -1.0",
    ):
        write_record("bench", path, bad)
    assert not path.exists() and not list(tmp_path.rglob("*.tmp"))
    write_record("bench", path, GOOD_BENCH)
    assert json.loads(path.read_text()) == GOOD_BENCH
    with pytest.raises(schemas.RecordError, match="missing field 'best_run'"):
        write_record("tuning", tmp_path / "summary.json", _without(summary(), "best_run"))
    assert not (tmp_path / "summary.json").exists()


def test_run_metrics_are_checked_by_status_when_written(tmp_path):
    run = RunDir(tmp_path / "runs" / "a")
    run.write_metrics({"run": "a", "status": "running"})  # partial numbers are fine then
    assert json.loads(run.metrics.read_text())["schema"] == schemas.METRICS_SCHEMA_VERSION
    finished = {k: v for k, v in metrics("a").items() if k != "schema"}
    with pytest.raises(schemas.RecordError, match="missing field 'test.accuracy'"):
        run.write_metrics(_without(finished, "test.accuracy"))
    assert json.loads(run.metrics.read_text())["status"] == "running"  # left as it was
    run.write_metrics(finished)
    assert json.loads(run.metrics.read_text())["status"] == "completed"


FRONTIER_RECORDS = sorted((REPO / "results" / "reference" / "frontier").glob("frontier-*.json"))


def test_frontier_records_are_checked_when_written_and_read(tmp_path):
    assert FRONTIER_RECORDS
    for path in FRONTIER_RECORDS:  # every committed one keeps the format
        schemas.check_frontier(json.loads(path.read_text()))
    record = json.loads(FRONTIER_RECORDS[0].read_text())
    with pytest.raises(schemas.RecordError, match="field 'accuracy.test' is 75.3"):
        write_record("frontier", tmp_path / "f.json", _with(record, "accuracy.test", 75.3))
    # Under bench/, a frontier record is checked, then left out of the table with a note.
    write_json(tmp_path / "bench" / "frontier-good.json", record)
    write_json(tmp_path / "bench" / "frontier-bad.json", _without(record, "budget_s"))
    records = collect.collect_records([tmp_path])
    assert [(p.name, reason) for p, reason in records.skipped] == [
        ("frontier-bad.json", "missing field 'budget_s'")
    ]
    [note] = records.notes
    assert "frontier-good.json: a 'frontier' benchmark" in note


def test_collect_skips_malformed_files_with_the_reason(tmp_path):
    root = tmp_path / "results"
    write_run(root, "good")
    (root / "runs" / "broken").mkdir(parents=True)
    (root / "runs" / "broken" / "metrics.json").write_text('{"run": "broken", ')
    write_json(root / "runs" / "listed" / "metrics.json", [1, 2])
    write_json(root / "runs" / "partial" / "metrics.json", _without(metrics("partial"), "test"))
    write_json(
        root / "runs" / "unfinished" / "metrics.json",
        {"schema": 1, "run": "unfinished", "status": "failed"},
    )
    bad_history = write_run(root, "badhist") / "history.csv"
    bad_history.write_text("epoch,val_accuracy\n0,0.3\n1,oops\n")
    write_json(root / "bench" / "train_speed.json", {"benchmark": "train_speed", "results": []})
    write_json(root / "bench" / "nameless.json", {"rows": []})
    # Other tools' files are not records and are not read.
    write_json(root / "runs" / "good" / "exports" / "model.onnx.json", {"file": "model.onnx"})
    write_json(root / "tuning" / "s" / "keras_tuner" / "trial_00" / "summary.json", [])

    records = collect.collect_records([root])

    assert sorted(r.metrics["run"] for r in records.runs) == ["badhist", "good"]
    skipped = {p.relative_to(root).as_posix(): reason for p, reason in records.skipped}
    assert set(skipped) == {
        "runs/broken/metrics.json",
        "runs/listed/metrics.json",
        "runs/partial/metrics.json",
        "runs/badhist/history.csv",
        "bench/nameless.json",
    }
    assert skipped["runs/broken/metrics.json"].startswith("not valid JSON (line 1")
    assert skipped["runs/listed/metrics.json"] == "expected a JSON object, found list"
    assert "missing field 'test.accuracy'" in skipped["runs/partial/metrics.json"]
    assert skipped["runs/badhist/history.csv"] == (
        "line 3: epoch '1' or val_accuracy 'oops' is not a number"
    )
    assert "missing field 'benchmark'" in skipped["bench/nameless.json"]
    assert len(records.notes) == 2
    assert any("'unfinished' is failed" in n for n in records.notes)
    assert any("'train_speed' benchmark" in n for n in records.notes)
    # The run with a bad history is still compared, without a curve.
    assert next(r for r in records.runs if r.metrics["run"] == "badhist").history == []


def test_a_file_given_directly_must_be_a_record(tmp_path):
    other = write_json(tmp_path / "notes.json", {"a": 1})
    records = collect.collect_records([other])
    assert len(records) == 0
    reason = "not a run (metrics.json), tuning (summary.json) or bench (bench/*.json) record"
    assert records.skipped == [(other, reason)]


# --------------------------------------------------------------------------- rows and Pareto


def test_pareto_front_on_hand_made_points():
    points = [
        (0.50, 10.0),  # 0 on the front
        (0.60, 20.0),  # 1 on the front
        (0.55, 30.0),  # 2 beaten by 1 (more accurate and faster)
        (0.60, 25.0),  # 3 beaten by 1 (as accurate, faster)
        (0.40, 5.0),  # 4 on the front (fastest)
        (0.40, 8.0),  # 5 beaten by 0 and 4
        (0.70, None),  # 6 no latency: never on the front
        (None, 1.0),  # 7 no accuracy: never on the front
        (0.50, 10.0),  # 8 equal to 0: neither beats the other
        (0.65, 90.0),  # 9 on the front (most accurate with a latency)
    ]
    assert table.pareto_front(points) == [
        True,
        True,
        False,
        False,
        True,
        False,
        False,
        False,
        True,
        True,
    ]
    assert table.pareto_front([]) == []


def test_bench_rows_replace_the_run_row_and_tuning_names_its_best(results):
    rows = table.mark_pareto(table.build_rows(collect.collect_records([results])))
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    assert sorted(by_model) == ["big", "fast", "plain", "search/best"]
    assert sorted(r["runtime"] for r in by_model["big"]) == ["keras-call", "litert", "litert"]
    assert [r["runtime"] for r in by_model["plain"]] == ["keras-evaluate"]
    assert by_model["plain"][0]["p50_us"] is None and by_model["plain"][0]["accuracy"] == 0.5
    best = by_model["search/best"][0]
    assert best["variant"] == "tuned (search trial 02 of 3)"
    assert best["architecture"] == "batchnorm 2x8 relu"
    front = sorted((r["model"], r["runtime"], r["precision"]) for r in rows if r["pareto"])
    assert front == [("big", "litert", "dynamic"), ("fast", "litert", "dynamic")]


@pytest.fixture
def two_machines(tmp_path) -> Path:
    """Two runs benchmarked on two machines: the fast machine's model would dominate the
    slow machine's best row if their latencies were compared."""
    root = tmp_path / "results"
    write_run(root, "quick", 0.60)
    write_run(root, "slow", 0.55)
    write_json(
        root / "bench" / "quick.json",
        bench("quick", [bench_row("quick", "litert", "dynamic", 0.60, 10.0)], cpu="Fast CPU"),
    )
    write_json(
        root / "bench" / "slow.json",
        bench(
            "slow",
            [
                bench_row("slow", "litert", "dynamic", 0.55, 20.0),
                bench_row("slow", "litert", "int8", 0.50, 30.0),
            ],
            cpu="Slow CPU",
        ),
    )
    return root


def test_each_machine_has_its_own_front(two_machines):
    rows = table.build_rows(collect.collect_records([two_machines]))
    points = [(r["accuracy"], r["p50_us"]) for r in rows]
    assert table.pareto_front(points).count(True) == 1  # one front for all: quick alone
    marked = {
        (r["model"], r["precision"]): (r["machine"], r["pareto"]) for r in table.mark_pareto(rows)
    }
    assert marked == {
        ("quick", "dynamic"): ("Fast CPU, 2 cores", True),
        ("slow", "dynamic"): ("Slow CPU, 2 cores", True),
        ("slow", "int8"): ("Slow CPU, 2 cores", False),
    }
    assert table.machines(rows) == ["Fast CPU, 2 cores", "Slow CPU, 2 cores"]


def test_several_machines_in_the_report_files(two_machines, tmp_path):
    out = tmp_path / "report"
    report = cmp.compare([two_machines], out)
    with open(out / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert list(written[0])[-10:] == [
        "size_bytes",
        "flash_bytes",
        "arena_bytes",
        "macs",
        "pareto",
        "flagged",
        "record",
        "machine",
        "arena_note",
        "estimated",
    ]
    assert {(r["model"], r["machine"], r["pareto"]) for r in written} == {
        ("quick", "Fast CPU, 2 cores", "True"),
        ("slow", "Slow CPU, 2 cores", "True"),
        ("slow", "Slow CPU, 2 cores", "False"),
    }
    md = (out / "report.md").read_text()
    first = md.split("\n\n")[1]
    assert (
        "come from 2 machines, whose latencies are not comparable, so each machine has "
        "its own Pareto front: Fast CPU, 2 cores (1 bench record); Slow CPU, 2 cores "
        "(1 bench record)."
    ) in first
    assert "| file size | flash | arena | MACs | machine |" in md
    assert "| 60.00% | 10.0 us |" in md
    _check_png(out / "accuracy_vs_latency.png")
    # One step line per machine, each in the legend under its machine, each drawn its own way.
    ax = plots.accuracy_latency_figure(report.rows).axes[0]
    fronts = {line.get_gid(): (line.get_color(), line.get_linestyle()) for line in ax.get_lines()}
    assert set(fronts) == {"front Fast CPU, 2 cores", "front Slow CPU, 2 cores"}
    assert len(set(fronts.values())) == 2
    assert {"Pareto front, Fast CPU, 2 cores", "Pareto front, Slow CPU, 2 cores"} <= {
        t.get_text() for t in ax.get_legend().get_texts()
    }


def test_one_machine_report_keeps_its_form(results, tmp_path):
    report = cmp.compare([results], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert (
        "Latency: batch 1, one thread, 100 timed calls after 10 warm-up calls, on Test CPU, "
        "2 cores; throughput: batch 256, all cores.\n"
    ) in md
    assert "machines" not in md and "The dashed step line is the Pareto front:" in md
    header = (
        "|  | model | architecture | variant | params | sparsity | format | runtime | "
        "precision | test acc | p50 b=1 | p99 b=1 | img/s b=256 | file size | flash | "
        "arena | MACs |"
    )
    assert header + "\n" in md
    with open(tmp_path / "report" / "results.csv", newline="") as f:
        assert next(csv.reader(f)) == [
            *table.DEFAULT_KEYS,
            "pareto",
            "flagged",
            "record",
            "machine",
            "arena_note",
            "estimated",
        ]
    ax = plots.accuracy_latency_figure(report.rows, "Test CPU, 2 cores").axes[0]
    [front] = ax.get_lines()
    assert (front.get_color(), front.get_linestyle()) == ("black", "--")
    assert "Pareto front" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_tuning_summary_alone_gives_a_row(tmp_path):
    write_json(tmp_path / "tuning" / "search" / "summary.json", summary())
    [row] = table.build_rows(collect.collect_records([tmp_path]))
    assert (row["model"], row["architecture"], row["accuracy"]) == ("search/best", "3x64", 0.51)


def test_architecture_and_variant_say_what_the_model_is(tmp_path):
    write_run(tmp_path, "dense")
    cnn = metrics("cnn")
    cnn["config"].update(arch="resnet8", dropout=0.1, tta="flip", ema=0.999)
    write_json(tmp_path / "runs" / "cnn" / "metrics.json", cnn)
    write_json(
        tmp_path / "runs" / "cut" / "metrics.json",
        metrics("cut", variant="structured-pruned", parent="dense"),
    )
    narrow = metrics("narrow")
    narrow["config"].update(bottleneck=16)
    write_json(tmp_path / "runs" / "narrow" / "metrics.json", narrow)
    projected = metrics("projected")
    projected["config"].update(pca=64)
    write_json(tmp_path / "runs" / "projected" / "metrics.json", projected)
    rows = {r["model"]: r for r in table.build_rows(collect.collect_records([tmp_path]))}
    assert rows["narrow"]["architecture"] == "batchnorm 16+2x8 relu"
    assert rows["projected"]["architecture"] == "batchnorm pca64+2x8 relu"
    assert (rows["dense"]["architecture"], rows["dense"]["variant"]) == (
        "batchnorm 2x8 relu",
        "trained (bn-elu-fast)",
    )
    assert (rows["cnn"]["architecture"], rows["cnn"]["variant"]) == (
        "resnet8 + flip TTA",
        "trained (bn-elu-fast, dropout 0.1, ema 0.999)",
    )
    assert rows["cut"]["variant"] == "structured-pruned (dense)"


def test_a_bench_without_its_run_still_shows(tmp_path):
    write_json(
        tmp_path / "bench" / "lonely.json",
        bench("lonely", [bench_row("lonely", "litert", "int8", 0.3, 50.0)]),
    )
    [row] = table.mark_pareto(table.build_rows(collect.collect_records([tmp_path])))
    assert (row["model"], row["architecture"], row["p50_us"], row["pareto"]) == (
        "lonely",
        None,
        50.0,
        True,
    )


def test_runs_sharing_a_name_are_told_apart_by_path(tmp_path):
    write_run(tmp_path / "a", "same", 0.4)
    write_run(tmp_path / "b", "same", 0.6)
    write_json(
        tmp_path / "b" / "bench" / "same.json",
        bench("same", [bench_row("same", "litert", "int8", 0.6, 50.0)]),
    )
    rows = table.build_rows(collect.collect_records([tmp_path]))
    models = {r["model"]: r["runtime"] for r in rows}
    assert len(models) == 2
    a, b = sorted(models)
    assert a.endswith("a/runs/same") and models[a] == "keras-evaluate"
    assert b.endswith("b/runs/same") and models[b] == "litert"  # its own results folder's bench


def test_sorting(results):
    rows = table.mark_pareto(table.build_rows(collect.collect_records([results])))
    by_accuracy = table.sort_rows(rows)
    assert [r["accuracy"] for r in by_accuracy] == sorted(
        (r["accuracy"] for r in rows), reverse=True
    )
    by_p50 = [r["p50_us"] for r in table.sort_rows(rows, "p50_us")]
    assert by_p50 == [12.0, 20.0, 40.0, 45.0, 9000.0, None, None]
    assert table.sort_rows(rows, "model")[0]["model"] == "big"
    with pytest.raises(ValueError, match="sort key 'speed'"):
        table.sort_rows(rows, "speed")


def test_table_formats(results):
    rows = table.sort_rows(table.mark_pareto(table.build_rows(collect.collect_records([results]))))
    text = table.format_rows(rows, "table").splitlines()
    assert len(text) == len(rows) + 1
    assert text[1].startswith("*  big") and "20.0 us" in text[1] and "55.00%" in text[1]
    markdown = table.format_rows(rows, "markdown").splitlines()
    assert markdown[1].startswith("| --- |") and len(markdown) == len(rows) + 2
    parsed = list(csv.DictReader(table.format_rows(rows, "csv").splitlines()))
    assert len(parsed) == len(rows) and parsed[0]["p50_us"] == "20.0"
    assert json.loads(table.format_rows(rows, "json"))[0]["pareto"] is True


def test_printed_table_fits_a_narrow_terminal(results):
    rows = table.sort_rows(table.mark_pareto(table.build_rows(collect.collect_records([results]))))
    wide, left_out = table.printed_table(rows, width=500)
    assert left_out == [] and wide.splitlines()[0].split()[:3] == ["model", "runtime", "precision"]
    text, left_out = table.printed_table(rows, width=85)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 85 < max(map(len, wide.splitlines()))
    header = lines[0]
    assert all(h in header for h in ("model", "test acc", "p50 b=1", "file size", "p99 b=1"))
    assert "img/s" not in header and "variant" not in header and "architecture" not in header
    assert left_out[-3:] == ["format", "architecture", "variant"]
    assert lines[1].startswith("*  big") and "55.00%" in lines[1] and "20.0 us" in lines[1]
    # Too narrow for even the columns a reader decides by: those are printed all the same.
    text, left_out = table.printed_table(rows, width=10)
    assert text.splitlines()[0].split() == [
        "model",
        "runtime",
        "precision",
        "test",
        "acc",
        "p50",
        "b=1",
        "file",
        "size",
    ]
    assert len(left_out) == len(table.PRINTED) - table.ALWAYS_PRINTED
    # Other formats and chosen columns are never cut.
    assert table.printed_table(rows, "markdown", width=10) == (
        table.format_rows(rows, "markdown"),
        [],
    )
    text, left_out = table.printed_table(rows, columns=["variant", "model"], width=10)
    assert left_out == [] and text.splitlines()[0].split()[:2] == ["variant", "model"]


def test_column_names_are_checked():
    assert table.parse_columns(" model, p50_us ,accuracy") == ("model", "p50_us", "accuracy")
    with pytest.raises(ValueError, match=r"unknown column\(s\) 'speed', 'acc'; choose from model"):
        table.parse_columns("model,speed,acc")
    with pytest.raises(ValueError, match="no column; choose from"):
        table.parse_columns(" , ")


# --------------------------------------------------------------------------- footprint

RESNET8_MACS = 12_501_632
EXP_NOTE = "TensorFlow Lite Micro cannot run op EXP: its kernel refuses node 3"


@pytest.fixture
def footprints(tmp_path) -> Path:
    """Two ResNet-8 runs and an MLP benchmarked with footprint figures (TFLM could not run
    the MLP's int8 file), and a run whose bench record is older, without them."""
    root = tmp_path / "results"
    for name, accuracy in (("cnn", 0.87), ("cnn-short", 0.75)):
        cnn = metrics(name, accuracy)
        cnn["config"]["arch"] = "resnet8"
        write_json(root / "runs" / name / "metrics.json", cnn)
    write_run(root, "mlp", 0.55)
    write_run(root, "old", 0.50)
    write_json(
        root / "bench" / "cnn.json",
        bench(
            "cnn",
            [
                footprint(
                    {**bench_row("cnn", "litert", "int8", 0.86, 100.0), "size_bytes": 98_960},
                    RESNET8_MACS,
                    53_000,
                ),
                footprint(
                    {**bench_row("cnn", "litert", "float32", 0.87, 300.0), "size_bytes": 320_000},
                    RESNET8_MACS,
                    None,
                ),
            ],
        ),
    )
    write_json(
        root / "bench" / "cnn-short.json",
        bench(
            "cnn-short",
            [
                footprint(
                    {**bench_row("cnn-short", "litert", "int8", 0.74, 100.0), "size_bytes": 99_104},
                    RESNET8_MACS,
                    53_000,
                )
            ],
        ),
    )
    write_json(
        root / "bench" / "mlp.json",
        bench(
            "mlp",
            [
                footprint(
                    {**bench_row("mlp", "litert", "int8", 0.55, 6.0), "size_bytes": 200_000},
                    99_648,
                    None,
                    EXP_NOTE,
                )
            ],
        ),
    )
    write_json(
        root / "bench" / "old.json", bench("old", [bench_row("old", "litert", "int8", 0.50, 8.0)])
    )  # 5,000 bytes, no footprint fields
    return root


def test_footprint_columns_and_old_records(footprints, tmp_path):
    records = collect.collect_records([footprints])
    assert records.skipped == []  # the old bench record still loads
    rows = table.mark_pareto(table.build_rows(records))
    by = {(r["model"], r["precision"]): r for r in rows}
    cnn, old = by["cnn", "int8"], by["old", "int8"]
    assert (cnn["flash_bytes"], cnn["arena_bytes"], cnn["macs"]) == (98_960, 53_000, RESNET8_MACS)
    assert (old["flash_bytes"], old["arena_bytes"], old["macs"]) == (None, None, None)
    assert by["mlp", "int8"]["arena_note"] == EXP_NOTE
    rows = table.sort_rows(rows, "macs")
    assert [r["macs"] for r in rows][:2] == [99_648, RESNET8_MACS] and rows[-1]["macs"] is None
    text = table.format_rows(
        rows, "table", ("model", "precision", "size_bytes", "flash_bytes", "arena_bytes", "macs")
    ).splitlines()
    assert text[0].split() == ["model", "precision", "file", "size", "flash", "arena", "MACs"]
    cells = {
        words[0]: words[2:]
        for words in (line.lstrip("* ").split() for line in text[1:])
        if words[1] == "int8"
    }
    assert cells["mlp"] == ["195", "KiB", "195", "KiB", "-", "99.6", "k"]
    assert cells["cnn"] == ["97", "KiB", "97", "KiB", "51.8", "KiB", "12.5", "M"]
    assert cells["old"] == ["5", "KiB", "-", "-", "-"]
    # The full table: after file size, in report.md, results.csv and JSON; blank for old rows.
    report = cmp.compare([footprints], tmp_path / "report")
    with open(tmp_path / "report" / "results.csv", newline="") as f:
        written = {(r["model"], r["precision"]): r for r in csv.DictReader(f)}
    assert (written["cnn", "int8"]["flash_bytes"], written["cnn", "int8"]["macs"]) == (
        "98960",
        str(RESNET8_MACS),
    )
    assert written["old", "int8"]["arena_bytes"] == written["old", "int8"]["macs"] == ""
    assert written["mlp", "int8"]["arena_note"] == EXP_NOTE
    [old_json] = [
        r
        for r in json.loads(table.format_rows(report.rows, "json"))
        if r["model"] == "old" and r["precision"] == "int8"
    ]
    assert old_json["flash_bytes"] is old_json["arena_bytes"] is old_json["macs"] is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| file size | flash | arena | MACs |" in md
    assert f"## Arena not measured\n\n- mlp: {EXP_NOTE}\n" in md


def test_footprint_columns_are_printed_only_where_they_fit(footprints):
    rows = table.sort_rows(
        table.mark_pareto(table.build_rows(collect.collect_records([footprints])))
    )
    wide, left_out = table.printed_table(rows, width=500)
    header = wide.splitlines()[0]
    assert left_out == [] and "arena" in header and "MACs" in header
    assert "flash" not in header  # the file size again: only when chosen
    text, left_out = table.printed_table(rows, width=80)
    assert max(map(len, text.splitlines())) <= 80 and "macs" in left_out
    assert table.parse_columns("flash_bytes,arena_bytes,macs") == (
        "flash_bytes",
        "arena_bytes",
        "macs",
    )


def test_flash_picture_has_the_reference_lines(footprints, tmp_path):
    report = cmp.compare([footprints], tmp_path / "report")
    _check_png(tmp_path / "report" / "accuracy_vs_flash.png")
    ax = plots.accuracy_flash_figure(report.rows).axes[0]
    lines = {line.get_gid(): line for line in ax.get_lines()}
    assert set(lines) == {"reference flash", "quality target"}
    # The most accurate ResNet-8's int8 file (cnn, not cnn-short), read from its bench row.
    assert list(lines["reference flash"].get_xdata()) == [98_960, 98_960]
    assert list(lines["quality target"].get_ydata()) == [85, 85]
    assert {line.get_linestyle() for line in lines.values()} == {"--"}
    assert ax.get_xscale() == "log"
    # One point per int8 file; the old record's by its file size, the same figure.
    points = sorted(
        (float(x), round(float(y), 6)) for c in ax.collections for x, y in c.get_offsets()
    )
    assert points == [(5_000, 50.0), (98_960, 86.0), (99_104, 74.0), (200_000, 55.0)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "MLPerf Tiny quality target: 85% top-1" in legend
    assert any("ResNet-8, int8: 96.6 KiB" in t and "cnn" in t for t in legend)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "![accuracy vs flash](accuracy_vs_flash.png)" in md
    assert "85% top-1 on CIFAR-10" in md and "(cnn, 98,960 bytes)" in md
    assert plots.plot_accuracy_flash(report.rows) == plots.plot_accuracy_flash(report.rows)


def test_flash_picture_without_a_resnet8_has_no_vertical_line(results, tmp_path):
    report = cmp.compare([results], tmp_path / "report")
    ax = plots.accuracy_flash_figure(report.rows).axes[0]
    assert [line.get_gid() for line in ax.get_lines()] == ["quality target"]
    assert len([xy for c in ax.collections for xy in c.get_offsets()]) == 1  # big's int8 file
    md = (tmp_path / "report" / "report.md").read_text()
    assert "no ResNet-8 run is among the records, so there is no vertical line" in md


# --------------------------------------------------------------------------- report


def _check_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 15_000, f"{path.name}: {len(data)} bytes, suspiciously small"
    pixels = imread(path)
    assert pixels.shape[0] >= 500 and pixels.shape[1] >= 1000
    assert pixels.std() > 0.05  # something is drawn, not a blank canvas


def test_report_files_are_written(results, tmp_path):
    out = tmp_path / "report"
    report = cmp.compare([results], out)
    assert sorted(p.name for p in report.files) == [
        "accuracy_vs_flash.png",
        "accuracy_vs_latency.html",
        "accuracy_vs_latency.png",
        "report.md",
        "results.csv",
        "training_curves.png",
    ]
    _check_png(out / "accuracy_vs_latency.png")
    _check_png(out / "accuracy_vs_flash.png")
    _check_png(out / "training_curves.png")
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(report.rows) == 7
    md = (out / "report.md").read_text()
    assert "![accuracy vs latency](accuracy_vs_latency.png)" in md
    assert "![training curves](training_curves.png)" in md
    assert "![accuracy vs flash](accuracy_vs_flash.png)" in md
    assert "| * | big |" in md
    assert "4 runs, 1 tuning search and 2 bench records" in md
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_pictures_without_latency_or_history_are_still_images(tmp_path):
    write_json(tmp_path / "runs" / "x" / "metrics.json", metrics("x"))
    report = cmp.compare([tmp_path], tmp_path / "out")
    assert all(r["p50_us"] is None for r in report.rows)
    for name in ("accuracy_vs_latency.png", "accuracy_vs_flash.png", "training_curves.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC


def test_no_valid_record_is_an_error(tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "metrics.json").write_text("nonsense")
    with pytest.raises(cmp.NoRecords, match=r"1 file\(s\) skipped"):
        cmp.compare([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_only_drawing_imports_matplotlib():
    code = (
        "import sys; import harness.report.compare, harness.report.collect, "
        "harness.report.table, harness.report.plots; "
        "assert 'matplotlib' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_compare_imports_neither_tensorflow_nor_keras(results, tmp_path):
    code = (
        "import sys; from harness.report.compare import compare; "
        f"compare([{str(results)!r}], {str(tmp_path / 'out')!r}); "
        "heavy = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_committed_reference_records_are_valid():
    records = collect.collect_records([REPO / "results" / "reference"])
    assert records.skipped == []
    assert len(records.runs) >= 10 and records.benches and records.tunings
    assert all(run.history for run in records.runs if (run.dir / "history.csv").exists())


# --------------------------------------------------------------------------- CLI


def _invoke(results_dir: Path, *args):
    return CliRunner().invoke(main, ["--results", str(results_dir), "compare", *args])


def test_cli_prints_the_table_and_writes_the_default_report(results):
    result = _invoke(results, str(results), "--format", "json", "--sort", "p50_us")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["p50_us"] for r in rows][:2] == [12.0, 20.0]
    assert (results / "report" / "report.md").exists()
    assert "wrote" in result.stderr


def test_cli_names_skipped_files_and_honours_out(results, tmp_path):
    (results / "runs" / "bad").mkdir()
    (results / "runs" / "bad" / "metrics.json").write_text("{}")
    result = _invoke(results, str(results), "--out", str(tmp_path / "elsewhere"))
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "bad" in result.stderr
    assert "missing field 'schema'" in result.stderr
    assert (tmp_path / "elsewhere" / "accuracy_vs_latency.png").exists()
    assert result.stdout.splitlines()[0].split()[:2] == ["model", "runtime"]


def test_cli_table_fits_the_terminal_and_says_what_it_left_out(results, tmp_path):
    result = CliRunner().invoke(
        main, ["--results", str(results), "compare", str(results)], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and "test acc" in lines[0] and "p50 b=1" in lines[0]
    [note] = [line for line in result.stderr.splitlines() if line.startswith("left out")]
    assert "variant" in note and "--columns" in note and "results.csv" in note
    with open(results / "report" / "results.csv", newline="") as f:  # the full table
        assert "variant" in next(csv.reader(f))


def test_cli_columns_choose_and_reject(results):
    result = _invoke(results, str(results), "--columns", "p50_us,model", "--format", "json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)[0]) == [
        "p50_us",
        "model",
        "pareto",
        "flagged",
        "record",
        "machine",
        "arena_note",
        "estimated",
    ]
    result = _invoke(results, str(results), "--columns", "model,machine", "--sort", "machine")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "machine"] and "Test CPU, 2 cores" in lines[1]
    result = _invoke(results, str(results), "--columns", "machine", "--format", "csv")
    assert result.stdout.splitlines()[0] == "machine,pareto,flagged,record,arena_note,estimated"
    result = CliRunner().invoke(
        main,
        ["--results", str(results), "compare", str(results), "--columns", "model,variant"],
        env={"COLUMNS": "20"},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["model", "variant"]
    assert "left out" not in result.stderr
    result = _invoke(results, str(results), "--columns", "model,speed")
    assert result.exit_code == 2
    assert "Invalid value for '--columns'" in result.output
    assert "unknown column(s) 'speed'; choose from model, architecture, variant" in result.output


def test_cli_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _invoke(tmp_path, str(empty))
    assert result.exit_code == 1 and "no valid run, tuning or bench record" in result.output

    (empty / "metrics.json").write_text("[")
    result = _invoke(tmp_path, str(empty))
    assert result.exit_code == 1 and "not valid JSON" in result.stderr

    result = _invoke(tmp_path, str(tmp_path / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.output

    result = _invoke(tmp_path, str(empty), "--sort", "speed")
    assert result.exit_code == 2 and "Invalid value for '--sort'" in result.output

    result = _invoke(tmp_path)
    assert result.exit_code == 2 and "Missing argument 'PATHS...'" in result.output


def test_a_model_benchmarked_twice_is_told_apart_in_the_printed_table(tmp_path):
    """Two bench records of one run: the printed table names what tells their rows apart,
    the machine where they differ in it, else the record."""
    root = tmp_path / "results"
    write_run(root, "twice", 0.60)
    write_json(
        root / "bench" / "twice.json",
        bench("twice", [bench_row("twice", "litert", "int8", 0.60, 10.0)], cpu="Fast CPU"),
    )
    write_json(
        root / "other" / "bench" / "twice.json",
        bench("twice", [bench_row("twice", "litert", "int8", 0.60, 12.0)], cpu="Slow CPU"),
    )
    rows = table.mark_pareto(table.build_rows(collect.collect_records([root])))
    text, _ = table.printed_table(rows, width=200)
    header, *lines = text.splitlines()
    assert header.split()[:4] == ["model", "runtime", "precision", "machine"]
    assert any("Fast CPU" in line for line in lines) and any("Slow CPU" in line for line in lines)
    same = [dict(r, machine="One CPU, 2 cores") for r in rows]
    assert "record" in table.printed_table(same, width=200)[0].splitlines()[0]
    once = [r for r in rows if "Fast" in r["machine"]]
    assert "machine" not in table.printed_table(once, width=200)[0].splitlines()[0]


def test_the_chart_colours_families_fades_the_rest_and_has_an_offline_page(results, tmp_path):
    """Colour by family, marker by precision, off-front points faded; the HTML page holds
    one hover title per timed row naming its model, runtime, precision and record, and
    loads nothing from elsewhere."""
    import re

    report = cmp.compare([results], tmp_path / "report")
    timed = [r for r in report.rows if r["p50_us"] is not None]
    ax = plots.accuracy_latency_figure(report.rows).axes[0]
    alphas = sorted({c.get_alpha() for c in ax.collections})
    assert alphas == ([0.3, 0.95] if not all(r["pareto"] for r in timed) else [0.95])
    families = (
        [t.get_text() for t in ax.artists[0].get_texts()]
        if ax.artists
        else [t.get_text() for t in ax.get_legend().get_texts()]
    )
    assert "fully connected" in families or "CNN" in families
    page = (tmp_path / "report" / "accuracy_vs_latency.html").read_text()
    titles = re.findall(r"<title>([^<]*)</title>", page)
    for r in timed:
        assert any(
            t.startswith(f"{r['model']}: {r['runtime']} {r['precision']}") and r["record"] in t
            for t in titles
        ), r
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page


def test_the_committed_charts_labels_cover_no_other_label():
    """The front's labels (and the imported models') on the chart of every committed
    record: no two labels' boxes overlap."""
    from harness.report.collect import collect_records
    from harness.report.plots import accuracy_latency_figure
    from harness.report.table import build_rows, mark_pareto

    root = Path(__file__).resolve().parents[1] / "results"
    rows = mark_pareto(build_rows(collect_records([root])))
    fig = accuracy_latency_figure(rows, "machines")
    fig.draw_without_rendering()
    labels = [t for t in fig.axes[0].texts if t.get_gid() == "label"]
    boxes = [t.get_bbox_patch().get_window_extent() for t in labels]
    assert len(labels) >= 10
    overlapping = [
        (labels[i].get_text().split("\n")[0], labels[j].get_text().split("\n")[0])
        for i in range(len(boxes))
        for j in range(i + 1, len(boxes))
        if boxes[i].overlaps(boxes[j])
    ]
    assert not overlapping


def test_an_emulated_record_is_left_out_with_a_note(tmp_path):
    """An emulated check (benchmarks/deploy_arm64.py) times the emulator, not a device."""
    from harness.report.collect import collect_records

    path = tmp_path / "bench" / "x.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"benchmark": "bench", "emulated": True, "rows": []}))
    records = collect_records([tmp_path])
    assert not records.benches and not records.skipped
    assert records.notes and "emulated" in records.notes[0]
