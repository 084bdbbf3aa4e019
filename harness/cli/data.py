"""The data commands: download, import, info."""

from __future__ import annotations

import json
from pathlib import Path

import click

from harness.cli.app import Context, main
from harness.data import cifar as data_mod

# --------------------------------------------------------------------------- data


@main.group()
def data():
    """Download, import and inspect CIFAR-10."""


@data.command("download")
@click.pass_obj
def data_download(obj: Context):
    """Download the official archive into the cache, verify its sha256, and cache it."""
    path = data_mod.download(obj.home)
    ds = data_mod.import_data(path, obj.home)
    click.echo(
        f"cached {len(ds.x_train)} + {len(ds.x_test)} images from {path} (sha256 {ds.sha256})"
    )


@data.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def data_import(obj: Context, path: Path):
    """Import a local archive or extracted cifar-10-batches-py folder into the cache."""
    ds = data_mod.import_data(path, obj.home)
    click.echo(
        f"imported {len(ds.x_train)} + {len(ds.x_test)} images from {path} "
        f"(sha256 {ds.sha256}, verified by {ds.verified}) into "
        f"{data_mod.cache_path(obj.home)}"
    )


@data.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def data_info(obj: Context, as_json: bool):
    """Where the data is, its sha256, and images per class per split."""
    ds = obj.dataset()
    counts = data_mod.class_counts(ds)
    info = {"cache": str(data_mod.cache_path(obj.home)), **ds.record, "per_class": counts}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(
        f"cache     {info['cache']}\nsource    {ds.source}\n"
        f"sha256    {ds.sha256} (verified by {ds.verified})"
    )
    click.echo(f"{'class':<12}" + "".join(f"{s:>8}" for s in counts))
    for c in ds.label_names:
        click.echo(f"{c:<12}" + "".join(f"{counts[s][c]:>8}" for s in counts))
    click.echo(f"{'total':<12}" + "".join(f"{sum(counts[s].values()):>8}" for s in counts))
