"""Data-parallel training under torchrun, on two CPU processes with gloo over loopback.

Two processes with the same global batch must train the same model as one process: the same samples per
step, gradients averaged over processes, evaluation split and summed. One launch of two processes trains
six steps; the tests compare it with a single in-process run, resume it from its step-3 checkpoint on two
processes and on one, resume the single-process run on two, and check what each process printed and left
on disk.
"""

import gc
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, interrupted_copy
from torch.nn.parallel import DistributedDataParallel

from minigpt import checkpoint, train
from minigpt.config import ConfigError, TrainConfig, apply_overrides, load_experiment
from minigpt.evaluate import evaluate
from minigpt.tracking import read_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS, CKPT_STEP = 6, 3
TOLERANCE = 1e-5


def overrides(corpus: Path, tokenizer: Path, out_dir: Path) -> dict[str, str]:
    """A model small enough to start and train in seconds; a global batch of 8 that 1 and 2 processes split.
    ``corpus`` holds the text files and the token cache."""
    return {
        "dataset": "text",
        "tokenizer": str(tokenizer),
        "cache_dir": str(corpus / "cache"),
        "train_file": str(corpus / "train.txt"),
        "val_file": str(corpus / "val.txt"),
        "block_size": "32",
        "n_layer": "1",
        "n_head": "2",
        "n_embd": "32",
        "dropout": "0",
        "batch_size": "8",
        "micro_batch_size": "2",
        "max_steps": str(STEPS),
        "warmup_steps": "2",
        "eval_interval": str(CKPT_STEP),
        "eval_batches": "2",
        "eval_stride": "0",
        "ckpt_interval": str(CKPT_STEP),
        "keep_last": "5",
        "log_interval": "1",
        "device": "cpu",
        "precision": "fp32",
        "wandb": "disabled",
        "out_dir": str(out_dir),
    }


