"""The benchmarks run and record what they claim; their FLOP counts agree with torch's counter; the
pipeline estimate is items x seconds per item; the README's performance tables and pipeline estimate
are the ones scripts/bench_tables.py renders from the committed records (scripts/make_results.py puts
them there). The benchmarks' real captions come from the vendored subset here (--data-root tests/data)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import bench_build, bench_capture, bench_causal, bench_pipeline, bench_synthetic, bench_train, harness
from probing.clip.loading import load_clip
from probing.clip.text_tower import TextTower
from scripts import bench_tables
from tests.conftest import REPO, TEST_DATA

DATA = ["--data-root", str(TEST_DATA)]  # the real captions: the vendored subset, not the full shared files


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
                               "--token-budgets", "60", "--batch-size", "16", "--out", str(tmp_path / "capture.json"),
                               *DATA])
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
                             "--out", str(tmp_path / "train.json"), *DATA])
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
                              "--rounds", "1", "--out", str(tmp_path / "causal.json"), *DATA])
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


def test_build_benchmark_times_every_part_and_bounds_an_exact_speedup(tmp_path):
    """The embedded build's step, timed in parts: the bound and the estimate follow from the medians."""
    path = bench_build.main(["--rounds", "1", "--out", str(tmp_path / "build.json")])
    record = json.loads(path.read_text())
    median = {name: entry["median_s"] for name, entry in record["variants"].items()}
    assert set(median) == {"data", "step", "step_no_embedding", "warmup_step"} and all(v > 0 for v in median.values())
    saving = max(0.0, median["step"] - median["step_no_embedding"])
    assert record["exact_speedup_bound"] == pytest.approx(median["step"] / (median["step"] - median["data"] - saving))
    assert record["estimated_build_s"] == pytest.approx(250 * median["warmup_step"] + 700 * median["step"])
    assert record["shares_of_step"]["data"] == pytest.approx(median["data"] / median["step"])
    # a contrastive step of batch 128 runs both towers forward and backward: more than 3x the text forward alone
    tower = TextTower.from_model(load_clip("negclip-tiny")[0])
    assert record["variants"]["step"]["flops"] > 3 * harness.text_forward_flops(tower, 128, 8)
    assert "Embedded build" in bench_tables.build_table(record)


def test_tables_render_the_records(tmp_path):
    records = bench_tables.load_records()
    assert ("capture", "cpu") in records and ("train", "cpu") in records
    text = bench_tables.render(records)
    capture = records[("capture", "cpu")]["captions"]["negbench"]["variants"]
    ratio = capture["encode_text_full"]["median_s"] / capture["capture_budget2560"]["median_s"]
    assert "| NegBench captions | `capture_budget2560` |" in text and f"| {ratio:.2f}x |" in text
    if ("capture", "cuda") not in records:
        assert "GPU (bfloat16) throughput has not been measured" in text
    page = (REPO / "docs" / "PERFORMANCE.md").read_text()
    assert text.strip() in page, "docs/PERFORMANCE.md tables are stale: run python scripts/make_results.py"
    assert ("pipeline", "cpu") in records and "CC-Neg pipeline" not in text  # a block of its own
    pipeline = bench_tables.render_pipeline(records)
    total = bench_tables._duration(records[("pipeline", "cpu")]["estimate"]["total_s"])
    assert f"| **total** |  |  |  | **{total}** | not measured (no GPU in this environment) |" in pipeline
    assert pipeline.strip() in page, "docs/PERFORMANCE.md estimate is stale: run python scripts/make_results.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there: the CUDA path runs instead of being skipped")
def test_gpu_benchmarks_say_they_are_skipped_without_a_gpu(tmp_path, capsys):
    for bench in (bench_capture, bench_train, bench_pipeline):
        with pytest.raises(SystemExit) as stopped:
            bench.main(["--device", "cuda", "--out", str(tmp_path / "gpu.json")])
        assert stopped.value.code == 0 and "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()


def _measured(seconds_per_item: dict[str, float], items: int = 4) -> dict:
    return {name: {"median_s": s * items, "items": items} for name, s in seconds_per_item.items()}


