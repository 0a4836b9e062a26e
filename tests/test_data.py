"""Text to tokens: whole-stream tokenization, the token cache, missing data, training and eval windows."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import wiki_valid_text

from minigpt import data
from minigpt.config import DataConfig
from minigpt.data import BlockSampler, DataError, _safe_chunks, eval_windows, load_split, load_tokenizer

# From the asset root's README: wiki.valid.raw encoded by GPT-2 as one stream.
WIKI_VALID_RAW_TOKENS = 249_887
WIKI_VALID_RAW_BYTES = 1_146_846


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(DataConfig(tokenizer=str(tokenizer_dir)))


def whole_stream_ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)


def text_config(tmp_path: Path, tokenizer_dir: Path, **files: str) -> DataConfig:
    paths = {}
    for split, text in files.items():
        paths[f"{split}_file"] = str(tmp_path / f"{split}.txt")
        Path(paths[f"{split}_file"]).write_text(text, encoding="utf-8")
    return DataConfig(
        dataset="text", tokenizer=str(tokenizer_dir), cache_dir=str(tmp_path / "cache"), **paths
    )


def count_tokenizations(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = data.tokenize

    def counting(text, tokenizer, show_progress=True):
        calls.append(len(text))
        return real(text, tokenizer, show_progress)

    monkeypatch.setattr(data, "tokenize", counting)
    return calls


def test_wikitext_valid_tokenizes_exactly_as_one_stream(data_root, tokenizer):
    config = DataConfig(dataset="wikitext-2-raw-v1", data_dir=str(data_root))
    split = load_split(config, "val", tokenizer, show_progress=False)
    assert len(split) == WIKI_VALID_RAW_TOKENS
    assert split.num_bytes == WIKI_VALID_RAW_BYTES
    np.testing.assert_array_equal(split.tokens, whole_stream_ids(tokenizer, wiki_valid_text(data_root)))


def test_small_chunks_encode_to_the_whole_stream(data_root, tokenizer):
    text = wiki_valid_text(data_root)[:60_000]
    chunks = _safe_chunks(text, target_size=500)
    assert len(chunks) > 50 and "".join(chunks) == text
    ids = np.concatenate([whole_stream_ids(tokenizer, chunk) for chunk in chunks])
    np.testing.assert_array_equal(ids, whole_stream_ids(tokenizer, text))


def test_token_cache_is_written_once_and_reused(tmp_path, tokenizer_dir, tokenizer, monkeypatch):
    calls = count_tokenizations(monkeypatch)
    config = text_config(tmp_path, tokenizer_dir, train="Hello world. " * 50, val="A short valid text.\n")
    first = load_split(config, "train", tokenizer, show_progress=False)
    second = load_split(config, "train", tokenizer, show_progress=False)
    assert len(calls) == 1
    assert isinstance(second.tokens, np.memmap) and second.tokens.dtype == np.uint16
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(second.tokens, whole_stream_ids(tokenizer, "Hello world. " * 50))
    caches = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert [name.split(".")[0] for name in caches] == ["train", "train"]  # one .bin and its .json

    load_split(config, "val", tokenizer, show_progress=False)  # another split: its own cache
    assert len(calls) == 2
    Path(config.train_file).write_text("Changed text, longer than before. " * 10)  # another source
    changed = load_split(config, "train", tokenizer, show_progress=False)
    assert len(calls) == 3
    np.testing.assert_array_equal(
        changed.tokens, whole_stream_ids(tokenizer, "Changed text, longer than before. " * 10)
    )


def test_another_tokenizer_never_reuses_the_cache(tmp_path, tokenizer_dir, tokenizer, monkeypatch):
    calls = count_tokenizations(monkeypatch)
    config = text_config(tmp_path, tokenizer_dir, train="Hello <extra> world. " * 20)
    original = load_split(config, "train", tokenizer, show_progress=False)
    other = load_tokenizer(DataConfig(tokenizer=str(tokenizer_dir)))
    other.add_tokens(["<extra>"])
    extended = load_split(config, "train", other, show_progress=False)
    assert len(calls) == 2
    assert len(extended) < len(original)
    assert len(list((tmp_path / "cache").rglob("*.bin"))) == 2


def test_cache_from_another_tokenizer_is_rejected(tmp_path, tokenizer_dir, tokenizer):
    config = text_config(tmp_path, tokenizer_dir, train="Hello world. " * 20)
    load_split(config, "train", tokenizer, show_progress=False)
    (meta_path,) = (tmp_path / "cache").rglob("*.json")
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"] = "0123456789abcdef"  # as if copied over from a run with another tokenizer
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"was made with another tokenizer \(0123456789abcdef, now .*delete"):
        load_split(config, "train", tokenizer, show_progress=False)


def test_truncated_cache_is_rejected(tmp_path, tokenizer_dir, tokenizer):
    config = text_config(tmp_path, tokenizer_dir, train="Hello world. " * 20)
    load_split(config, "train", tokenizer, show_progress=False)
    (bin_path,) = (tmp_path / "cache").rglob("*.bin")
    bin_path.write_bytes(bin_path.read_bytes()[:10])
    with pytest.raises(DataError, match="is truncated; delete it to rebuild"):
        load_split(config, "train", tokenizer, show_progress=False)


def test_missing_split_says_where_it_looked_and_how_to_fix(data_root):
    config = DataConfig(dataset="wikitext-2-raw-v1", data_dir=str(data_root))
    with pytest.raises(DataError) as error:
        data.resolve_source(config, "train")  # raw train is not among the local assets
    message = str(error.value)
    assert str(data_root / "wikitext-2-raw-v1" / "wiki.train.raw") in message
    assert str(data_root / "wikitext-2-raw-v1" / "wiki.train.raw.xz") in message
    assert "the Hub is offline" in message and "MINIGPT_DATA_DIR" in message
    assert "available locally: wikitext-2-v1" in message


def test_missing_asset_root_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"no local asset root is set \(MINIGPT_DATA_DIR\)"):
        data.resolve_source(DataConfig(dataset="wikitext-2-v1"), "val")


def test_missing_text_file_and_tokenizer_are_named(tmp_path, monkeypatch):
    config = DataConfig(dataset="text", train_file=str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match=r"train text file .*nope.txt does not exist"):
        data.resolve_source(config, "train")
    with pytest.raises(DataError, match=r"no val file: set --data.val_file=PATH"):
        data.resolve_source(config, "val")
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"tokenizer '.*no-tokenizer' not found: looked in .*--tokenizer"):
        load_tokenizer(DataConfig(tokenizer=str(tmp_path / "no-tokenizer")))


@pytest.mark.parametrize("text", ["", " \n \n"])
def test_empty_split_is_an_error(tmp_path, tokenizer_dir, tokenizer, text):
    config = text_config(tmp_path, tokenizer_dir, train=text)
    with pytest.raises(DataError, match=r"the train split of text-train-\w+ is empty"):
        load_split(config, "train", tokenizer, show_progress=False)


def test_split_of_one_token_is_an_error(tmp_path, tokenizer_dir, tokenizer):
    config = text_config(tmp_path, tokenizer_dir, train="Hello world. " * 20, val="Hello")
    with pytest.raises(DataError, match="is 1 token long; scoring it needs at least 2"):
        load_split(config, "val", tokenizer, show_progress=False)


def test_text_shorter_than_one_block_is_an_error():
    with pytest.raises(DataError, match=r"has 16 tokens, fewer than one block of block_size \+ 1 = 17"):
        BlockSampler(np.arange(16, dtype=np.uint16), block_size=16, seed=0)


def sampler(seed: int = 0, length: int = 1000, block_size: int = 8) -> BlockSampler:
    return BlockSampler(np.arange(length, dtype=np.uint16), block_size, seed)


def test_block_sampler_is_deterministic_from_the_seed():
    a, b, c = sampler(seed=1), sampler(seed=1), sampler(seed=2)
    for first in (0, 7, 300):
        xa, ya = a.batch(first, 5)
        xb, yb = b.batch(first, 5)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0, 20)[0], c.batch(0, 20)[0])


def test_block_sampler_targets_are_inputs_shifted_by_one():
    x, y = sampler().batch(3, 4)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # the stream is 0, 1, 2, ... so the next token is the value plus one


def test_each_epoch_visits_every_window_once_in_a_new_order():
    s = sampler(length=1000, block_size=8)  # windows of 9 tokens: 111 per epoch
    n = s.samples_per_epoch
    assert n == 111
    starts = [s.batch(epoch * n, n)[0][:, 0].numpy() for epoch in range(3)]
    for epoch_starts in starts:
        ordered = np.sort(epoch_starts)
        assert np.all(np.diff(ordered) == 9)  # non-overlapping, none skipped
    assert not np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[1], starts[2])


def test_block_sampler_batches_do_not_depend_on_history():
    used = sampler(seed=3)
    for first in range(0, 400, 16):  # train through several epochs
        used.batch(first, 16)
    fresh = sampler(seed=3)
    for first in (350, 5, 222, 111):  # out of order, across epoch boundaries
        assert torch.equal(used.batch(first, 16)[0], fresh.batch(first, 16)[0])


@pytest.mark.parametrize("length", [2, 9, 17, 50, 64])
@pytest.mark.parametrize("stride", [None, 1, 3, 8])
def test_eval_windows_score_every_token_but_the_first_exactly_once(length, stride):
    block_size = 8
    tokens = np.arange(length, dtype=np.uint16)  # a token's value is its position
    scored: list[int] = []
    for index, (inputs, targets) in enumerate(eval_windows(tokens, block_size, stride)):
        assert len(inputs) == len(targets) <= block_size
        start = int(inputs[0])
        assert torch.equal(inputs, torch.arange(start, start + len(inputs)))  # a contiguous piece
        kept = (targets != -100).nonzero().flatten()
        assert torch.equal(targets[kept], inputs[kept] + 1)  # each target is the next token
        scored.extend(targets[kept].tolist())
        if index > 0:  # every prediction after the first window sees at least block_size - stride tokens
            assert int(kept[0]) + 1 >= block_size - (stride or block_size)
    assert scored == list(range(1, length))


def test_eval_stride_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match=r"eval stride must be in \[1, block_size=8\], got 9"):
        list(eval_windows(np.arange(20, dtype=np.uint16), 8, 9))
