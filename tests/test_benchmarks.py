"""Each benchmark runs at a minuscule size: its table has a row per configuration with both sides measured,
and its ratios are computed from the two sides (ours over Hugging Face's)."""

import pytest

from benchmarks import evaluate as evaluate_benchmark
from benchmarks import matmul as matmul_benchmark
from benchmarks import train_step as train_step_benchmark
from benchmarks.common import ratio_cell

SMOKE = ["--config", "smoke", "--device", "cpu", "--threads", "1", "--warmup", "0", "--reps", "2"]


def fixed_timings(ours_seconds: float, hf_seconds: float):
    """A stand-in for ``time_alternating`` that reports known seconds per call for each side."""

    def time_alternating(fns, warmup, reps, device):
        for fn in fns.values():  # the functions still run once: the benchmark's own code is exercised
            fn()
        seconds = {"minigpt": ours_seconds, "hf": hf_seconds}
        return {
            name: dict(median=seconds[name], min=seconds[name], max=seconds[name], sys_per_call=0.0)
            for name in fns
        }

    return time_alternating


@pytest.mark.slow
def test_the_training_step_benchmark_measures_both_sides_and_divides_ours_by_theirs(monkeypatch, capsys):
    monkeypatch.setattr(train_step_benchmark, "time_alternating", fixed_timings(0.5, 0.25))
    result = train_step_benchmark.main([*SMOKE, "--precision", "fp32", "--batch-size", "2", "--no-memory"])
    (row,) = result["rows"]
    assert (row["config"], row["mode"], row["tokens_per_step"]) == ("smoke", "fp32", 2 * 16)
    ours, hf = row["minigpt"], row["hf"]
    assert ours["tokens_per_s"]["median"] == 32 / 0.5 and hf["tokens_per_s"]["median"] == 32 / 0.25
    assert 0 < ours["mfu"] < hf["mfu"]
    table = capsys.readouterr().out
    assert "0.50x" in table  # ours / HF throughput: half as fast


@pytest.mark.slow
def test_the_evaluation_benchmark_measures_both_sides_and_divides_ours_by_theirs(monkeypatch, capsys):
    monkeypatch.setattr(evaluate_benchmark, "time_alternating", fixed_timings(0.1, 0.4))
    result = evaluate_benchmark.main([*SMOKE, "--batch-size", "2"])
    (row,) = result["rows"]
    assert row["config"] == "smoke"
    assert row["minigpt"]["median"] == 32 / 0.1 and row["hf"]["median"] == 32 / 0.4
    assert "4.00x" in capsys.readouterr().out


@pytest.mark.slow
def test_the_real_timings_give_the_ratio_of_the_two_measured_sides(capsys):
    result = evaluate_benchmark.main([*SMOKE, "--batch-size", "2"])
    (row,) = result["rows"]
    assert row["minigpt"]["median"] > 0 and row["hf"]["median"] > 0
    assert ratio_cell(row["minigpt"]["median"], row["hf"]["median"]) in capsys.readouterr().out


def test_the_matmul_benchmark_has_a_row_per_dtype_and_size(monkeypatch):
    monkeypatch.setattr(matmul_benchmark.perf, "cpu_has_fast_bf16", lambda: True)
    result = matmul_benchmark.main(["--device", "cpu", "--threads", "1", "--sizes", "16", "32"])
    shape = [(r["dtype"], r["size"]) for r in result["rows"]]
    assert shape == [("float32", 16), ("float32", 32), ("bfloat16", 16), ("bfloat16", 32)]
    assert all(r["gflops"] > 0 for r in result["rows"])
