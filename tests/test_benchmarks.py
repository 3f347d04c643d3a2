"""The benchmarks run and record what they claim; their FLOP counts agree with torch's counter; the
README's performance tables are the ones scripts/bench_tables.py renders from the committed records
(scripts/make_results.py puts them there)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import bench_capture, bench_causal, bench_synthetic, bench_train, harness
from probing.models.loading import load_clip
from probing.models.text_tower import TextTower
from scripts import bench_tables
from tests.conftest import REPO


def test_flop_formula_counts_what_torch_counts(write_config):
    from torch.utils.flop_counter import FlopCounterMode

    model, _, tokenizer = load_clip(write_config("tiny-flops", layers=3, heads=4, text_width=64))
    tower = TextTower.from_model(model)
    tokens = tokenizer(["a red circle but no blue square next to it", "a dog", "not a cat"])
    length = int(tower.eot_positions(tokens).max()) + 1
    for run, expected in ((lambda: tower.encode(tokens, trim=True), harness.text_forward_flops(tower, 3, length)),
                          (lambda: model.encode_text(tokens), harness.text_forward_flops(tower, 3, tower.n_ctx))):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        assert counter.get_total_flops() == expected
    lengths = np.array([3, 5, 9, 9])
    assert harness.useful_flops(tower, lengths) == sum(harness.text_forward_flops(tower, 1, n) for n in lengths)
    assert harness.batched_flops(tower, lengths, [np.array([0, 2]), np.array([1, 3])]) == (
        harness.text_forward_flops(tower, 2, 9) * 2)


def test_interleaved_rounds_rotate_and_warm_up():
    calls = []
    times = harness.interleaved(
        {name: (lambda name=name: calls.append(name)) for name in "abc"}, 3, torch.device("cpu")
    )
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}
    entry = harness.rate_entry([1.0, 2.0, 4.0], 8e9, 8e9, useful_flops=2e9, items=10)
    assert entry["median_s"] == 2.0 and entry["relative_spread"] == pytest.approx(0.75)
    assert entry["share_of_matmul_rate"] == pytest.approx(0.5) and entry["useful_fraction"] == pytest.approx(0.25)
    assert entry["items_per_s"] == 5.0


def test_capture_benchmark_records_identical_outputs_and_padding(write_config, tmp_path, capsys):
    path = bench_capture.main(["--model", str(write_config("tiny-bench")), "--captions", "40", "--rounds", "1",
                               "--token-budgets", "60", "--batch-size", "16", "--out", str(tmp_path / "capture.json")])
    record = json.loads(path.read_text())
    assert record["machine"]["torch_threads"] == 1 and set(record["captions"]) == {"negbench", "synthetic"}
    for result in record["captions"].values():
        variants = result["variants"]
        assert set(variants) == {"encode_text_full", "hooks_trimmed", "hooks_budget60", "capture_sorted128",
                                 "capture_budget60"}
        assert all(entry["max_abs_difference"] < 1e-4 for entry in variants.values())
        # full context computes the most, the budget no more than fixed-size trimmed batches
        assert (
            variants["encode_text_full"]["flops"]
            > variants["hooks_trimmed"]["flops"]
            >= variants["hooks_budget60"]["flops"]
        )
        assert all(0 < entry["useful_fraction"] <= 1 for entry in variants.values())
        assert variants["hooks_budget60"]["flops"] == variants["capture_budget60"]["flops"]
    assert "capture_budget60" in capsys.readouterr().out


def test_train_benchmark_runs_every_loop(write_config, tmp_path):
    path = bench_train.main(["--model", str(write_config("tiny-bench-train", layers=2)), "--batch-size", "4",
                             "--rounds", "1", "--steps-per-call", "1", "--flop-steps", "1", "--token-budgets", "20",
                             "--out", str(tmp_path / "train.json")])
    record = json.loads(path.read_text())
    for result in record["captions"].values():
        variants = result["variants"]
        assert set(variants) == {"toolkit", "toolkit_budget20", "openclip_locked", "openclip_trimmed_text",
                                 "openclip_cached_images"}
        # the image tower every step and the full context cost FLOPs the toolkit does not spend
        assert (
            variants["openclip_locked"]["flops"]
            > variants["openclip_trimmed_text"]["flops"]
            > variants["toolkit"]["flops"]
        )
        assert (
            variants["openclip_locked"]["flops"]
            > variants["openclip_cached_images"]["flops"]
            > variants["toolkit"]["flops"]
        )
        assert variants["toolkit"]["useful_fraction"] <= 1 and result["toolkit_caching_s"] > 0


def test_causal_and_synthetic_benchmarks(write_config, tmp_path):
    path = bench_causal.main(["--model", str(write_config("tiny-bench-causal", layers=2)), "--n-causal", "20",
                              "--rounds", "1", "--out", str(tmp_path / "causal.json")])
    record = json.loads(path.read_text())
    for result in record["captions"].values():
        variants = result["variants"]
        assert variants["ablated_text"]["flops"] < variants["hooked_per_layer"]["flops"]
        assert variants["ablated_text"]["useful_fraction"] > variants["hooked_per_layer"]["useful_fraction"]
        assert all(entry["max_abs_difference"] < 1e-6 for entry in variants.values())
    path = bench_synthetic.main(
        ["--n", "20", "--rounds", "1", "--image-size", "32", "--out", str(tmp_path / "syn.json")]
    )
    assert json.loads(path.read_text())["sets"]["scope_pairs"]["items_per_s"] > 0


def test_tables_render_the_records(tmp_path):
    records = bench_tables.load_records()
    assert ("capture", "cpu") in records and ("train", "cpu") in records
    text = bench_tables.render(records)
    capture = records[("capture", "cpu")]["captions"]["negbench"]["variants"]
    ratio = capture["encode_text_full"]["median_s"] / capture["capture_budget2560"]["median_s"]
    assert "| NegBench captions | `capture_budget2560` |" in text and f"| {ratio:.2f}x |" in text
    if ("capture", "cuda") not in records:
        assert "GPU (bfloat16) throughput has not been measured" in text
    readme = (REPO / "README.md").read_text()
    assert text.strip() in readme, "README tables are stale: run python scripts/make_results.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there: the CUDA path runs instead of being skipped")
def test_gpu_benchmarks_say_they_are_skipped_without_a_gpu(tmp_path, capsys):
    for bench in (bench_capture, bench_train):
        with pytest.raises(SystemExit) as stopped:
            bench.main(["--device", "cuda", "--out", str(tmp_path / "gpu.json")])
        assert stopped.value.code == 0 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()