def test_pipeline_estimate_is_items_times_seconds_per_item():
    per_item = {"image_features": 0.05, "train_step_front": 0.1, "train_step_all": 0.25, "capture": 0.01,
                "probe_fit": 30.0, "evaluation": 0.07}
    sizes = bench_pipeline.pipeline_sizes(12)
    estimate = bench_pipeline.estimate(_measured(per_item), sizes)
    p = sizes["probe"]
    assert (sizes["train_rows"], sizes["eval_rows"], sizes["epochs"], p["null_models"]) == (188_246, 40_000, 5, 10)
    assert p["losses_fed"] == ["clip", "conclip", "omni_presence"]  # CC-Neg has no absence-negated caption
    # the counts written out here by hand from probe-layers' defaults (4,000 examples of 2 captions, 11 models,
    # 5 seeds, 400 sensitivity examples with 3 captions each, 13 layer indices + baseline, 4 + 10 x 2 gradient
    # batches of 64 for 3 losses, 4 x 64 + 400 images)
    expected = {"features": 188_246 * 0.05,
                "probe-layers": (11 * 8_000 + 11 * 1_200 + 14 * 800) * 0.01 + 20 * 30.0 + 24 * 64 * 3 * 0.25
                                + 656 * 0.05,
                "fine-tuning": 5 * 188_246 * 0.25,
                "evaluation": 40_000 * 0.07}
    for phase, seconds in expected.items():
        assert estimate["phases"][phase]["seconds"] == pytest.approx(seconds)
        parts = estimate["phases"][phase]["parts"]
        assert sum(part["items"] * per_item[part["measurement"]] for part in parts) == pytest.approx(seconds)
    assert estimate["total_s"] == pytest.approx(sum(expected.values()))
    assert estimate["front_plan_finetuning_s"] == pytest.approx(5 * 188_246 * 0.1)
    assert estimate["gpu"] == "not measured (no GPU in this environment)"
    record = {"machine": {"date": "2026-11-30", "cpu": "CPU", "torch_threads": 1, "torch": "2", "device": "cpu"},
              "arguments": {"rounds": 3, "probe_rounds": 1, "batch_size": 64},
              "model": {"name": "m", "layers": 12, "width": 512, "heads": 8, "context": 77, "weights": "random",
                        "image_tower": "VisionTransformer", "dtype": "float32"},
              "load_average": {"before": [2.0, 2.0, 2.0], "after": [2.5, 2.0, 2.0], "cpu_count": 2},
              "measured": {name: {**entry, "unit": "item", "relative_spread": 0.0, "items_per_s": 1 / per_item[name]}
                           for name, entry in _measured(per_item).items()},
              "sizes": sizes, "estimate": estimate}
    text = bench_tables.render_pipeline({("pipeline", "cpu"): record})
    fine_tuning = 5 * 188_246 * 0.25 / 3600
    assert f"| fine-tuning | 5 epochs of the training split (conclip recipe) | 941,230 | 0.25 s (`train_step_all`) | " \
           f"{fine_tuning:,.1f} h |  |" in text
    assert f"| evaluation | CC-Neg accuracy on the evaluation split (images, both captions) | 40,000 | 0.07 s " \
           f"(`evaluation`) | {40_000 * 0.07 / 60:,.1f} min |  |" in text
    assert f"| **total** |  |  |  | **{sum(expected.values()) / 3600:,.1f} h** | not measured (no GPU in this " \
           "environment) |" in text
    assert "One GPU: not measured (no GPU in this environment)" in text


def test_pipeline_benchmark_measures_every_part(write_config, tmp_path):
    path = bench_pipeline.main(["--model", str(write_config("tiny-bench-pipeline", layers=2)), "--threads", "1",
                                "--rounds", "1", "--images", "4", "--batch-size", "4", "--captions", "16",
                                "--out", str(tmp_path / "pipeline.json"), *DATA])
    record = json.loads(path.read_text())
    assert set(record["measured"]) == {"image_features", "train_step_front", "train_step_all", "capture", "probe_fit",
                                       "evaluation"}
    for entry in record["measured"].values():
        assert entry["items_per_s"] == pytest.approx(entry["items"] / entry["median_s"]) and entry["median_s"] > 0
    assert record["sizes"]["n_layers"] == 2 and len(record["load_average"]["before"]) == 3
    assert record["estimate"] == json.loads(json.dumps(bench_pipeline.estimate(record["measured"], record["sizes"])))
