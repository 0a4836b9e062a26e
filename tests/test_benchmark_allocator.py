"""The allocator benchmark runs at a minuscule size, each setting and side in its own process, and reports
both settings for both peers."""

import pytest

from benchmarks import allocator


def test_a_settings_summary_is_the_median_speed_and_the_kernel_share_over_all_its_processes():
    reps = [
        {"tokens_per_sec": 100.0, "user_s": 9.0, "sys_s": 1.0, "faults": 40, "steps": 4},
        {"tokens_per_sec": 300.0, "user_s": 27.0, "sys_s": 3.0, "faults": 0, "steps": 4},
        {"tokens_per_sec": 200.0, "user_s": 10.0, "sys_s": 0.0, "faults": 8, "steps": 4},
    ]
    summary = allocator.summarise(reps)
    assert summary["tokens_per_sec"] == 200.0
    assert summary["kernel_share"] == pytest.approx(4.0 / 50.0)
    assert summary["faults_per_step"] == pytest.approx(48 / 12)
    assert summary["sys_s_per_step"] == pytest.approx(4.0 / 12)
    assert summary["reps"] == reps


@pytest.mark.slow
def test_allocator_benchmark_measures_both_settings_for_both_peers(capsys):
    result = allocator.main(
        ["--config", "tiny", "--threads", "1", "--warmup", "1", "--steps", "1", "--batch-size", "1"]
    )
    table = capsys.readouterr().out
    for setting in allocator.SETTINGS:
        for side in allocator.SIDES:
            r = result["results"]["tiny"][setting][side]
            assert r["tokens_per_sec"] > 0 and 0 <= r["kernel_share"] < 1 and r["faults_per_step"] >= 0
            assert len(r["reps"]) == 1 and r["reps"][0]["steps"] == 1
    keep, default = (result["results"]["tiny"][s]["minigpt"]["tokens_per_sec"] for s in ("keep", "default"))
    assert f"{keep / default:.2f}x" in table
