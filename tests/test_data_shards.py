"""Sharded token caches: written in pieces with an index last, read through memory maps, resumed exactly."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import interrupted_copy, tiny_config, wiki_valid_text, write_experiment

import run as run_script
from minigpt import data
from minigpt.config import DataConfig
from minigpt.data import BlockSampler, DataError, ShardedTokens, load_split, load_tokenizer
from minigpt.tracking import read_metrics


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(DataConfig(tokenizer=str(tokenizer_dir)))


def jsonl_corpus(folder: Path, text: str, shard_tokens: int, tokenizer_dir: Path) -> dict:
    """Each non-empty line of ``text`` as one document, train/val/test JSONL files, as ``data.*`` values."""
    lines = [line for line in text.splitlines() if line.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    cut = {"train": lines[:-4], "val": lines[-4:-2], "test": lines[-2:]}
    files = {}
    for split, rows in cut.items():
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows), encoding="utf-8")
        files[f"{split}_file"] = str(path)
    return {
        "dataset": "jsonl",
        "shard_tokens": shard_tokens,
        "tokenizer": str(tokenizer_dir),
        "cache_dir": str(folder / "cache"),
        **files,
    }


@pytest.fixture
def sharded(tmp_path, data_root, tokenizer_dir) -> DataConfig:
    return DataConfig(**jsonl_corpus(tmp_path, wiki_valid_text(data_root)[:12_000], 300, tokenizer_dir))


def test_a_corpus_is_cached_in_several_shards_with_an_index(sharded, tokenizer):
    split = load_split(sharded, "train", tokenizer, show_progress=False)
    (index_path,) = Path(sharded.cache_dir).rglob("train.*.json")
    index = json.loads(index_path.read_text())
    assert len(index["shards"]) > 5
    assert [s["num_tokens"] for s in index["shards"][:-1]] == [300] * (len(index["shards"]) - 1)
    assert sum(s["num_tokens"] for s in index["shards"]) == index["num_tokens"] == len(split)
    unsharded = DataConfig(
        **{**sharded.__dict__, "shard_tokens": 10**9, "cache_dir": sharded.cache_dir + "1"}
    )
    whole = load_split(unsharded, "train", tokenizer, show_progress=False).tokens
    assert isinstance(split.tokens, ShardedTokens)
    np.testing.assert_array_equal(np.asarray(split.tokens), np.asarray(whole))
    np.testing.assert_array_equal(split.tokens[250:950], whole[250:950])  # across three shard boundaries
    reread = load_split(sharded, "train", tokenizer, show_progress=False)
    np.testing.assert_array_equal(reread.tokens[:], whole[:])


def test_training_windows_read_across_shard_boundaries_as_from_one_file(sharded, tokenizer):
    tokens = load_split(sharded, "train", tokenizer, show_progress=False).tokens
    whole = np.asarray(tokens).copy()
    sharded_sampler, plain = BlockSampler(tokens, 64, seed=3), BlockSampler(whole, 64, seed=3)
    starts = sharded_sampler._epoch_starts(0)
    assert any(start // 300 != (start + 64) // 300 for start in starts)  # some windows straddle shards
    for step in range(0, 3 * sharded_sampler.samples_per_epoch, 7):
        for a, b in zip(sharded_sampler.batch(step, 7), plain.batch(step, 7), strict=True):
            assert a.equal(b)


def test_an_interrupted_tokenization_leaves_no_index_and_is_redone(sharded, tokenizer, monkeypatch):
    real = data.tokenize_documents

    def interrupted_after_two_batches(documents, tokenizer, show_progress=True, batch=1024):
        for i, batch_ids in enumerate(real(documents, tokenizer, show_progress, batch=8)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch_ids

    monkeypatch.setattr(data, "tokenize_documents", interrupted_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        load_split(sharded, "train", tokenizer, show_progress=False)
    cache = Path(sharded.cache_dir)
    assert list(cache.rglob("train.*.00000.bin"))  # shards were written ...
    assert not list(cache.rglob("*.json"))  # ... but nothing says the cache is complete
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".bin")]  # no temp files
    monkeypatch.setattr(data, "tokenize_documents", real)
    split = load_split(sharded, "train", tokenizer, show_progress=False)
    fresh = DataConfig(**{**sharded.__dict__, "cache_dir": sharded.cache_dir + "-fresh"})
    np.testing.assert_array_equal(split.tokens[:], load_split(fresh, "train", tokenizer).tokens[:])


def test_a_truncated_shard_is_named(sharded, tokenizer):
    load_split(sharded, "train", tokenizer, show_progress=False)
    shard = sorted(Path(sharded.cache_dir).rglob("train.*.00001.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(
        DataError, match=r"token shard .*00001.bin is missing or truncated; delete .* to rebuild"
    ):
        load_split(sharded, "train", tokenizer, show_progress=False)


def test_shard_size_must_be_positive():
    with pytest.raises(Exception, match="data.shard_tokens: must be positive, got 0"):
        DataConfig(shard_tokens=0)


@pytest.mark.slow
def test_resume_across_a_shard_boundary_is_exact(tmp_path, data_root, tokenizer_dir):
    corpus = jsonl_corpus(tmp_path / "corpus", wiki_valid_text(data_root)[:12_000], 100, tokenizer_dir)
    overrides = {"max_steps": 8, "ckpt_interval": 4, "eval_interval": 4, "dropout": 0.1}
    reference = tiny_config(corpus, tmp_path / "reference", overrides)
    assert run_script.main([str(write_experiment(tmp_path / "experiment.py", reference))]) == 0
    run_dir = tmp_path / "reference" / "run"
    tokens = load_split(reference.data, "train", load_tokenizer(reference.data), show_progress=False).tokens
    sampler = BlockSampler(tokens, reference.model.block_size, reference.train.seed)
    after_resume = [int(sampler._epoch_starts(0)[i % sampler.samples_per_epoch]) for i in range(16, 32)]
    assert any(start // 100 != (start + 16) // 100 for start in after_resume)  # steps 5-8 cross shards
    resumed = interrupted_copy(run_dir, 4, tmp_path / "resumed")
    assert run_script.main([f"--resume={resumed}"]) == 0

    def train_losses(folder: Path) -> dict[int, float]:
        return {
            r["step"]: r["train/loss"] for r in read_metrics(folder / "metrics.jsonl") if "train/loss" in r
        }

    assert len(train_losses(run_dir)) == 8
    assert train_losses(resumed) == train_losses(run_dir)


def test_the_prepare_command_tokenizes_every_split_once(
    tmp_path, data_root, tokenizer_dir, monkeypatch, capsys
):
    from minigpt.data.__main__ import main as prepare

    corpus = jsonl_corpus(tmp_path / "corpus", wiki_valid_text(data_root)[:6_000], 500, tokenizer_dir)
    experiment = write_experiment(tmp_path / "experiment.py", tiny_config(corpus, tmp_path / "runs"))
    assert prepare([str(experiment)]) == 0
    printed = [
        line for line in capsys.readouterr().out.splitlines() if line.strip()
    ]  # less the progress bars
    assert len(printed) == 3
    assert re.match(r"train: [\d,]+ tokens in [3-9] file\(s\), [\d.]+ MiB under .*jsonl-train-", printed[0])
    assert re.match(r"val: [\d,]+ tokens in 1 file\(s\)", printed[1])
    assert re.match(r"test: [\d,]+ tokens in 1 file\(s\)", printed[2])
    monkeypatch.setattr(data, "tokenize_documents", lambda *args, **kwargs: pytest.fail("tokenized again"))
    assert prepare([str(experiment)]) == 0
    assert capsys.readouterr().out.splitlines() == printed


def test_the_prepare_command_reports_bad_data_in_one_line(tmp_path, data_root, tokenizer_dir, capsys):
    from minigpt.data.__main__ import main as prepare

    corpus = jsonl_corpus(tmp_path / "corpus", wiki_valid_text(data_root)[:3_000], 500, tokenizer_dir)
    experiment = write_experiment(tmp_path / "experiment.py", tiny_config(corpus, tmp_path / "runs"))
    assert prepare([str(experiment), "--text_field=body"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: the train split of ") and "has no field 'body'; its fields are 'text'" in err
    )
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "corpus" / "cache").exists()
