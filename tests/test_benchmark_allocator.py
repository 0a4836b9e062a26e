"""The allocator benchmark runs at a minuscule size and reports both settings for both peers."""

import pytest

from benchmarks import allocator


@pytest.mark.slow
def test_allocator_benchmark_measures_both_settings_for_both_peers(capsys):
    result = allocator.main(["--config", "tiny", "--threads", "1", "--steps", "1", "--batch-size", "1"])
    table = capsys.readouterr().out
    for setting in allocator.SETTINGS:
        for side in ("minigpt", "hf"):
            r = result["results"]["tiny"][setting][side]
            assert r["tokens_per_sec"] > 0 and 0 <= r["kernel_share"] < 1 and r["faults_per_step"] >= 0
    keep, default = (result["results"]["tiny"][s]["minigpt"]["tokens_per_sec"] for s in ("keep", "default"))
    assert f"{keep / default:.2f}x" in table
