"""collect at scale: the column-wise table equals the one the per-run implementation (kept
below, as it was) gives for the same root; a re-collect reads only what changed and equals a full
collect; an interrupted collect leaves the previous table; state checks still catch damaged
files; seeds expand to the same runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tstudy import RunConfig, Study, atomic
from tstudy.results import MANIFEST, RESULTS, collect, config_columns, update_results
from tstudy import store as store_module
from tstudy.store import DIVERGED, DONE, INCOMPLETE, RunStore, write_status
from tstudy.study import load_study

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the implementation before
def legacy_collect(study, root):
    """tstudy.results.collect before the column-wise rewrite (state through check_config)."""
    store = RunStore(root, study.name)
    frames, skipped = [], []
    runs = study.runs()
    teacher_ids = {t.run_id for t in study.teachers()}
    for cfg in runs:
        state = RunStore(root, study.name).state(cfg.run_id)  # a fresh store: no fast path, nothing remembered
        if state.status not in (DONE, DIVERGED):
            skipped.append(f"{cfg.run_id}: {state.status}" + (f" ({state.reason})" if state.reason else ""))
            continue
        try:
            m = pd.read_parquet(store.run_dir(cfg) / "metrics.parquet")
        except Exception as e:  # noqa: BLE001
            skipped.append(f"{cfg.run_id}: metrics.parquet unreadable ({type(e).__name__})")
            continue
        if m.empty and state.status == DIVERGED:
            m = pd.DataFrame([{"epoch": state.epoch, "split": "test"}])
        cols = config_columns(cfg, "teacher" if cfg.run_id in teacher_ids else "student")
        cols.update(status=state.status, study=study.name,
                    diverged_epoch=state.epoch if state.status == DIVERGED else None)
        for k, v in cols.items():
            m[k] = [v] * len(m)
        frames.append(m)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "epoch", "split"])
    if frames:
        front = [c for c in ["study", "run_id", "role", "status", "epoch", "split", "acc1", "acc5", "loss"] if c in df]
        df = df[front + [c for c in df.columns if c not in front]]
    return df, skipped


# --------------------------------------------------------------------------- a varied root
TEACHER = RunConfig(dataset="digits", model="mlp_l", epochs=2)


def varied_study(temps=(1, 4)):
    return Study(name="varied", base=RunConfig(dataset="digits", model="mlp_s", teacher=TEACHER, method="kd",
                                               epochs=2, eval_epochs=(1,)),
                 axes={("method", "method_params"): [("ce", {}), ("kd", {}), ("ls", {}), ("kd_topk", {"k": 3})],
                       "temperature": list(temps)}, seeds=[0, 1])


def metrics_rows(cfg, acc=90.0):
    """Rows shaped like the engine's: per evaluated epoch a train and a test row."""
    rows = []
    for e in cfg.eval_points:
        for split in ("train", "test"):
            r = {"epoch": e, "split": split, "acc1": acc + e, "acc5": 99.0, "loss": 0.5, "lr": 0.05,
                 "train_ce": 0.4}
            if cfg.method != "ce":
                r["train_kd"] = 0.1
            r.update(train_loss=0.5, train_running_acc1=80.0, wall_time_s=1.5, images_per_s=1000.0)
            if cfg.method == "ls":
                r["diag_epsilon"] = 0.1 * (cfg.temperature or 1)
            r.update(tstudy_version="0.1.0", git_commit="abc", torch_version="2", device="cpu", host="h")
            if cfg.teacher is not None:
                r.update(teacher_acc1=95.0, teacher_acc5=99.5)
            r["pack"] = 1
            if cfg.method == "kd_topk":
                r["const_k"] = 3.0
            rows.append(r)
    return rows


def write_run(store, cfg, status=DONE, frame=None, epoch=None):
    d = store.run_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    atomic.write_json(d / "config.json", cfg.to_dict())
    atomic.write_parquet(d / "metrics.parquet", pd.DataFrame(metrics_rows(cfg)) if frame is None else frame)
    if status == DONE:
        atomic.write_bytes(d / "model.pt", b"weights")
    write_status(d, status, epoch=cfg.epochs if epoch is None else epoch)


