"""Committed records travel: no absolute path of the machine that made them."""

import re
from pathlib import Path

from harness.data import cifar as data

REPO = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r'"(/(?:work|tmp|root|home|Users|mnt|opt)/[^"]*)"|[ =](/(?:root|home)/\S+)')


def test_committed_records_hold_no_absolute_paths():
    found = {}
    for path in sorted((REPO / "results").rglob("*.json")):
        hits = ABSOLUTE.findall(path.read_text(encoding="utf-8"))
        if hits:
            found[str(path.relative_to(REPO))] = hits[:2]
    assert not found, f"absolute paths in records: {found}"


def test_dataset_record_names_the_archive_not_its_path(archive):
    ds = data.load(archive, None)
    assert ds.record["source"] == archive.name
    assert not ds.record["source"].startswith("/")
