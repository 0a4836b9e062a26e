"""The training job: it learns, records itself, checkpoints, resumes exactly, and stops on NaN."""

import functools
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, write_experiment

import run as run_script
from minigpt import checkpoint, data, perf, provenance, tracking, train
from minigpt.config import ConfigError, ExperimentConfig, derive
from minigpt.evaluate import evaluate
from minigpt.model import GPT, GPTConfig
from minigpt.tracking import read_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent


def train_losses(run_dir: Path) -> dict[int, float]:
    return {
        row["step"]: row["train/loss"]
        for row in read_metrics(run_dir / "metrics.jsonl")
        if "train/loss" in row
    }


def val_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [
        (row["step"], row["val/loss"]) for row in read_metrics(run_dir / "metrics.jsonl") if "val/loss" in row
    ]


def assert_same_tensors(a: dict | list, b: dict | list) -> None:
    if isinstance(a, list):
        assert len(a) == len(b)
        a, b = dict(enumerate(a)), dict(enumerate(b))
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], (dict, list)):
            assert_same_tensors(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory) -> tuple[ExperimentConfig, Path, dict]:
    """One complete six-step run with periodic evaluation, checkpoints and sliding-window evaluation."""
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(tiny_corpus, out, {"dropout": 0.1, "eval_stride": 8})
    summary = train.run(config, command=["run.py", "experiment.py", "--dropout=0.1"])
    return config, out / "run", summary


def test_tiny_model_overfits_a_single_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=16, n_layer=1, n_head=2, n_embd=32))
    config = derive(ExperimentConfig(), {"lr": 3e-2, "weight_decay": 0.0})
    optimizer = train.build_optimizer(model, config, torch.device("cpu"))
    batch = torch.randint(0, 61, (4, 17))
    x, y = batch[:, :-1], batch[:, 1:]
    losses = []
    for _ in range(60):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 3.5  # about ln(61) = 4.1 at the start
    assert losses[-1] < 0.01


@pytest.mark.slow
def test_each_periodic_estimate_records_a_sample_of_the_prompt(finished_run):
    config, run_dir, _ = finished_run
    samples = read_metrics(run_dir / "samples.jsonl")
    estimates = [row for row in read_metrics(run_dir / "metrics.jsonl") if "val/loss" in row]
    assert [(s["step"], s["train/tokens"]) for s in samples] == [
        (row["step"], row["train/tokens"]) for row in estimates
    ]
    assert all(s["prompt"] == config.log.sample_prompt == "The history of" and s["text"] for s in samples)