def build_varied_root(root):
    """Done runs of several metrics shapes, diverged runs (with and without rows), and runs
    collect leaves out: running, truncated metrics, unreadable metrics, never launched."""
    study = varied_study()
    store = RunStore(root, study.name)
    runs = study.runs()
    ce0, ce1 = [r for r in runs if r.method == "ce" and r.teacher is None and r.model == "mlp_s"]
    kd = [r for r in runs if r.method == "kd"]
    ls = [r for r in runs if r.method == "ls"]
    topk = [r for r in runs if r.method == "kd_topk"]
    special = {ce1.run_id, kd[1].run_id, kd[2].run_id, kd[3].run_id, ls[1].run_id, ls[2].run_id, ls[3].run_id,
               topk[1].run_id, topk[2].run_id, topk[3].run_id}  # ls[3]: never launched
    for r in runs:
        if r.run_id not in special:
            write_run(store, r)
    rows = metrics_rows(ce1)
    write_run(store, ce1, frame=pd.DataFrame(rows).assign(git_commit=None))  # a null column: object
    write_run(store, kd[1], frame=pd.DataFrame(metrics_rows(kd[1])).assign(diag_flag=True))  # bool
    write_run(store, kd[2], frame=pd.DataFrame(metrics_rows(kd[2])).assign(diag_count=7))  # int, one run only
    write_run(store, kd[3], DIVERGED, frame=pd.DataFrame([]), epoch=1)  # diverged in its first epoch
    write_run(store, ls[1], DIVERGED, frame=pd.DataFrame(metrics_rows(ls[1])[:2]).assign(acc1=np.nan), epoch=2)
    bad = pd.DataFrame(metrics_rows(ls[2]))
    bad["pack"] = pd.array([1, None, 1, 1], dtype=object)  # an int column with a missing value
    write_run(store, ls[2], frame=bad)
    write_run(store, topk[1], status="running", epoch=1)
    write_run(store, topk[2])
    p = store.run_dir(topk[2]) / "metrics.parquet"
    p.write_bytes(p.read_bytes()[:-300] + b"PAR1")  # magic intact, footer broken: unreadable
    write_run(store, topk[3])
    p = store.run_dir(topk[3]) / "metrics.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # truncated
    return study, store


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, tmp_path):
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.columns) == list(b.columns) and list(a.dtypes) == list(b.dtypes)
    pa_, pb = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.to_parquet(pa_, index=False)
    b.to_parquet(pb, index=False)
    assert pq.read_table(pa_).equals(pq.read_table(pb), check_metadata=True)
    assert pa_.read_bytes() == pb.read_bytes()


# --------------------------------------------------------------------------- tests
@pytest.fixture(autouse=True)
def _files_settle_at_once(monkeypatch):
    """These tests write files and collect at once; a file is trusted by its stat only once it is
    older than SETTLE_NS (test_a_run_written_just_now_is_read_again tests that rule)."""
    monkeypatch.setattr(store_module, "SETTLE_NS", 0)


def test_table_is_identical_to_the_per_run_implementation(tmp_path):
    study, store = build_varied_root(tmp_path / "root")
    old, old_skipped = legacy_collect(study, store.root)
    new, new_skipped = collect(study, store)
    assert new_skipped == old_skipped and len(old_skipped) == 4
    reasons = " ".join(old_skipped)
    assert "running" in reasons or "incomplete" in reasons
    assert "truncated or corrupt" in reasons and "unreadable" in reasons and "not launched" in reasons
    assert {"diag_flag", "diag_count", "param_k", "diag_epsilon"} <= set(new.columns)
    assert (new["status"] == DIVERGED).sum() == 3  # the empty diverged run gets its one row
    assert_same_table(old, new, tmp_path)


def test_collect_of_nothing_is_the_empty_table(tmp_path):
    study = varied_study()
    old, _ = legacy_collect(study, tmp_path)
    new, skipped = collect(study, RunStore(tmp_path, study.name))
    pd.testing.assert_frame_equal(old, new)
    assert len(skipped) == len(study.runs())


def read_table(store):
    return pd.read_parquet(store.study_dir / RESULTS)


def full_table(study, store, tmp_path):
    df, _ = collect(study, store)
    p = tmp_path / "full.parquet"
    df.to_parquet(p, index=False)
    return pd.read_parquet(p)


