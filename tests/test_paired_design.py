"""The paired design (DESIGN.md "Determinism"): runs equal in ``config.PAIR_FIELDS`` (seed, data,
augmentation, batch size, model, init) start from identical weights and are handed identical
batches (images and labels, every step), whatever their method, temperature, teacher or
optimizer, trained alone or as one packed network; the results table's ``pair_id`` says so."""
import hashlib

import torch

from tstudy import RunConfig
from tstudy import engine
from tstudy.config import PAIR_FIELDS
from tstudy.engine import RunEnv, train_run, train_runs
from tstudy.planning import LOSS_SIDE, pack_key
from tstudy.store import DONE, RunStore


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class Recorder:
    """Per run id: its model's weights once built, and what each training step is handed
    ([(epoch, step, digest of the images, digest of the labels)]), alone or packed."""

    def __init__(self, monkeypatch) -> None:
        self.initial: dict[str, dict[str, torch.Tensor]] = {}
        self.batches: dict[str, list[tuple]] = {}
        init, step, packed_step = engine._Student.__init__, engine._Student.step, engine._PackedGroup.step

        def student_init(s, cfg, *a, **k):
            init(s, cfg, *a, **k)
            self.initial[cfg.run_id] = {n: t.clone() for n, t in s.model.state_dict().items()}

        def student_step(s, x, y, v, epoch, i, graphed=False):
            self._record([s], x, y, epoch, i)
            return step(s, x, y, v, epoch, i, graphed)

        def pack_step(p, x, y, v, epoch, i, graphed=False):
            self._record(p.students, x, y, epoch, i)
            return packed_step(p, x, y, v, epoch, i, graphed)

        monkeypatch.setattr(engine._Student, "__init__", student_init)
        monkeypatch.setattr(engine._Student, "step", student_step)
        monkeypatch.setattr(engine._PackedGroup, "step", pack_step)

    def _record(self, students, x, y, epoch, i) -> None:
        entry = (epoch, i, _digest(x), _digest(y))
        for s in students:
            self.batches.setdefault(s.cfg.run_id, []).append(entry)


def test_runs_of_one_seed_start_equal_and_see_the_same_batches(tmp_path, monkeypatch):
    teacher = RunConfig(dataset="digits", model="mlp_l", epochs=1, val_fraction=0.2)
    kd = RunConfig(dataset="digits", model="mlp_s", teacher=teacher, method="kd", temperature=4.0, epochs=2,
                   val_fraction=0.2, augment="crop_flip", batch_size=128)
    packable = [kd.replace(temperature=1.0), kd.replace(temperature=8.0), kd.replace(method="dkd"),
                kd.replace(method="ls"), kd.replace(method="ctkd"), kd.replace(method="kd_shuffled"),
                kd.replace(method="dtkd"), kd.replace(method="ttm")]
    ce = kd.replace(method="ce", teacher=None)
    adam = kd.replace(optimizer="adam", lr=0.01)  # another optimizer: not packable with the others, still paired
    paired = [ce, *packable, adam]
    controls = [kd.replace(seed=1), kd.replace(batch_size=64)]
    assert len({c.pair_id for c in paired}) == 1
    assert len({c.pair_id for c in paired + controls}) == 3
    assert len({pack_key(c) for c in packable}) == 1 and not set(LOSS_SIDE) & set(PAIR_FIELDS)

    rec = Recorder(monkeypatch)
    alone, packed, env = RunStore(tmp_path / "alone", "s"), RunStore(tmp_path / "packed", "s"), RunEnv()
    assert train_run(teacher, alone, env).status == DONE
    assert train_run(teacher, packed, env).status == DONE
    for c in paired + controls:
        assert train_run(c, alone, env).status == DONE
    seen_alone = {c.run_id: rec.batches.pop(c.run_id) for c in paired + controls}
    initial_alone = {c.run_id: rec.initial.pop(c.run_id) for c in paired + controls}
    env.machine = env.machine.replace(pack_mode="network")
    states = train_runs(packable, packed, env)
    assert {s.status for s in states.values()} == {DONE}
    assert "packed network of 8 runs" in (packed.run_dir(packable[0]) / "log.txt").read_text()

    ref = seen_alone[ce.run_id]
    assert len(ref) == 2 * env.data(kd).n_batches(128) and [e for e, *_ in ref].count(1) == len(ref) // 2
    ref_weights = initial_alone[ce.run_id]
    for c in paired:
        assert seen_alone[c.run_id] == ref, c.method
        assert initial_alone[c.run_id].keys() == ref_weights.keys()
        assert all(torch.equal(initial_alone[c.run_id][n], t) for n, t in ref_weights.items()), c.method
    for c in packable:
        assert rec.batches[c.run_id] == ref, c.method
        assert all(torch.equal(rec.initial[c.run_id][n], t) for n, t in ref_weights.items()), c.method
    # the controls: another seed starts elsewhere and draws other batches; another batch size cuts other batches
    seed1, b64 = (seen_alone[c.run_id] for c in controls)
    assert not any(a[2:] == b[2:] for a, b in zip(seed1, ref))
    assert not all(torch.equal(initial_alone[controls[0].run_id][n], t) for n, t in ref_weights.items())
    assert len(b64) != len(ref)
