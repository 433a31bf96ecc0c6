"""No run id of an existing study changes: the ids of every study file in studies/ are pinned
(count and a digest of the sorted ids) in data/study_run_ids.json. A new study file is pinned by
adding its line (the test prints it); an id that changes means a field's hashing changed."""
import hashlib
import json
from pathlib import Path

import pytest

from tstudy.study import load_study

REPO = Path(__file__).resolve().parents[1]
PINNED = json.loads((Path(__file__).with_name("data") / "study_run_ids.json").read_text())
STUDY_FILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "studies").rglob("*.py")
                     if "study = Study(" in p.read_text())


def _ids(path: str) -> dict:
    ids = sorted(r.run_id for r in load_study(REPO / path).runs())
    return {"runs": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def test_every_study_file_is_pinned():
    missing = [f for f in STUDY_FILES if f not in PINNED]
    assert not missing, "pin them in tests/data/study_run_ids.json: " + json.dumps({f: _ids(f) for f in missing})


@pytest.mark.parametrize("path", sorted(PINNED))
def test_run_ids_of_study_files_are_unchanged(path):
    assert _ids(path) == PINNED[path]