def test_recollect_reads_only_what_changed_and_equals_a_full_collect(tmp_path):
    study, store = build_varied_root(tmp_path / "root")
    path, c = update_results(study, store)
    n_in = c.runs
    assert c.read == n_in + 1 and c.reused == 0  # + the unreadable one
    pd.testing.assert_frame_equal(read_table(store), full_table(study, store, tmp_path))
    # nothing new: nothing read, nothing written
    before = (path.stat().st_mtime_ns, (store.study_dir / MANIFEST).stat().st_mtime_ns)
    _, c = update_results(study, store)
    assert c.table is None and c.read == 0 and c.runs == n_in
    assert (path.stat().st_mtime_ns, (store.study_dir / MANIFEST).stat().st_mtime_ns) == before
    # one run's metrics change, one run finishes, a new temperature adds runs, one run loses its model
    runs = study.runs()
    kd0 = next(r for r in runs if r.method == "kd")
    write_run(store, kd0, frame=pd.DataFrame(metrics_rows(kd0, acc=50.0)))
    topk1 = [r for r in runs if r.method == "kd_topk"][1]
    write_run(store, topk1)
    grown = varied_study(temps=(1, 4, 8))
    for r in grown.runs():
        if r.temperature == 8:
            write_run(store, r)
    ls0 = next(r for r in runs if r.method == "ls")
    (store.run_dir(ls0) / "model.pt").unlink()
    _, c = update_results(grown, store)
    new_runs = sum(r.temperature == 8 for r in grown.runs())
    assert c.read == 2 + new_runs and c.reused == n_in - 2  # changed, finished, new
    assert any(ls0.run_id in line and "model.pt is missing" in line for line in c.skipped)
    got = read_table(store)
    pd.testing.assert_frame_equal(got, full_table(grown, store, tmp_path))
    assert (got.loc[got["run_id"] == kd0.run_id, "acc1"] < 60).all()
    # the study shrinks back: the same table as a full collect, without reading anything
    _, c = update_results(study, store)
    assert c.read == 0 and c.table is not None
    pd.testing.assert_frame_equal(read_table(store), full_table(study, store, tmp_path))


def test_a_run_written_just_now_is_read_again(tmp_path, monkeypatch):
    """File times are coarse: a file that changed just before it was read could change again
    with the same stat key, so it is trusted only once it has settled."""
    study, store = build_varied_root(tmp_path / "root")
    monkeypatch.setattr(store_module, "SETTLE_NS", 3600 * 10**9)  # every file is fresh
    _, c = update_results(study, store)
    _, c = update_results(study, store)
    assert c.table is not None and c.reused == 0 and c.read == c.runs + 1
    kd0 = next(r for r in study.runs() if r.method == "kd")
    assert store.state(kd0).status == DONE
    assert not store._checked  # nothing remembered
    monkeypatch.setattr(store_module, "SETTLE_NS", 0)
    update_results(study, store)
    _, c = update_results(study, store)
    assert c.table is None and c.read == 0


def test_a_table_written_by_something_else_voids_the_manifest(tmp_path):
    study, store = build_varied_root(tmp_path / "root")
    path, c = update_results(study, store)
    df = read_table(store)
    df.iloc[::-1].reset_index(drop=True).to_parquet(path, index=False)  # rows moved by hand
    _, c = update_results(study, store)
    assert c.reused == 0 and c.read == c.runs + 1
    pd.testing.assert_frame_equal(read_table(store), full_table(study, store, tmp_path))


def test_an_interrupted_collect_leaves_the_previous_table(tmp_path, monkeypatch):
    study, store = build_varied_root(tmp_path / "root")
    path, _ = update_results(study, store)
    manifest = store.study_dir / MANIFEST
    before = path.read_bytes(), manifest.read_bytes()
    kd0 = next(r for r in study.runs() if r.method == "kd")
    write_run(store, kd0, frame=pd.DataFrame(metrics_rows(kd0, acc=50.0)))

    real = pd.DataFrame.to_parquet

    def killed(self, p, **kw):  # half a file, then the process is interrupted
        real(self, p, **kw)
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", killed)
    with pytest.raises(KeyboardInterrupt):
        update_results(study, store)
    monkeypatch.undo()
    assert (path.read_bytes(), manifest.read_bytes()) == before
    assert not [p for p in store.study_dir.iterdir() if p.name.startswith(".tmp-")]
    assert not (store.study_dir / "collect.lock").exists()

    def no_manifest(*a, **k):  # interrupted between the table and its manifest
        raise KeyboardInterrupt

    monkeypatch.setattr("tstudy.results_manifest.write", no_manifest)
    with pytest.raises(KeyboardInterrupt):
        update_results(study, store)
    monkeypatch.undo()
    assert manifest.read_bytes() == before[1] and path.read_bytes() != before[0]
    _, c = update_results(study, store)
    assert c.reused == 0  # the manifest names the previous table: everything is read again
    pd.testing.assert_frame_equal(read_table(store), full_table(study, store, tmp_path))


