"""metrics.arrow, the per-run summary: the engine writes it when a run finishes or diverges; collect
reads it instead of metrics.parquet when it is valid, and the table is the same to the byte with
summaries, without (runs from before them), mixed, and with summaries that are stale, truncated,
damaged, of another version or of another run (all read from parquet instead); collect writes
nothing into run directories."""
import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from test_collect import assert_same_table, build_varied_root, legacy_collect, metrics_rows, write_run
from tstudy import RunConfig, run_summary
from tstudy import results_table
from tstudy import store as store_module
from tstudy.engine import RunEnv, train_run
from tstudy.results import collect, update_results
from tstudy.run_summary import KEY, SUMMARY, read_summary, write_summary
from tstudy.store import DIVERGED, DONE, RunStore


@pytest.fixture(autouse=True)
def _files_settle_at_once(monkeypatch):
    monkeypatch.setattr(store_module, "SETTLE_NS", 0)


def parquet_table(d):
    with pa.OSFile(str(d / "metrics.parquet")) as f:
        return pq.ParquetFile(f, pre_buffer=False).read(use_threads=False)


def assert_valid_summary(d):
    t = read_summary(d)
    assert t is not None and t.equals(parquet_table(d), check_metadata=True)
    assert t.schema.serialize().to_pybytes() == parquet_table(d).schema.serialize().to_pybytes()


# --------------------------------------------------------------------------- the engine writes it
def test_engine_writes_a_summary_when_a_run_finishes_or_diverges(tmp_path, teacher_cfg):
    store = RunStore(tmp_path, "s")
    assert train_run(teacher_cfg, store, RunEnv()).status == DONE
    assert_valid_summary(store.run_dir(teacher_cfg))
    cfg = RunConfig(dataset="digits", model="mlp_s", epochs=3, lr=1e30, momentum=0.0)
    assert train_run(cfg, store, RunEnv()).status == DIVERGED
    assert_valid_summary(store.run_dir(cfg))


def test_a_summary_never_fails_its_run(tmp_path):
    assert write_summary(tmp_path) is None  # no metrics.parquet: nothing written, no error
    assert not (tmp_path / SUMMARY).exists()


# --------------------------------------------------------------------------- what is trusted
def run_dir(tmp_path, acc=90.0, extra=None):
    cfg = RunConfig(dataset="digits", model="mlp_s", method="ce", epochs=2, eval_epochs=(1,))
    d = tmp_path / "run"
    d.mkdir(exist_ok=True)
    frame = pd.DataFrame(metrics_rows(cfg, acc))
    if extra:
        frame = frame.assign(**extra)
    frame.to_parquet(d / "metrics.parquet", index=False)
    return d


def test_a_valid_summary_is_the_parquet_table(tmp_path):
    d = run_dir(tmp_path)
    assert read_summary(d) is None  # none yet
    write_summary(d)
    assert_valid_summary(d)
    moved = tmp_path / "copy"
    shutil.copytree(d, moved)  # new directory, new file times: still valid (it names neither)
    assert_valid_summary(moved)


