"""The packed-student network (tstudy.packnet) and the engine's ``pack_mode="network"`` path.

Tolerances. A packed network computes the same sums as K separate models, but grouped kernels
(grouped conv, batched matmul) may reassociate float32 sums: per step, logits and gradients
agree to ~1e-6 relative (float64: ~1e-15, i.e. the same maths). Training is chaotic, so
after a few epochs such last-bit differences grow: the engine tests use an MLP student (whose
packed kernels stay within ~1e-5 over 4 epochs) and compare metrics with rtol 1e-4; epochs,
splits and run states exactly. (Changing only the thread count of a sequential CNN run moves
its final losses by up to several percent: bit-for-bit equality is the sequential path's.)
"""
import copy

import pandas as pd
import pytest
import torch

from tstudy import RunConfig
from tstudy.engine import RunEnv, _use_network, make_optimizer, train_run, train_runs
from tstudy.errors import ConfigError
from tstudy.models import MODELS, build_model
from tstudy.packnet import PackedModels, groupable, stack_optimizer_states, unstack_optimizer_state
from tstudy.store import DIVERGED, DONE, FAILED, INCOMPLETE, RunStore

DROP = ["wall_time_s", "images_per_s", "host", "pack", "git_commit"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

SMALL = {"mlp_s", "mlp_l", "cnn_s", "cnn_l"}  # digits-sized: 1 channel, 8 px
SIZE = {"tv_convnext_tiny": 32, "tv_vit_b_16": 16}  # their smallest inputs; the rest 8 px
HEAVY = {"tv_convnext_tiny", "tv_vit_b_16"}  # K=2, batch 2 (no BatchNorm); vmap: float32 only
TWO = {"tv_resnet18", "tv_resnet34", "tv_resnet50"}  # K=2


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """cuDNN convolutions default to TF32 on CUDA: compare in true float32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _models(name, k, dtype=torch.float32, classes=10, device="cpu"):
    cin = 1 if name in SMALL else 3
    size = SIZE.get(name, 8)
    torch.manual_seed(0)
    return [build_model(name, classes, cin, size).to(device, dtype).train() for _ in range(k)], (cin, size)


def _forward_backward(models, x, w, packed, impl="auto", channels_last=False):
    """Logits [K, B, C], parameter gradients {name: [K, ...]} and buffers {name: [K, ...]} after one
    train-mode forward/backward of copies of ``models``, packed or each alone (equal dropout seeds)."""
    models = [copy.deepcopy(m) for m in models]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if packed:
        pm = PackedModels(models, impl=impl, channels_last=channels_last)
        torch.manual_seed(1)
        out = pm(x)
        params, buffers, impl = dict(pm.net.named_parameters()), dict(pm.net.named_buffers()), pm.impl
    else:
        outs = []
        for m in models:
            if channels_last:
                m.to(memory_format=torch.channels_last)
            torch.manual_seed(1)  # what each run's step seed does: equal dropout masks
            outs.append(m(x))
        out = torch.stack(outs)
        named = [dict(m.named_parameters()) for m in models]
        params = {n: _Stacked([d[n] for d in named]) for n in named[0]}
        bufs = [dict(m.named_buffers()) for m in models]
        buffers = {n: torch.stack([d[n] for d in bufs]) for n in bufs[0]}
        impl = None
    ((out * w).sum() + 0.1 * out.square().sum()).backward()
    grads = {n: p.grad for n, p in params.items()}
    return out.detach(), grads, {n: b.detach() for n, b in buffers.items()}, impl


class _Stacked:
    """The K separate parameters of one name, with a stacked ``.grad``."""

    def __init__(self, ps):
        self.ps = ps

    @property
    def grad(self):
        return torch.stack([p.grad for p in self.ps])


def _err(a, b):
    """Max relative difference of two results of :func:`_forward_backward` (logits, grads, buffers)."""
    def rel(xs, ys):
        scale = max(float(y.double().abs().max()) for y in ys) or 1.0
        return max(float((x.double() - y.double()).abs().max()) for x, y in zip(xs, ys)) / scale
    return (rel([a[0]], [b[0]]), rel(list(a[1].values()), [b[1][n] for n in a[1]]),
            rel(list(a[2].values()), [b[2][n] for n in a[2]]) if a[2] else 0.0)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap fallbacks (ConvNeXt, ViT on CPU)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_packs(name, device):
    """Packed forward/backward (logits, every parameter's gradient, BatchNorm running stats after
    the train-mode forward) == K separate models: in float64 to 1e-10 (the same maths); in float32
    to 1e-5 relative. A float32 input can be ill-conditioned (a BatchNorm channel with almost no
    variance on a 1x1 map, a ReLU kink: tv_resnet34/50 at 8 px, now and then a deep CIFAR net):
    there the separate float32 models themselves are > 1e-4 off their float64 result, and the
    packed float32 result must be within 10x that error of float64 (it typically is within 1-3x).
    ConvNeXt and ViT (vmap) are compared in float32 only (float64 is slow on a CPU; the vmap
    path's float64 equality is tested on smaller models)."""
    k, batch = (2, 2) if name in HEAVY else (2 if name in TWO else 3, 8)
    models, (cin, size) = _models(name, k, torch.float32 if name in HEAVY else torch.float64, device=device)
    torch.manual_seed(2)
    x = torch.randn(batch, cin, size, size, dtype=torch.float64, device=device)
    w = torch.randn(k, batch, 10, dtype=torch.float64, device=device)
    if name not in HEAVY:
        sep64 = _forward_backward(models, x, w, packed=False)
        assert max(_err(_forward_backward(models, x, w, packed=True), sep64)) < 1e-10
    m32 = models if name in HEAVY else [copy.deepcopy(m).float() for m in models]
    cl = device == "cuda"
    sep32 = _forward_backward(m32, x.float(), w.float(), packed=False, channels_last=cl)
    packed = _forward_backward(m32, x.float(), w.float(), packed=True, channels_last=cl)
    err = _err(packed, sep32)
    if max(err) > 1e-5:
        assert name not in HEAVY, err
        base = max(_err(sep32, sep64))
        assert base > 1e-4 or device == "cuda", (err, base)  # cuDNN's float32 kernels may differ more
        assert max(_err(packed, sep64)) <= 10 * max(base, 1e-5), (err, base, _err(packed, sep64))
    assert packed[3] == ("grouped" if groupable(m32[0]) else "vmap")
    nbt = [b for n, b in packed[2].items() if n.endswith("num_batches_tracked")]
    assert all(b.tolist() == [1] * k for b in nbt)


@pytest.mark.parametrize("name", ["resnet8", "shufflenetv2", "mlp_s", "tv_mobilenet_v2"])
def test_grouped_and_vmap_are_the_same_maths(name):
    """In float64 both implementations equal the separate models to 1e-12."""
    models, (cin, size) = _models(name, 3, torch.float64)
    x = torch.randn(8, cin, size, size, dtype=torch.float64)
    w = torch.randn(3, 8, 10, dtype=torch.float64)
    sep = _forward_backward(models, x, w, packed=False)
    for impl in ("grouped", "vmap"):
        assert max(_err(_forward_backward(models, x, w, packed=True, impl=impl), sep)) < 1e-12, impl


@pytest.mark.parametrize("name", ["resnet8", "shufflenetv1", "mobilenetv2"])
def test_channels_last_weights(name):
    """Stacked conv weights stored so that each grouped conv weight is a channels_last view."""
    models, (cin, size) = _models(name, 2)
    x, w = torch.randn(8, cin, size, size), torch.randn(2, 8, 10)
    sep = _forward_backward(models, x, w, packed=False, channels_last=True)
    sep64 = _forward_backward([copy.deepcopy(m).double() for m in models], x.double(), w.double(), packed=False)
    packed = _forward_backward(models, x, w, packed=True, channels_last=True)
    if max(_err(packed, sep)) > 1e-5:  # an ill-conditioned input (see test_every_model_packs)
        base = max(_err(sep, sep64))
        assert base > 1e-4 and max(_err(packed, sep64)) <= 10 * base, (_err(packed, sep64), base)
    pm = PackedModels(models, channels_last=True)
    wt = next(m for m in pm.net.modules() if type(m).__name__ == "PackedConv2d").weight
    assert wt.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert wt.flatten(0, 1).data_ptr() == wt.data_ptr()


def test_groupable_zoo():
    grouped = {n for n in MODELS.names() if groupable(_models(n, 1)[0][0])}
    assert grouped == set(MODELS.names()) - {"tv_convnext_tiny", "tv_vit_b_16"}


def test_state_roundtrip_and_eval():
    models, (cin, size) = _models("resnet8", 3)
    pm = PackedModels(models)
    states = pm.unstack_state()
    assert [list(s) for s in states] == [list(models[0].state_dict())] * 3
    for s, m in zip(states, models):
        assert all(torch.equal(s[n], t) for n, t in m.state_dict().items())
    pm.load_states(states[::-1])
    fresh = [copy.deepcopy(m) for m in models]
    pm.copy_to(fresh)
    assert all(torch.equal(fresh[0].state_dict()[n], t) for n, t in models[2].state_dict().items())
    pm.eval()
    x = torch.randn(4, cin, size, size)
    with torch.no_grad():
        ref = torch.stack([m.eval()(x) for m in fresh])
        assert torch.allclose(pm(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opt", [dict(optimizer="sgd"), dict(optimizer="sgd", nesterov=True, weight_decay=1e-3),
                                 dict(optimizer="sgd", momentum=0.0), dict(optimizer="adam", lr=0.01),
                                 dict(optimizer="adamw", lr=0.01, weight_decay=0.05)])
def test_optimizer_is_exact_per_student(opt):
    """Given the same gradients, one optimizer over the stacked parameters (plus each student's
    extra parameters, e.g. CTKD's θ) updates every slice bit-for-bit as the student's own
    optimizer; the per-run state_dicts round-trip through the packed one."""
    cfg = RunConfig(**opt)
    k = 3
    models, _ = _models("cnn_s", k)
    extras = [[torch.nn.Parameter(torch.tensor([0.5 * i]))] for i in range(k)]
    singles = [make_optimizer(cfg, list(m.parameters()) + e) for m, e in zip(models, extras)]
    pm = PackedModels(models)
    pextras = [[torch.nn.Parameter(p.detach().clone()) for p in e] for e in extras]
    n = len(pm.packed_parameters())
    packed = make_optimizer(cfg, pm.packed_parameters() + [p for e in pextras for p in e])
    stack_optimizer_states(packed, n, [o.state_dict() for o in singles], [1] * k)
    for step in range(3):
        torch.manual_seed(step)
        for m, e, o in zip(models, extras, singles):
            for p in list(m.parameters()) + e:
                p.grad = torch.randn_like(p)
        for i, p in enumerate(pm.packed_parameters()):
            p.grad = torch.stack([list(m.parameters())[i].grad for m in models])
        for e, pe in zip(extras, pextras):
            pe[0].grad = e[0].grad.clone()
        for o in singles:
            o.step()
        packed.step()
    for i, p in enumerate(pm.packed_parameters()):
        for kk, m in enumerate(models):
            assert torch.equal(p[kk], list(m.parameters())[i])
    for e, pe in zip(extras, pextras):
        assert torch.equal(e[0], pe[0])
    for kk, o in enumerate(singles):
        sd = unstack_optimizer_state(packed, n, kk, [1] * k, o.state_dict()["param_groups"])
        ref = o.state_dict()
        assert sd["param_groups"] == ref["param_groups"] and sd["state"].keys() == ref["state"].keys()
        for i, st in ref["state"].items():
            assert all(torch.equal(sd["state"][i][key], v) for key, v in st.items())
        o2 = make_optimizer(cfg, list(models[kk].parameters()) + extras[kk])
        o2.load_state_dict(sd)  # the checkpoint format of a run trained alone


@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_one_student_stays_in_its_slice(device):
    models, (cin, size) = _models("resnet8", 3, device=device)
    ref = [copy.deepcopy(m) for m in models]
    pm = PackedModels(models)
    x = torch.randn(8, cin, size, size, device=device)
    out = pm(x)
    bad = out[1].sum() * float("nan")
    (out[0].square().sum() + bad + out[2].square().sum()).backward()
    for m, o in ((ref[0], ref[0](x)), (ref[2], ref[2](x))):
        o.square().sum().backward()
    for i, p in enumerate(pm.packed_parameters()):
        assert torch.isnan(p.grad[1]).all()
        for kk in (0, 2):
            g = list(ref[kk].parameters())[i].grad
            assert torch.isfinite(p.grad[kk]).all()
            assert torch.allclose(p.grad[kk], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()) + 1e-12)


def test_bf16_autocast_forward():
    models, (cin, size) = _models("resnet8", 3)
    pm = PackedModels(models)
    x = torch.randn(4, cin, size, size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = pm(x)
        ref = torch.stack([m(x) for m in copy.deepcopy(models)])
    assert z.dtype == torch.bfloat16 and torch.allclose(z.float(), ref.float(), rtol=0.05, atol=0.05)


# --------------------------------------------------------------------------- engine
def test_pack_mode_choice():
    with pytest.raises(ConfigError, match="^--pack-mode: unknown value"):
        RunEnv(pack_mode="fast")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not _use_network(RunEnv(), cpu, 8) and _use_network(RunEnv(), cuda, 8)
    assert not _use_network(RunEnv(), cuda, 1) and not _use_network(RunEnv(pack_mode="sequential"), cuda, 8)
    assert _use_network(RunEnv(pack_mode="network"), cpu, 2)


def _frames(store, cfg):
    return pd.read_parquet(store.run_dir(cfg) / "metrics.parquet").drop(columns=DROP)


def _assert_close(a, b, rtol=1e-4):
    assert list(a.columns) == list(b.columns)
    num = [c for c in a.columns if a[c].dtype.kind == "f"]
    rest = [c for c in a.columns if c not in num]
    pd.testing.assert_frame_equal(a[rest], b[rest], check_exact=True)
    pd.testing.assert_frame_equal(a[num], b[num], check_exact=False, rtol=rtol, atol=1e-6)


@pytest.fixture
def mlp_kd(kd_cfg):
    return kd_cfg  # mlp_s student, 4 epochs, eval at 2 and 4


@pytest.mark.parametrize("device", DEVICES)
def test_network_equals_sequential(tmp_path, teacher_cfg, mlp_kd, device):
    members = [mlp_kd.replace(temperature=1.0), mlp_kd, mlp_kd.replace(method="kd_shuffled"),
               mlp_kd.replace(method="ctkd"), mlp_kd.replace(method="dtkd"), mlp_kd.replace(method="ls")]
    seq, net = RunStore(tmp_path / "seq", "s"), RunStore(tmp_path / "net", "s")
    for store, mode in ((seq, "sequential"), (net, "network")):
        train_run(teacher_cfg, store, RunEnv(device=device))
        states = train_runs(members, store, RunEnv(device=device, pack_mode=mode))
        assert {s.status for s in states.values()} == {DONE}
    assert "packed network of 6 runs (grouped)" in (net.run_dir(members[0]) / "log.txt").read_text()
    for c in members:
        _assert_close(_frames(seq, c), _frames(net, c))
        a = torch.load(seq.run_dir(c) / "model.pt")
        b = torch.load(net.run_dir(c) / "model.pt")
        assert a.keys() == b.keys()
        rel = {n: float((a[n].float() - b[n].float()).norm() / b[n].float().norm().clamp_min(1e-12)) for n in a}
        assert max(rel.values()) < 1e-3, rel  # relative to each tensor's norm: single elements near 0 may differ more


def test_checkpoint_packed_then_alone_and_back(tmp_path, teacher_cfg, mlp_kd):
    a, b = mlp_kd.replace(temperature=2.0), mlp_kd.replace(method="ctkd")
    ref, store = RunStore(tmp_path / "ref", "s"), RunStore(tmp_path / "p", "s")
    for s in (ref, store):
        train_run(teacher_cfg, s, RunEnv())
    for c in (a, b):
        assert train_run(c, ref, RunEnv()).status == DONE
    # epochs 1-2 packed, then each alone
    states = train_runs([a, b], store, RunEnv(pack_mode="network", stop_after_epoch=2))
    assert {s.status for s in states.values()} == {INCOMPLETE}
    single = build_model(a.model, 10, 1, 8)
    for c, extra in ((a, 0), (b, 1)):  # ctkd's θ is the last parameter of its optimizer
        ck = torch.load(store.run_dir(c) / "checkpoint.pt", weights_only=False)
        assert list(ck["model"]) == list(single.state_dict()) and ck["epoch"] == 2
        assert len(ck["optimizer"]["state"]) == len(list(single.parameters())) + extra
        assert ck["optimizer"]["param_groups"][0]["params"] == list(range(len(list(single.parameters())) + extra))
        assert train_run(c, store, RunEnv()).status == DONE
        _assert_close(_frames(ref, c), _frames(store, c))


def test_alone_then_packed(tmp_path, teacher_cfg, mlp_kd):
    a, b = mlp_kd.replace(method="ctkd"), mlp_kd.replace(temperature=3.0, method="dkd")
    ref, store = RunStore(tmp_path / "ref", "s"), RunStore(tmp_path / "p", "s")
    for s in (ref, store):
        train_run(teacher_cfg, s, RunEnv())
    for c in (a, b):
        train_run(c, ref, RunEnv())
        train_run(c, store, RunEnv(stop_after_epoch=2))  # both alone to epoch 2 ...
    assert {s.status for s in train_runs([a, b], store, RunEnv(pack_mode="network")).values()} == {DONE}
    assert "packed network of 2 runs" in (store.run_dir(a) / "log.txt").read_text()  # ... then packed
    for c in (a, b):
        _assert_close(_frames(ref, c), _frames(store, c))


def test_diverging_member_leaves_the_others(tmp_path, teacher_cfg, mlp_kd):
    good = [mlp_kd, mlp_kd.replace(temperature=2.0)]
    bad = mlp_kd.replace(method_params={"w_kd": 1e30})
    seq, net = RunStore(tmp_path / "seq", "s"), RunStore(tmp_path / "net", "s")
    for store, mode in ((seq, "sequential"), (net, "network")):
        train_run(teacher_cfg, store, RunEnv())
        states = train_runs([good[0], bad, good[1]], store, RunEnv(pack_mode=mode))
        assert states[bad.run_id].status == DIVERGED and states[bad.run_id].epoch == 1
        assert all(states[c.run_id].status == DONE for c in good)
    assert "packed network of 2 runs" in (net.run_dir(good[0]) / "log.txt").read_text()  # rebuilt with K-1
    for c in good:
        _assert_close(_frames(seq, c), _frames(net, c))


def test_failing_method_leaves_the_others(tmp_path, teacher_cfg, mlp_kd, monkeypatch):
    from tstudy.methods.kd import KDTopK

    calls = {"n": 0}
    original = KDTopK.terms

    def flaky(self, z, v, y, epoch):
        calls["n"] += 1
        if epoch == 2 and calls["n"] > 30:
            raise RuntimeError("boom")
        return original(self, z, v, y, epoch)

    monkeypatch.setattr(KDTopK, "terms", flaky)
    good = [mlp_kd, mlp_kd.replace(temperature=2.0)]
    bad = mlp_kd.replace(method="kd_topk")
    seq, net = RunStore(tmp_path / "seq", "s"), RunStore(tmp_path / "net", "s")
    for store, mode in ((seq, "sequential"), (net, "network")):
        calls["n"] = 0
        train_run(teacher_cfg, store, RunEnv())
        states = train_runs([good[0], bad, good[1]], store, RunEnv(pack_mode=mode))
        assert states[bad.run_id].status == FAILED and "boom" in states[bad.run_id].reason
        assert all(states[c.run_id].status == DONE for c in good)
    for c in good:
        _assert_close(_frames(seq, c), _frames(net, c))


def test_network_bf16_runs(tmp_path, teacher_cfg, mlp_kd):
    store = RunStore(tmp_path, "s")
    train_run(teacher_cfg, store, RunEnv())
    members = [mlp_kd.replace(precision="bf16", temperature=t) for t in (1.0, 4.0)]
    assert {s.status for s in train_runs(members, store, RunEnv(pack_mode="network")).values()} == {DONE}
    m = _frames(store, members[0])
    assert m["train_loss"].notna().all() and (m["acc1"] > 50).all()
