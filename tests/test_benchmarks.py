"""Each benchmark runs at a minuscule size: its table has a row per configuration with both sides measured,
and its ratios are computed from the two sides (ours over Hugging Face's)."""

import pytest
import torch

from benchmarks import common
from benchmarks import data_prep as data_prep_benchmark
from benchmarks import evaluate as evaluate_benchmark
from benchmarks import generate as generate_benchmark
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


def test_every_table_names_the_cpu_and_its_speed_flags_and_the_json_records_them(
    monkeypatch, capsys, tmp_path
):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 sse\n")
    monkeypatch.setattr(common, "CPUINFO", cpuinfo)
    assert common.cpu_description() == {"model": "Test EPYC", "flags": ["avx2", "avx512f", "avx512_bf16"]}
    result = matmul_benchmark.main(["--device", "cpu", "--threads", "1", "--sizes", "16"])
    out = " ".join(capsys.readouterr().out.split())
    assert "CPU: Test EPYC" in out and "flags: avx2, avx512f, avx512_bf16" in out
    assert result["environment"]["cpu"]["flags"] == ["avx2", "avx512f", "avx512_bf16"]


def test_the_matmul_benchmark_has_a_row_per_dtype_and_size(monkeypatch):
    monkeypatch.setattr(matmul_benchmark.perf, "cpu_has_fast_bf16", lambda: True)
    result = matmul_benchmark.main(["--device", "cpu", "--threads", "1", "--sizes", "16", "32"])
    shape = [(r["dtype"], r["size"]) for r in result["rows"]]
    assert shape == [("float32", 16), ("float32", 32), ("bfloat16", 16), ("bfloat16", 32)]
    assert all(r["gflops"] > 0 for r in result["rows"])


@pytest.mark.slow
def test_the_generation_benchmark_measures_both_sides_per_batch_and_their_greedy_tokens_agree(
    monkeypatch, capsys
):
    monkeypatch.setattr(generate_benchmark, "time_alternating", fixed_timings(0.2, 0.8))
    argv = ["--config", "smoke", "--batch-sizes", "1", "3", "--prompt-len", "4", "--new-tokens", "5"]
    result = generate_benchmark.main([*argv, "--reps", "1", "--threads", "1"])
    assert [row["batch_size"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        tokens = row["batch_size"] * 5
        assert row["ours_tokens_per_s"]["median"] == tokens / 0.2
        assert row["hf_tokens_per_s"]["median"] == tokens / 0.8
        assert row["speedup"] == 4.0 and row["same_tokens"] is True
    out = capsys.readouterr().out
    assert out.count("4.00x") == 2
    # the batch-1 floor: the model's own matmuls, timed for real, and each side's share of its ceiling
    floor, ceiling = result["matmul_floor_s"], result["ceiling_tokens_per_s"]
    assert 0 < floor["min"] <= floor["median"] <= floor["max"] and ceiling == 1 / floor["median"]
    assert floor["read_s"] > 0
    ours = generate_benchmark.build_peers("smoke", torch.device("cpu"))[0]
    linear = [m.weight for m in ours.modules() if isinstance(m, torch.nn.Linear)]
    assert floor["bytes"] == 4 * sum({id(w): w.numel() for w in linear}.values())  # a tied head once
    row = result["rows"][0]
    assert row["ours_of_ceiling"] == (5 / 0.2) / ceiling
    assert row["twice_hf_of_ceiling"] == 2 * (5 / 0.8) / ceiling
    assert "batch-1 floor: the model's matmuls alone take" in out and "twice HF (12.5 tokens/s) is" in out
    assert "ours_of_ceiling" not in result["rows"][1]


@pytest.mark.slow
def test_the_data_preparation_benchmark_tokenizes_the_whole_split_into_its_known_count(data_root, capsys):
    result = data_prep_benchmark.main(["--split", "val", "--reps", "1", "--data-dir", str(data_root)])
    assert result["tokens"] == data_prep_benchmark.EXPECTED_TOKENS[("wikitext-2-v1", "val")]
    assert result["prepare_s"]["median"] > 0 and result["read_s"]["median"] > 0
    out = capsys.readouterr().out
    assert f"{result['tokens']:,}" in out and "own call / encode_batch" in out
    assert len(result["encoders"]) == 2 and all(e["median"] > 0 for e in result["encoders"].values())


def test_the_data_preparation_benchmark_stops_when_the_token_count_is_not_the_known_one(
    data_root, monkeypatch
):
    monkeypatch.setitem(data_prep_benchmark.EXPECTED_TOKENS, ("wikitext-2-v1", "test"), 1)
    with pytest.raises(SystemExit, match="differs from the whole-stream count 1"):
        data_prep_benchmark.main(["--split", "test", "--reps", "1", "--data-dir", str(data_root)])