def damage(d, how):
    s, m = d / SUMMARY, d / "metrics.parquet"
    if how == "truncated":
        s.write_bytes(s.read_bytes()[: s.stat().st_size // 2])
    elif how == "tail cut":
        s.write_bytes(s.read_bytes()[:-7])
    elif how == "garbage":
        s.write_bytes(b"not an arrow file" * 10)
    elif how == "empty":
        s.write_bytes(b"")
    elif how == "stale":  # metrics.parquet rewritten after the summary
        pd.DataFrame(metrics_rows(RunConfig(dataset="digits", model="mlp_s", method="ce", epochs=2,
                                            eval_epochs=(1,)), acc=50.0)).to_parquet(m, index=False)
    elif how == "parquet truncated":
        m.write_bytes(m.read_bytes()[:-10])
    elif how == "parquet gone":
        m.unlink()
    elif how in ("other version", "no stamp"):
        r = ipc.open_file(pa.py_buffer(s.read_bytes()))
        stamp = json.loads(r.metadata[KEY])
        stamp["version"] = run_summary.VERSION + 1
        meta = {KEY: json.dumps(stamp).encode()} if how == "other version" else {b"other": b"1"}
        t = r.read_all()
        with ipc.new_file(str(s), t.schema, metadata=meta) as w:
            w.write_table(t)
    else:
        raise AssertionError(how)


HARMS = ["truncated", "tail cut", "garbage", "empty", "stale", "parquet truncated", "parquet gone",
         "other version", "no stamp"]


@pytest.mark.parametrize("how", HARMS)
def test_a_bad_summary_is_not_trusted(tmp_path, how):
    d = run_dir(tmp_path)
    write_summary(d)
    damage(d, how)
    assert read_summary(d) is None


# --------------------------------------------------------------------------- collect
def with_summaries(study, store, which):
    """Summaries for the runs ``which(i)`` picks (i: position among the runs on disk); the
    directories on disk, and the names of those given a summary."""
    dirs = [store.run_dir(r) for r in study.runs() if (store.run_dir(r) / "metrics.parquet").exists()]
    return dirs, {d.name for i, d in enumerate(dirs) if which(i) and write_summary(d) is not None}


def used_summaries(monkeypatch):
    """{run id: whether collect read it from its summary}"""
    used = {}

    def counted(d):
        t = read_summary(d)
        used[str(d).rsplit("/", 1)[-1]] = t is not None
        return t

    monkeypatch.setattr(results_table, "read_summary", counted)
    return used


@pytest.mark.parametrize("mode", ["all", "none", "mixed", "damaged"])
def test_collect_with_and_without_summaries_is_the_same_table(tmp_path, monkeypatch, mode):
    study, store = build_varied_root(tmp_path / "root")
    which = {"all": lambda i: True, "none": lambda i: False, "mixed": lambda i: i % 2 == 0,
             "damaged": lambda i: True}[mode]
    dirs, valid = with_summaries(study, store, which)
    if mode == "damaged":  # one harm per run, then one run's metrics.parquet rewritten (new rows, a new column)
        for d, how in zip(dirs, ["truncated", "tail cut", "garbage", "empty", "other version", "no stamp"]):
            damage(d, how)
            valid.discard(d.name)
        stale = dirs[6]
        cfg = next(r for r in study.runs() if r.run_id == stale.name)
        write_run(store, cfg, frame=pd.DataFrame(metrics_rows(cfg, acc=50.0)).assign(diag_x=1.5))
        valid.discard(stale.name)
    old, old_skipped = legacy_collect(study, store.root)
    used = used_summaries(monkeypatch)
    new, new_skipped = collect(study, store)
    assert new_skipped == old_skipped
    assert_same_table(old, new, tmp_path)
    assert used == {rid: rid in valid for rid in used}
    assert (sum(used.values()) > 0) == (mode != "none") and (mode != "mixed" or not all(used.values()))
    if mode == "all":
        assert len(used) - sum(used.values()) == 1  # the unreadable parquet file: it had no summary to write
    if mode == "damaged":
        assert {d.name for d in dirs[:7]} <= set(used)  # each harmed run was read (from parquet)
        assert (new.loc[new["run_id"] == stale.name, "acc1"] < 60).all() and "diag_x" in new


def test_update_results_reads_summaries_and_writes_nothing_into_run_dirs(tmp_path, monkeypatch):
    study, store = build_varied_root(tmp_path / "root")
    _, valid = with_summaries(study, store, lambda i: i % 3 != 0)
    before = {p: p.stat().st_mtime_ns for d in store.runs_dir.iterdir() for p in d.iterdir()}
    used = used_summaries(monkeypatch)
    update_results(study, store)
    assert sum(used.values()) > 3 and not all(used.values())
    assert {p: p.stat().st_mtime_ns for d in store.runs_dir.iterdir() for p in d.iterdir()} == before
    monkeypatch.undo()
    old, _ = legacy_collect(study, store.root)
    old.to_parquet(tmp_path / "old.parquet", index=False)
    assert (store.study_dir / "results.parquet").read_bytes() == (tmp_path / "old.parquet").read_bytes()
