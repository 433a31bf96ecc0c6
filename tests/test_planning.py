"""The planning core: one set of rules for pending, ready, running and packing, shared by the
local and SLURM executors; `plan`, `status` and `collect` import neither torch nor submitit."""
import subprocess
import sys
import textwrap

from tstudy import RunConfig
from tstudy.planning import make_plan, pack_key, states_with_teachers
from tstudy.store import DIVERGED, DONE, FAILED, INCOMPLETE, NOT_LAUNCHED, RUNNING, RunState

T1 = RunConfig(model="mlp_l", epochs=2)
T2 = T1.replace(seed=1)


def _students(teacher, temps=(1, 2, 4)):
    return [RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=2, temperature=t, seed=teacher.seed)
            for t in temps]


def _plan(runs, status: dict, pack=1, **kw):
    states = states_with_teachers(runs, lambda c: RunState(status.get(c.run_id, NOT_LAUNCHED)))
    return make_plan(runs, states, pack, **kw)


def test_rules_for_finished_running_pending_ready_and_blocked():
    s1, s2 = _students(T1), _students(T2)
    runs = [T1, T2] + s1 + s2
    plan = _plan(runs, {T1.run_id: DONE, s1[0].run_id: DIVERGED, s1[1].run_id: RUNNING, T2.run_id: FAILED})
    assert set(plan.finished) == {T1.run_id, s1[0].run_id} and plan.active == (s1[1].run_id,)
    # T2 failed: it is pending again (relaunched), so its students wait for it
    assert [p.run_ids for p in plan.packs] == [(T2.run_id,), (s1[2].run_id,)] + [(r.run_id,) for r in s2]
    assert [p.after for p in plan.packs] == [None, None, T2.run_id, T2.run_id, T2.run_id]
    # a diverged teacher is final: its students are blocked, with the reason
    plan = _plan([T2] + s2, {T2.run_id: DIVERGED})
    assert not plan.packs and [why for _, why in plan.blocked] == [f"its teacher {T2.run_id} is diverged"] * 3
    # a teacher not in the study and not done blocks too; one done (trained by another study) does not
    assert len(_plan(s2, {}).blocked) == 3 and len(_plan(s2, {T2.run_id: DONE}).packs) == 3


def test_students_wait_for_a_running_teacher_unless_the_executor_cannot():
    s1 = _students(T1)
    plan = _plan([T1] + s1, {T1.run_id: RUNNING})
    assert plan.active == (T1.run_id,) and [p.after for p in plan.packs] == [T1.run_id] * 3
    plan = _plan([T1] + s1, {T1.run_id: RUNNING}, waitable=())
    assert not plan.packs and "not in a job this executor can wait for" in plan.blocked[0][1]
    plan = _plan([T1] + s1, {T1.run_id: INCOMPLETE}, active={T1.run_id: "12_0"}, waitable={T1.run_id: "12_0"})
    assert plan.active == (T1.run_id,) and len(plan.packs) == 3  # queued by the scheduler: not resubmitted


def test_packs_hold_one_pack_key_and_teachers_come_first():
    s1, s2 = _students(T1, (1, 2, 4, 8, 16)), _students(T2, (1, 2))
    plan = _plan(s1 + s2 + [T1, T2], {}, pack=4)  # teachers listed last on purpose
    assert [len(p.runs) for p in plan.packs] == [1, 1, 4, 1, 2]
    assert [p.after for p in plan.packs][:2] == [None, None]
    for p in plan.packs:
        assert len({pack_key(r) for r in p.runs}) == 1 and len({p.after}) == 1


STUDY = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_s", epochs=1)
study = Study(name="light", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=1),
              axes={"temperature": [1, 4]}, options={"slurm": {"partition": "gpu"}, "local": {"workers": 2}})
"""


def test_plan_status_and_collect_import_neither_torch_nor_submitit(tmp_path):
    (tmp_path / "s.py").write_text(STUDY)
    code = textwrap.dedent(f"""
        import sys
        from tstudy.cli import main
        for cmd in ("plan", "status", "collect"):
            assert main([cmd, {str(tmp_path / 's.py')!r}, "--root", {str(tmp_path / 'root')!r}]) == 0
        heavy = sorted(m for m in ("torch", "submitit", "torchvision") if m in sys.modules)
        assert not heavy, heavy
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_pack_splits_into_near_equal_packs_in_order():
    runs = _students(T1, (1, 2, 4, 8, 16))
    plan = _plan(runs, {T1.run_id: DONE}, pack=8)
    (p,) = plan.packs
    parts = p.split(2)
    assert [len(q.runs) for q in parts] == [3, 2] and sum((q.runs for q in parts), ()) == p.runs
    assert [len(q.runs) for q in p.split(9)] == [1] * 5 and p.split(1) == [p]
