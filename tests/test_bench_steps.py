"""The step benchmarks' machinery (scripts/bench_precision.py, scripts/bench_scaling.py): the steps they time are
the training steps (same batches and weights in every configuration), and the tables compare against the fp32
row of the same run. Timings themselves are not tested (benchmarks print them)."""

from __future__ import annotations

import math

import pytest

from crossmodal.training import bench_precision
from crossmodal.training.bench_precision import parse_config, run_all, table, worker
from crossmodal.training.bench_steps import student_step, timed_steps

TINY = ["data.quantization_size=0.2", "teacher.cloud.planes=[8,8,8]", "teacher.cloud.feature_size=16"]


def test_parse_config():
    assert parse_config("fp32") == ("fp32", False)
    assert parse_config("bf16+compile") == ("bf16", True)
    for bad in ("fp8", "bf16+jit", "compile"):
        with pytest.raises(ValueError, match="expected <precision>"):
            parse_config(bad)


def test_timed_steps_runs_warmup_then_timed_steps(fake):
    bench = student_step(str(fake), "feature_l2", 8)
    assert bench.global_batch == 8 and 1 <= len(bench.batches) <= 4
    t = timed_steps(bench, steps=3, warmup=2)
    assert len(t["losses"]) == 5 and len(t["times_s"]) == 3
    assert t["first_step_s"] > 0 and min(t["times_s"]) <= t["step_s"] <= max(t["times_s"])
    assert all(math.isfinite(x) for x in t["losses"])


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_worker_repeats_fp32_exactly_and_bf16_stays_close(fake, role, single_thread):
    # a randomly initialised ResNet student: on the fake images the ImageNet EfficientNet student's first-step
    # triplet loss (differences of large unnormalised distances) moves 6 % under bf16, past this test's 5 %
    kw = {"batch_size": 8, "steps": 1, "warmup": 1, "threads": 1,
          "overrides": TINY if role == "teacher" else ("student=resnet18",)}
    a = worker(role, str(fake), "fp32", **kw)
    b = worker(role, str(fake), "fp32", **kw)
    assert a["losses"] == b["losses"]  # same batches, same initial weights: the configurations are comparable
    c = worker(role, str(fake), "bf16", **kw)
    assert c["precision"] == "bf16" and not c["compile"]
    assert c["losses"][0] == pytest.approx(a["losses"][0], rel=0.05) and c["losses"][0] != a["losses"][0]


def test_run_all_ratios_against_fp32_and_failed_configurations(monkeypatch):
    ms = {"fp32": 100.0, "bf16": 50.0}
    calls = []

    def fake_launch(procs, script, args, timeout):
        role, config = args[args.index("--role") + 1], args[args.index("--config") + 1]
        calls.append((procs, role, config))
        if config == "fp16":
            raise RuntimeError("worker failed (1):\nTraceback ...\nRuntimeError: no fp16 here")
        return {"role": role, "model": "m", "config": config, "precision": config, "compile": False,
                "batch_size": 8, "device": "cpu", "threads": 1, "ms_per_step": ms[config] * (1 + len(calls) % 2),
                "first_step_s": 1.0, "losses": [2.0, 1.0] if config == "fp32" else [2.2, 0.9], "cuda_peak_mb": None}

    monkeypatch.setattr(bench_precision, "launch", fake_launch)
    rows = run_all("script.py", ["student"], ["bf16", "fp16"], [], rounds=2)
    assert [r["config"] for r in rows] == ["fp32", "bf16", "fp16"]  # the baseline is added first
    assert all(p is None for p, *_ in calls)  # plain processes, no torchrun
    assert sum(c == "fp16" for *_, c in calls) == 1  # a failed configuration is not retried
    fp32, bf16, fp16 = rows
    assert fp32["speedup"] == 1.0 and fp32["loss_dev_first"] == 0.0
    assert bf16["speedup"] == pytest.approx(fp32["ms_per_step"] / bf16["ms_per_step"])
    assert bf16["loss_dev_first"] == pytest.approx(0.1) and bf16["loss_dev_last"] == pytest.approx(0.1)
    assert "no fp16 here" in fp16["error"]
    md = table(rows)
    assert md.count("\n") == 4 and "failed: RuntimeError: no fp16 here" in md
