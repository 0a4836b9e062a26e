"""The allocator setting: freed training memory stays in the process, and results do not change."""

import subprocess
import sys

import pytest
from helpers import tiny_config

from minigpt.train import run

FAULTS_SCRIPT = """
import resource, sys, torch
from minigpt import perf
from minigpt.model import GPT, GPTConfig
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert perf.keep_freed_memory()
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=64))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, 50257, (8, 64))

def step():
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def minor_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keeping_freed_memory_stops_page_faults_in_training_steps():
    # A step of this model frees and reallocates about 50 MiB (the embedding's gradient and Adam's
    # temporaries, the loss's chunks): by default that is thousands of fresh pages a step.
    default, kept = minor_faults("default"), minor_faults("keep")
    assert default > 2000
    assert kept < default / 5


@pytest.mark.slow
def test_keeping_freed_memory_leaves_losses_unchanged(tiny_corpus, tmp_path):
    summaries = [
        run(tiny_config(tiny_corpus, tmp_path / str(keep), {"train.keep_freed_memory": keep}))
        for keep in (False, True)
    ]
    assert summaries[0]["final_val/loss"] == summaries[1]["final_val/loss"]


LARGE_BLOCK_SCRIPT = """
import resource, sys, torch
from minigpt import perf
assert perf.keep_freed_memory() if sys.argv[1] == "default" else perf.keep_freed_memory(large_blocks=False)

def churn():
    torch.ones(48 * 2**20 // 4)  # 48 MiB, above glibc's 32 MiB mmap ceiling, freed at once

for _ in range(3):  # the heap settles: a first free may leave its block short of the next request
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_training_default_keeps_the_blocks_above_the_mmap_ceiling_that_the_thresholds_alone_return():
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", LARGE_BLOCK_SCRIPT, mode], capture_output=True, text=True, check=True
        ).stdout
        return int(out.split()[-1])

    pages = 48 * 2**20 // 4096
    assert faults("thresholds") > pages / 2  # mmap'd afresh every time
    assert faults("default") < pages / 20  # what training and scoring use