def torchrun(
    args: dict[str, str], log_dir: Path, experiment: str | None = "experiments/tiny.py"
) -> list[str]:
    """Run ``run.py`` on two processes; return what each rank printed (stdout, then stderr), by rank."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        # As the README launches it. The rendezvous store binds port 0 and the processes reuse it: a port
        # found free beforehand could be taken by another process before torchrun binds it.
        "--standalone",
        "--nproc_per_node=2",
        f"--log-dir={log_dir}",
        "--tee=3",  # each rank's stdout and stderr also go to a file of its own under log_dir
        "run.py",
        *([experiment] if experiment else []),
        *(f"--{key}={value}" for key, value in args.items()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    (attempt,) = log_dir.glob("*/attempt_0")
    return [
        "".join(
            (attempt / str(rank) / f"{stream}.log").read_text(encoding="utf-8")
            for stream in ("stdout", "stderr")
        )
        for rank in range(2)
    ]


def run_in_process(args: dict[str, str], resume: str | None = None) -> dict:
    config = apply_overrides(load_experiment(REPO_ROOT / "experiments" / "tiny.py"), args)
    return train.run(config, resume=resume)


def only_run_dir(out_dir: Path) -> Path:
    entries = list(out_dir.iterdir())
    assert len(entries) == 1, f"expected one run directory in {out_dir}, found {entries}"
    return entries[0]


def losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    return {row["step"]: row[key] for row in read_metrics(run_dir / "metrics.jsonl") if key in row}


def assert_close(actual: dict[int, float], expected: dict[int, float]) -> None:
    assert actual.keys() == expected.keys()
    worst = max(abs(actual[s] - expected[s]) for s in expected)
    assert worst <= TOLERANCE, f"largest difference {worst:.2e}:\n{actual}\n{expected}"


@pytest.fixture(scope="module")
def setting(tmp_path_factory, data_root: Path, tokenizer_dir: Path) -> dict:
    """The corpus and one two-process run of ``STEPS`` steps."""
    corpus = tmp_path_factory.mktemp("corpus")
    with lzma.open(data_root / "wikitext-2-raw-v1" / "wiki.valid.raw.xz", "rt", encoding="utf-8") as f:
        text = f.read()
    # About 14k training tokens, and 935 validation tokens: 29 whole windows in one evaluation batch and the
    # shorter last window alone in a second, which leaves the two processes unequal shares.
    (corpus / "train.txt").write_text(text[:60_000], encoding="utf-8")
    (corpus / "val.txt").write_text(text[60_000:64_000], encoding="utf-8")
    out_dir = tmp_path_factory.mktemp("two")
    printed = torchrun(overrides(corpus, tokenizer_dir, out_dir), tmp_path_factory.mktemp("logs"))
    return {
        "args": lambda out: overrides(corpus, tokenizer_dir, out),
        "run_dir": only_run_dir(out_dir),
        "printed": printed,
    }


@pytest.fixture(scope="module")
def single_process_run(setting, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("one")
    run_in_process(setting["args"](out_dir))
    return only_run_dir(out_dir)


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one_with_the_same_global_batch(setting, single_process_run):
    two, one = setting["run_dir"], single_process_run
    assert len(losses(two)) == STEPS
    assert_close(losses(two), losses(one))
    assert_close(losses(two, "train/grad_norm"), losses(one, "train/grad_norm"))
    assert_close(losses(two, "val/loss"), losses(one, "val/loss"))
    two_summary = json.loads((two / "summary.json").read_text())
    one_summary = json.loads((one / "summary.json").read_text())
    assert two_summary["status"] == "finished"
    assert two_summary["final_val/tokens"] == one_summary["final_val/tokens"]
    assert abs(two_summary["final_val/loss"] - one_summary["final_val/loss"]) <= TOLERANCE
    assert json.loads((two / "config.json").read_text())["_run"]["world_size"] == 2


@pytest.mark.slow
def test_two_processes_write_one_run_directory_and_one_set_of_checkpoints(setting):
    run_dir = setting["run_dir"]
    assert [step for step, _ in checkpoint.list_checkpoints(run_dir)] == [CKPT_STEP, STEPS]
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"
    metrics_steps = [row["step"] for row in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in row]
    assert metrics_steps == list(range(1, STEPS + 1)), "each step must be logged once, by one process"
    state = checkpoint.load_checkpoint(run_dir)
    assert not [k for k in state["model"] if k.startswith(("module.", "_orig_mod."))]
    assert len(state["rng_by_rank"]) == 2


@pytest.mark.slow
def test_only_rank_0_prints(setting):
    rank0, rank1 = setting["printed"]
    assert f"step {CKPT_STEP}: val loss" in rank0
    assert rank1.strip() == "", f"rank 1 printed:\n{rank1}"


@pytest.mark.slow
def test_only_rank_0_prints_when_fine_tuning_from_a_base(setting, single_process_run, tmp_path):
    """``init_from`` adds prints of its own: the parameter counts and the validation before training."""
    args = {**setting["args"](tmp_path / "runs"), "init_from": str(single_process_run), "max_steps": "1"}
    rank0, rank1 = torchrun(args, tmp_path / "logs")
    assert "before training" in rank0
    assert rank1.strip() == "", f"rank 1 printed:\n{rank1}"


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_exactly(setting, tmp_path):
    original = setting["run_dir"]
    resumed = interrupted_copy(original, CKPT_STEP, tmp_path / original.name)
    torchrun({"resume": str(resumed)}, tmp_path / "logs", experiment=None)
    assert losses(resumed) == losses(original)  # steps after the checkpoint were logged again, and equal
    assert losses(resumed, "val/loss") == losses(original, "val/loss")
    assert [step for step, _ in checkpoint.list_checkpoints(resumed)] == [CKPT_STEP, STEPS]


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_process(setting, tmp_path):
    original = setting["run_dir"]
    resumed = interrupted_copy(original, CKPT_STEP, tmp_path / original.name)
    run_in_process(setting["args"](tmp_path), resume=str(resumed))
    assert sorted(losses(resumed)) == list(range(1, STEPS + 1))  # the resumed steps were logged
    assert_close(losses(resumed), losses(original))
    assert_close(losses(resumed, "train/grad_norm"), losses(original, "train/grad_norm"))
    assert json.loads((resumed / "config.json").read_text())["_run"]["world_size"] == 1
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == STEPS


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_processes(single_process_run, tmp_path):
    resumed = interrupted_copy(single_process_run, CKPT_STEP, tmp_path / single_process_run.name)
    rank0, rank1 = torchrun({"resume": str(resumed)}, tmp_path / "logs", experiment=None)
    assert sorted(losses(resumed)) == list(range(1, STEPS + 1))  # the resumed steps were logged
    assert_close(losses(resumed), losses(single_process_run))
    assert_close(losses(resumed, "val/loss"), losses(single_process_run, "val/loss"))
    assert json.loads((resumed / "config.json").read_text())["_run"]["world_size"] == 2
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == STEPS
    assert rank1.strip() == "", f"rank 1 printed:\n{rank1}"


@pytest.mark.parametrize(
    ("batch_size", "micro_batch_size", "world_size", "accumulation"),
    [(8, 2, 1, 4), (8, 2, 2, 2), (8, 2, 4, 1), (12, 2, 3, 2)],
)
def test_the_global_batch_is_split_over_processes_and_micro_batches(
    batch_size, micro_batch_size, world_size, accumulation
):
    config = TrainConfig(batch_size=batch_size, micro_batch_size=micro_batch_size)
    assert train.accumulation_steps(config, world_size) == accumulation


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"batch_size=8 .*micro_batch_size=2 times the 3 processes = 6"):
        train.accumulation_steps(TrainConfig(batch_size=8, micro_batch_size=2), 3)


def test_evaluation_shares_of_the_ranks_add_up_to_the_whole():
    class Scorer(torch.nn.Module):
        def forward(self, idx, targets):
            return None, (idx.float() - targets.float()).abs().mean()

    model = Scorer()
    tokens = torch.randint(0, 50, (1000,)).numpy().astype("uint16")
    whole = evaluate(model, tokens, block_size=16, batch_size=5)
    # Without a process group the per-rank shares do not reduce: each rank's own share, added up here.
    shares = [evaluate(model, tokens, block_size=16, batch_size=5, rank=r, world_size=3) for r in range(3)]
    assert sum(s.tokens for s in shares) == whole.tokens
    total_nll = sum(s.loss * s.tokens for s in shares)
    assert abs(total_nll / whole.tokens - whole.loss) < 1e-9


@pytest.mark.slow
def test_an_interrupted_two_process_run_with_dropout_resumes_exactly(setting, tmp_path):
    """Each process draws its own dropout masks; a resume on as many processes restores each one's random
    state, so the resumed steps equal the uninterrupted ones exactly."""
    args = {**setting["args"](tmp_path / "runs"), "dropout": "0.2"}
    torchrun(args, tmp_path / "logs")
    original = only_run_dir(tmp_path / "runs")
    resumed = interrupted_copy(original, CKPT_STEP, tmp_path / original.name)
    torchrun({"resume": str(resumed)}, tmp_path / "resume-logs", experiment=None)
    assert sorted(losses(resumed)) == list(range(1, STEPS + 1))
    assert losses(resumed) == losses(original)
    assert losses(resumed, "train/grad_norm") == losses(original, "train/grad_norm")


def thread_ids() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def group_leaving_worker(rank: int, port: int, args: dict[str, str], fail: bool, out_dir: str) -> None:
    """``train.run`` as one of two processes; writes how many DDP models are alive as it destroys the group,
    and how many of the threads the group started are still running after the run. With ``fail``, the run
    fails after training."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    init, destroy = dist.init_process_group, dist.destroy_process_group
    group_threads: set[str] = set()

    def recording_init(*args: object, **kwargs: object) -> None:
        before = thread_ids()
        init(*args, **kwargs)
        group_threads.update(thread_ids() - before)

    def counting_destroy() -> None:
        alive = sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects())
        Path(out_dir, f"rank{rank}-models.txt").write_text(str(alive))
        destroy()

    def failing_evaluation(trainer: train.Trainer) -> None:
        raise RuntimeError("injected failure")

    dist.init_process_group, dist.destroy_process_group = recording_init, counting_destroy
    if fail:
        train.final_evaluation = failing_evaluation
    try:
        run_in_process(args)
    except RuntimeError as error:
        if not fail or str(error) != "injected failure":
            raise
    assert group_threads, "the group started no threads to watch"
    Path(out_dir, f"rank{rank}-threads.txt").write_text(str(len(group_threads & thread_ids())))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
@pytest.mark.parametrize("fail", [False, True], ids=["finished", "failed"])
def test_a_finished_or_failed_run_leaves_the_process_group_with_nothing_holding_it(setting, tmp_path, fail):
    """A run that finishes or fails lets its DDP model go before it leaves the group, and nothing else holds
    the group, so leaving it stops gloo's threads: none is left to release a finished collective during the
    interpreter's shutdown and abort the process after the run is done (see ``distributed.teardown``)."""
    args = setting["args"](tmp_path / "runs")
    mp.spawn(group_leaving_worker, args=(free_port(), args, fail, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{rank}-threads.txt").read_text() for rank in (0, 1)] == ["0", "0"]
    assert [(tmp_path / f"rank{rank}-models.txt").read_text() for rank in (0, 1)] == ["0", "0"]