def test_state_checks_see_damage_after_a_good_check(tmp_path):
    """Checks are remembered in a process only while the file's stat is unchanged."""
    study, store = build_varied_root(tmp_path / "root")
    kd0, kd1 = [r for r in study.runs() if r.method == "kd"][:2]
    assert store.state(kd0).status == DONE and store.state(kd0).status == DONE
    m = store.run_dir(kd0) / "metrics.parquet"
    m.write_bytes(m.read_bytes()[:-10])
    assert store.state(kd0).status == INCOMPLETE and "truncated" in store.state(kd0).reason
    write_run(store, kd0)
    assert store.state(kd0).status == DONE
    cfg = store.run_dir(kd0) / "config.json"
    cfg.write_text(json.dumps(kd1.to_dict()))  # another run's config
    st = store.state(kd0)
    assert st.status == INCOMPLETE and "hashes to" in st.reason
    d = kd0.to_dict()
    cfg.write_text(json.dumps(d))  # same config, other formatting: still this run's
    assert store.state(kd0).status == DONE
    d["nesterov"] = 0  # 0 == False in Python, but not a valid config
    cfg.write_text(json.dumps(d))
    assert store.state(kd0).status == INCOMPLETE and "unreadable" in store.state(kd0).reason


def test_states_of_runs_never_launched_cost_no_stat(tmp_path):
    study = varied_study()
    store = RunStore(tmp_path, study.name)
    assert {s.status for s in store.states(study.runs()).values()} == {"not launched"}


def test_seeds_are_copies_equal_to_replaced_configs():
    study = load_study(REPO / "studies" / "quickstart.py")
    study = Study(**{**study.__dict__, "seeds": [0, 1, 5, 17]})
    for r in study.students():
        for s in (0, 3, 17):
            a, b = r.with_seed(s), r.replace(seed=s)
            assert a == b and a.run_id == b.run_id and a.canonical() == b.canonical() and hash(a) == hash(b)
    with pytest.raises(Exception, match="seed"):
        study.base.with_seed(-1)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "studies").rglob("*.py")
                                        if "study = Study(" in p.read_text()))
def test_config_json_round_trips_to_the_run_id(path):
    """The fast config check's premise: what tstudy writes parses back to the same run."""
    for r in load_study(REPO / path).runs():
        assert RunConfig.from_dict(json.loads(atomic.json_bytes(r.to_dict()))).run_id == r.run_id


def test_collect_command_says_what_it_read(tmp_path):
    study, store = build_varied_root(tmp_path / "root")
    f = tmp_path / "varied.py"
    f.write_text("from tests.test_collect import varied_study\nfrom tstudy import store\n"
                 "store.SETTLE_NS = 0  # as _files_settle_at_once does in this process\nstudy = varied_study()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = lambda: subprocess.run([sys.executable, "-m", "tstudy.cli", "collect", str(f), "--root", str(store.root)],
                                 capture_output=True, text=True, env=env, timeout=120)
    first, second = run(), run()
    assert first.returncode == 0 and "metrics files read]" in first.stdout and "left out" in first.stdout
    assert second.returncode == 0 and "[unchanged]" in second.stdout


def test_a_config_json_without_default_fields_takes_the_fast_check(tmp_path, monkeypatch):
    """A config.json written before a field existed (val_fraction) lacks it: it counts as its
    default, as in the run id, so the run is recognised without building its RunConfig."""
    kd = next(r for r in varied_study().runs() if r.method == "kd" and r.temperature == 1)
    store = RunStore(tmp_path, "varied")
    write_run(store, kd)
    p = store.run_dir(kd) / "config.json"
    old = kd.to_dict()
    del old["val_fraction"], old["teacher"]["val_fraction"]
    p.write_text(json.dumps(old))
    assert store_module.is_config_of(p, kd)
    assert RunConfig.from_dict(old).run_id == kd.run_id

    def slow(*a):
        raise AssertionError("slow path")

    monkeypatch.setattr(RunStore, "check_config", staticmethod(slow))
    assert RunStore(tmp_path, "varied").state(kd).status == DONE
    for changed in ({**old, "val_fraction": 0.2}, {**old, "seed": 5}, {**old, "nesterov": 0}):
        p.write_text(json.dumps(changed))
        assert not store_module.is_config_of(p, kd)
    p.write_text(json.dumps({k: v for k, v in old.items() if k != "temperature"}))  # kd's temperature is not its default
    assert not store_module.is_config_of(p, kd)
