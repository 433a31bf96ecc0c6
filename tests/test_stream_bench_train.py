"""``python -m tstudy.bench --data stream --train`` in its tiny CPU form (tstudy/stream_train_bench.py):
the whole pipeline (synthetic JPEGs -> packed store -> classic DataLoader loop and the engine's
streamed path with K packed students) runs and writes a JSON whose numbers hang together. A
pipeline check: the numbers mean nothing on this CPU."""
import json

from tstudy import bench, stream_bench, stream_train_bench


def test_tiny_stream_train_bench_writes_every_setting(tmp_path):
    out = tmp_path / "train.json"
    report = bench.main(["--data", "stream", "--train", "--tiny", "--device", "cpu", "--ks", "1,2",
                         "--workers", "1", "--steps", "2", "--warmup", "1", "--share-steps", "2",
                         "--keep", str(tmp_path / "imgs"), "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["benchmark"] == "stream-train" and report["complete"] and report["tiny"]
    assert "mean nothing" in report["note"]
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    s = report["settings"]
    assert (s["teacher"], s["student"], s["workers"], s["ks"], s["precision"]) == ("cnn_l", "cnn_s", 1, [1, 2], "fp32")
    rows = report["results"]
    assert [(r["setting"], r["k"]) for r in rows] == [("classic", 1), ("tstudy", 1), ("tstudy", 2)]
    assert not [r for r in rows if "error" in r]
    base = rows[0]["student_images_per_s"]
    for r in rows:
        assert r["students"] == r["k"] and r["batch"] == s["batch"] and r["steps"] == 2 and r["share_steps"] == 2
        assert r["batch_images_per_s"] > 0
        assert r["student_images_per_s"] == r["batch_images_per_s"] * r["k"]
        assert r["ratio_to_classic"] == r["student_images_per_s"] / base
        assert 0.0 <= r["decoder_share"] <= 1.0
        wait, step = r["data_wait_ms_per_step"], r["synced_step_ms"]
        assert abs(r["decoder_share"] - wait / (wait + step)) < 1e-9
        assert r["gpu_busy_pct"] is None  # no GPU: skipped, as the note says
    assert rows[0]["ratio_to_classic"] == 1.0
    assert rows[1]["graph"] == "eager steps (CUDA graph off)" and "impl" not in rows[1]
    assert rows[2]["impl"] == "grouped"  # K = 2: one packed network
    # the images and the packed store are kept (and reused) under --keep
    assert any(p.name.startswith("store-synth-48") for p in (tmp_path / "imgs").iterdir())


def test_stream_bench_routes_train():
    assert stream_bench.requested(["--data", "stream", "--train"])
    assert stream_train_bench.options(["--data", "stream", "--train"]).ks is None
    assert 1 <= stream_train_bench.default_workers() <= stream_train_bench.MAX_WORKERS


def test_a_failing_setting_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    real = stream_train_bench.tstudy

    def tstudy(*args, **kw):
        if args[-2] == 2:  # k
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kw)

    monkeypatch.setattr(stream_train_bench, "tstudy", tstudy)
    report = bench.main(["--data", "stream", "--train", "--device", "cpu", "--only", "tstudy", "--ks", "2,1",
                         "--workers", "0", "--steps", "1", "--warmup", "0", "--share-steps", "1",
                         "--out", str(tmp_path / "t.json")])
    failed, ok = report["results"]
    assert failed == {"setting": "tstudy", "k": 2, "students": 2, "batch": 8,
                      "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert ok["k"] == 1 and ok["student_images_per_s"] > 0 and ok["ratio_to_classic"] is None
    assert report["complete"]
