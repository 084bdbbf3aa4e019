"""The report command: compare."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from harness.cli.app import Context, _name_option, main
from harness.core.records import Results
from harness.report import compare as compare_mod


def _column_keys(ctx, param, value: str | None) -> tuple[str, ...]:
    try:
        return compare_mod.parse_columns(value) if value is not None else ()
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.md, results.csv and the pictures [default: <results>/report].",
)
@click.option(
    "--columns",
    metavar="KEY,...",
    callback=_column_keys,
    help="Columns to print, in this order (the keys --sort takes) [default for "
    "table: model, runtime, precision, accuracy, p50, size, then as many "
    "more as the terminal's width allows; other formats: all].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(compare_mod.FORMATS),
    default="table",
    show_default=True,
    help="How to print the table.",
)
@click.option(
    "--sort",
    "sort_key",
    type=click.Choice(compare_mod.SORT_KEYS),
    default="accuracy",
    show_default=True,
    help="Column to sort by (accuracy and throughput high to low, others low to high).",
)
@click.option(
    "--docs",
    is_flag=True,
    help="Instead, rewrite the generated tables of README.md and docs/ beside the results "
    "folder from its committed records, and name the pages that changed.",
)
@click.pass_obj
def compare(obj: Context, paths, out, columns, fmt, sort_key, docs):
    """Every run, tuning and bench record under PATHS in one table, with pictures.

    Files that break the record schema are named and skipped. Writes report.md,
    results.csv, accuracy_vs_latency.png, accuracy_vs_flash.png and training_curves.png
    to --out.
    """
    if docs:
        from harness.report import docs as docs_mod

        root = docs_mod.find_root(paths[0])
        changed = docs_mod.refresh(root)
        for page in changed:
            click.echo(f"rewrote {page.relative_to(root)}")
        click.echo(f"{len(changed)} page(s) changed; {len(docs_mod.pages(root))} checked")
        return
    records = compare_mod.collect_records(paths)
    for path, reason in records.skipped:
        click.secho(f"skipped {path}: {reason}", err=True, fg="yellow")
    for note in records.notes:
        click.echo(f"note: {note}", err=True)
    report = compare_mod.report(records, out or Results(obj.results).report, sort_key, paths)
    text, left_out = compare_mod.printed_table(
        report.rows, fmt, columns, shutil.get_terminal_size().columns
    )
    click.echo(text)
    for line in compare_mod.versus_summary(report.versus):
        click.echo(line, err=True)
    if left_out:
        click.echo(
            f"left out to fit the terminal: {', '.join(left_out)} (--columns chooses; "
            "results.csv has every column)",
            err=True,
        )
    click.echo("wrote " + ", ".join(str(p) for p in report.files), err=True)


@main.command()
@click.argument("models", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--board",
    "boards",
    multiple=True,
    help="Estimate on this board (repeatable) [default: every board].",
)
@click.option("--flash-kb", type=click.IntRange(min=1), help="Override the boards' flash, KiB.")
@click.option("--ram-kb", type=click.IntRange(min=1), help="Override the boards' RAM, KiB.")
@click.option(
    "--calibration",
    is_flag=True,
    help="Print the estimator beside MLPerf Tiny's published figures.",
)
@click.option(
    "--name",
    callback=_name_option("record name"),
    help="The record's model name (one MODEL) [default: its run or file].",
)
@click.pass_obj
def boards(obj: Context, models, boards, flash_kb, ram_kb, calibration, name):
    """Microcontroller boards, and estimates for int8 MODELS (.tflite files or mcu bundles):
    fit, latency and energy on each board. Estimates, calibrated on MLPerf Tiny's
    published results, never measurements; each is written to
    results/estimates/<model>.json, which compare shows in its own column."""
    from harness.core.records import atomic_write_json, check_name
    from harness.deploy import boards as boards_mod

    chosen = [boards_mod.board_named(b, flash_kb, ram_kb) for b in boards or boards_mod.BOARDS]
    if calibration:
        click.echo(boards_mod.format_calibration())
    if not models and not calibration:
        for b in chosen:
            click.echo(
                f"{b.name:<9} {b.core:<11} {b.mhz:>5g} MHz  flash {b.flash_kib:>5} KiB  "
                f"RAM {b.ram_kib:>5} KiB  {b.part}"
            )
    if name and len(models) != 1:
        raise click.UsageError("--name names the record of one MODEL")
    for model in models:
        record = boards_mod.estimate_record(model, chosen, name)
        path = Results(obj.results).path / "estimates" / f"{check_name(record['model'])}.json"
        atomic_write_json(path, record)
        click.echo(f"{record['model']} ({record['file']}, {record['macs']:,} MACs) -> {path}")
        for e in record["estimates"]:
            click.echo(f"  {boards_mod.format_estimate(e)}")