@pytest.mark.slow
def test_run_directory_records_config_metrics_and_summary(finished_run):
    config, run_dir, summary = finished_run
    saved = json.loads((run_dir / "config.json").read_text())
    assert ExperimentConfig.from_dict({k: v for k, v in saved.items() if k != "_run"}) == config
    assert saved["_run"]["command"] == ["run.py", "experiment.py", "--dropout=0.1"]
    # every weight trains; the vocabulary's padding rows (50,304 rows for 50,257 tokens) are not parameters
    assert config.model.padded_vocab_size > config.model.vocab_size
    assert saved["_run"]["params_trainable"] == saved["_run"]["params"]
    # what the run was made on: the kernels' instruction set decides its speed and, slightly, its fp32 sums
    hardware = saved["_run"]["hardware"]
    assert hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and hardware["cpu"]
    assert isinstance(hardware["cpu_fast_bf16"], bool) and "gpu" not in hardware
    if (REPO_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", saved["_run"]["git_commit"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    train_rows = [row for row in rows if "train/loss" in row]
    assert [row["step"] for row in train_rows] == [1, 2, 3, 4, 5, 6]
    for key in (
        "train/lr",
        "train/grad_norm",
        "train/tokens",
        "perf/tokens_per_sec",
        "perf/step_ms",
        "perf/mfu",
    ):
        assert all(math.isfinite(row[key]) for row in train_rows), key
    assert train_rows[-1]["train/tokens"] == 6 * 4 * 16
    assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"]
    assert [step for step, _ in val_losses(run_dir)] == [3]  # the periodic estimate
    assert [row["step"] for row in read_metrics(run_dir / "metrics.jsonl") if "final_val/loss" in row] == [6]

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["status"] == "finished"
    for split in ("final_val", "final_test"):
        assert on_disk[f"{split}/ppl"] == pytest.approx(math.exp(on_disk[f"{split}/loss"]))
        assert on_disk[f"{split}/ppl"] == pytest.approx(summary[f"{split}/ppl"])
        assert "context 16, stride 16" in on_disk[f"{split}/describe"]
        assert on_disk[f"{split}_sliding/stride"] == 8
    assert not (run_dir / "wandb").exists()  # W&B disabled


@pytest.mark.slow
def test_logged_learning_rate_follows_the_schedule(finished_run):
    config, run_dir, _ = finished_run
    for row in read_metrics(run_dir / "metrics.jsonl"):
        if "train/lr" in row:
            assert row["train/lr"] == pytest.approx(train.lr_at(row["step"] - 1, config))


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    config = derive(
        ExperimentConfig(), {"lr": 1.0, "min_lr_ratio": 0.1, "warmup_steps": 10, "max_steps": 110}
    )
    assert train.lr_at(0, config) == pytest.approx(0.1)
    assert train.lr_at(4, config) == pytest.approx(0.5)
    assert train.lr_at(9, config) == pytest.approx(1.0)
    assert train.lr_at(10, config) == pytest.approx(1.0)
    assert train.lr_at(60, config) == pytest.approx(0.55)  # halfway: the mean of peak and floor
    assert train.lr_at(110, config) == pytest.approx(0.1)
    assert train.lr_at(500, config) == pytest.approx(0.1)
    decay = [train.lr_at(step, config) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    no_warmup = derive(config, {"warmup_steps": 0})
    assert train.lr_at(0, no_warmup) == pytest.approx(1.0)


@pytest.mark.slow
def test_checkpoints_hold_plain_data_without_compile_prefixes(finished_run):
    config, run_dir, _ = finished_run
    found = checkpoint.list_checkpoints(run_dir)
    assert [step for step, _ in found] == [3, 6]
    expected_keys = GPT(config.model).state_dict().keys()
    for _, path in found:
        state = torch.load(path, weights_only=True)
        assert state["model"].keys() == expected_keys
        for key in ("optimizer", "scaler", "rng_by_rank", "config", "best_val_loss", "wandb_run_id"):
            assert key in state
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_a_compiled_model_saves_unprefixed_weights(tiny_corpus, tmp_path, monkeypatch):
    # The wrapper, not the compiler, adds the prefix; the eager backend makes the same wrapper without
    # loading the inductor compiler.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    config = tiny_config(tiny_corpus, tmp_path, {"compile": True})
    tokenizer = data.load_tokenizer(config.data)
    model = GPT(config.model)
    trainer = train.Trainer(
        config,
        model,
        train.load_splits(config, tokenizer),
        torch.device("cpu"),
        "fp32",
        1,
        tracking.Logger(),
        tmp_path,
    )
    assert trainer.wrapped_model is not model  # the compiled wrapper, whose own keys carry ``_orig_mod.``
    assert any(key.startswith("_orig_mod.") for key in trainer.wrapped_model.state_dict())
    assert trainer.gather_checkpoint()["model"].keys() == model.state_dict().keys()


def test_the_summary_names_the_best_periodic_estimate_apart_from_the_final_score(finished_run):
    _, run_dir, summary = finished_run
    estimates = val_losses(run_dir)
    best_step, best_loss = min(estimates, key=lambda point: point[1])
    assert summary["val/best_loss"] == pytest.approx(best_loss) and summary["val/best_step"] == best_step
    assert "best_val_loss" not in summary and "best_step" not in summary
    assert summary["final_val/loss"] != summary["val/best_loss"]  # whole split versus a prefix estimate


def test_the_periodic_estimate_scores_the_first_batches_of_the_split_not_a_sample(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path)
    val = data.load_split(config.data, "val", data.load_tokenizer(config.data))
    torch.manual_seed(0)
    model = GPT(config.model)
    batch, context = 3, config.model.block_size
    estimate = evaluate(model, val.tokens, context, batch, max_batches=2)
    prefix = evaluate(model, val.tokens[: 2 * batch * context + 1], context, batch)
    assert estimate.tokens == prefix.tokens == 2 * batch * context
    assert estimate.loss == prefix.loss


def test_a_trainer_is_built_without_benchmarking_and_runs_the_diagnostics_it_is_given(
    tiny_corpus, tmp_path, monkeypatch
):
    def no_benchmark(*args, **kwargs):
        raise AssertionError("the Trainer measured the matmul ceiling")

    monkeypatch.setattr(perf, "measure_matmul_flops", no_benchmark)
    config = tiny_config(tiny_corpus, tmp_path)
    tokenizer = data.load_tokenizer(config.data)
    model = GPT(config.model)
    splits = train.load_splits(config, tokenizer)
    cpu, logger = torch.device("cpu"), tracking.Logger()
    trainer = train.Trainer(config, model, splits, cpu, "fp32", 2, logger, tmp_path)
    trainer.diagnostics.append(lambda m: {"diag/embedding_grad": m.transformer.wte.weight.grad.norm().item()})
    _, grad_norm, figures = trainer.train_step(1e-3, diagnose=True)
    assert figures["diag/embedding_grad"] > 0 and math.isfinite(grad_norm)
    assert trainer.train_step(1e-3)[2] == {}


def test_periodic_samples_use_the_same_draws_so_they_differ_only_by_the_weights(tiny_corpus, tmp_path):
    """The same weights give the same sample at any step and whatever the global RNG holds; sampling leaves
    the training RNG where it was (data order and dropout are not shifted by it); new weights, new sample."""
    config = tiny_config(tiny_corpus, tmp_path)
    tokenizer = data.load_tokenizer(config.data)
    torch.manual_seed(0)
    model = GPT(config.model)
    splits = train.load_splits(config, tokenizer)
    cpu, logger = torch.device("cpu"), tracking.Logger()
    trainer = train.Trainer(config, model, splits, cpu, "fp32", 2, logger, tmp_path)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = trainer.sample_text()
    assert torch.equal(torch.get_rng_state(), before), "sampling consumed the training RNG"
    torch.manual_seed(2)
    trainer.state.step = 5  # a later estimate, same weights
    assert trainer.sample_text() == first
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    assert trainer.sample_text() != first
    assert model.training


def test_a_new_run_takes_the_tokenizers_vocabulary_and_a_fine_tune_must_already_hold_it():
    config = derive(ExperimentConfig(), {"vocab_size": 1000})
    assert train.fit_vocabulary(config, 50257, keep=False).model.vocab_size == 50257
    assert train.fit_vocabulary(config, 800, keep=False).model.vocab_size == 800
    assert train.fit_vocabulary(config, 800, keep=True) is config  # a base's rows stay where they are
    with pytest.raises(ConfigError, match="vocab_size=1000 is smaller than the tokenizer.s 50257 tokens"):
        train.fit_vocabulary(config, 50257, keep=True)


class Interrupted(Exception):
    """Stands in for a crash in the middle of a run."""


@pytest.mark.slow
def test_resume_is_bit_exact_on_cpu(tiny_corpus, tmp_path, monkeypatch):
    overrides = {"dropout": 0.1, "max_steps": 8, "eval_interval": 4}  # dropout: the RNG state must resume too
    reference = tiny_config(tiny_corpus, tmp_path / "reference", overrides)
    train.run(reference)

    config = tiny_config(tiny_corpus, tmp_path / "interrupted", overrides)
    experiment = write_experiment(tmp_path / "experiment.py", config)
    real_step = train.Trainer.train_step

    def crash_in_step_five(self, *args, **kwargs):
        if self.state.step == 4:  # after the checkpoint of step 3 and the log line of step 4
            raise Interrupted
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "train_step", crash_in_step_five)
    with pytest.raises(Interrupted):
        run_script.main([str(experiment)])
    run_dir = tmp_path / "interrupted" / "run"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert max(train_losses(run_dir)) == 4
    monkeypatch.setattr(train.Trainer, "train_step", real_step)

    assert run_script.main([f"--resume={run_dir}"]) == 0
    reference_dir = tmp_path / "reference" / "run"
    assert train_losses(run_dir) == train_losses(reference_dir)
    assert len([row for row in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in row]) == 8
    assert val_losses(run_dir) == val_losses(reference_dir)
    final, final_reference = checkpoint.load_checkpoint(run_dir), checkpoint.load_checkpoint(reference_dir)
    assert final["step"] == final_reference["step"] == 8
    for key in ("model", "optimizer", "rng_by_rank"):
        assert_same_tensors(final[key], final_reference[key])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    reference_summary = json.loads((reference_dir / "summary.json").read_text())
    assert summary["final_test/ppl"] == reference_summary["final_test/ppl"]


@pytest.mark.slow
def test_resume_with_an_incompatible_config_names_the_key(finished_run, tmp_path, capsys):
    config, run_dir, _ = finished_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    experiment = write_experiment(tmp_path / "experiment.py", config)
    assert run_script.main([str(experiment), f"--resume={copy}", "--lr=0.5", "--n_layer=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume with an incompatible config" in err
    assert "model.n_layer is 1 in the checkpoint but 2 now" in err
    assert "train.lr is 0.003 in the checkpoint but 0.5 now" in err


@pytest.mark.slow
def test_resume_may_extend_a_finished_run(finished_run, tmp_path):
    _, run_dir, _ = finished_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    assert run_script.main([f"--resume={copy}", "--max_steps=7", "--eval_stride=0"]) == 0
    assert sorted(train_losses(copy)) == [1, 2, 3, 4, 5, 6, 7]
    assert checkpoint.load_checkpoint(copy)["step"] == 7


@pytest.mark.slow
def test_a_resume_records_the_code_of_the_process_that_resumed(finished_run, tmp_path, monkeypatch):
    _, run_dir, _ = finished_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    (copy / "git.diff").write_text("--- a/minigpt/model.py\n+an edit the first process ran with\n")
    clean = provenance.SourceState(commit="c" * 40)
    monkeypatch.setattr(provenance, "source_state", lambda: clean)
    assert run_script.main([f"--resume={copy}", "--max_steps=7", "--eval_stride=0"]) == 0
    assert not (copy / "git.diff").exists()
    recorded = json.loads((copy / "config.json").read_text())["_run"]
    assert recorded["git_commit"] == "c" * 40 and recorded["git_dirty"] is False
    assert recorded["resumed_from"] == str(checkpoint.checkpoint_path(copy, 6))


@pytest.mark.slow
def test_wandb_offline_writes_its_run_and_disabled_writes_none(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_DIR")  # W&B files then go into the run directory
    offline = tiny_config(tiny_corpus, tmp_path / "offline", {"max_steps": 1, "wandb": "offline"})
    train.run(offline)
    run_dir = tmp_path / "offline" / "run"
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("run-*.wandb"))
    run_id = checkpoint.load_checkpoint(run_dir)["wandb_run_id"]
    assert offline_run.name.endswith(f"-{run_id}")

    disabled = tiny_config(tiny_corpus, tmp_path / "disabled", {"max_steps": 1, "wandb": "disabled"})
    train.run(disabled)
    written = {p.name for p in (tmp_path / "disabled" / "run").iterdir()} - {
        "git.diff"
    }  # see provenance tests
    assert sorted(written) == ["ckpt-0000001.pt", "config.json", "metrics.jsonl", "summary.json"]
    assert not list(tmp_path.glob("wandb")) and not list(Path.cwd().glob("wandb/offline-run-*"))


def nan_in_training_steps(bad_steps: set[int], accum_steps: int) -> type[GPT]:
    """A GPT whose training loss is NaN in the given (1-based) optimizer steps."""

    class NaNModel(GPT):
        forwards = 0

        def forward(self, idx, targets=None):
            logits, loss = super().forward(idx, targets)
            if self.training and loss is not None:
                NaNModel.forwards += 1
                if (NaNModel.forwards - 1) // accum_steps + 1 in bad_steps:
                    loss = loss * float("nan")
            return logits, loss

    return NaNModel


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_the_last_good_checkpoint(
    tiny_corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(train, "GPT", nan_in_training_steps({5}, accum_steps=2))
    config = tiny_config(tiny_corpus, tmp_path, {"ckpt_interval": 2, "eval_interval": 0})
    # Exit status 3, diverged: not the 2 of a usage error.
    assert run_script.main([str(write_experiment(tmp_path / "experiment.py", config))]) == 3
    run_dir = tmp_path / "run"
    err = capsys.readouterr().err
    assert "non-finite loss at step 5" in err
    assert f"Last good checkpoint: {run_dir / 'ckpt-0000004.pt'}" in err
    assert "--skip_nonfinite=true" in err
    assert [step for step, _ in checkpoint.list_checkpoints(run_dir)] == [2, 4]
    state = checkpoint.load_checkpoint(run_dir)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    assert max(train_losses(run_dir)) == 4


@pytest.mark.slow
def test_dense_logging_records_diagnostics_every_early_step_and_validation_at_step_zero(
    tiny_corpus, tmp_path
):
    config = tiny_config(
        tiny_corpus,
        tmp_path,
        {
            "train.max_steps": 8,
            "train.log_interval": 4,
            "train.dense_log_steps": 3,
            "train.log_layer_grad_norms": True,
        },
    )
    train.run(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 8]
    assert rows[0]["step"] == 0 and "val/loss" in rows[0] and rows[0]["train/tokens"] == 0
    logged = next(r for r in rows if "train/loss" in r)
    assert logged["diag/ln_input_rms/layer_0"] > 0
    assert 0 < logged["diag/attn_ratio/layer_0"] < 100 and 0 < logged["diag/mlp_ratio/layer_0"] < 100


def test_train_tokens_trains_on_the_first_tokens_of_the_split_and_refuses_more_than_it_has(
    tiny_corpus, tmp_path
):
    tokenizer = data.load_tokenizer(tiny_config(tiny_corpus, tmp_path).data)
    whole = train.load_splits(tiny_config(tiny_corpus, tmp_path), tokenizer)
    part = train.load_splits(tiny_config(tiny_corpus, tmp_path, {"train_tokens": 100}), tokenizer)
    assert len(part.train) == 100
    assert list(part.train.tokens) == list(whole.train.tokens[:100])
    assert len(part.val) == len(whole.val) and len(part.test) == len(whole.test)
    too_many = tiny_config(tiny_corpus, tmp_path, {"train_tokens": len(whole.train) + 1})
    with pytest.raises(ConfigError, match=f"data.train_tokens={len(whole.train) + 1:,} is more than"):
        train.load_splits(too_many, tokenizer)
