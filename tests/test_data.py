"""Text to tokens: whole-stream tokenization, the token cache, missing data, training and eval windows."""

import dataclasses
import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import wiki_valid_text

from minigpt import data
from minigpt.config import DataConfig
from minigpt.data import BlockSampler, DataError, _safe_chunks, eval_windows, load_split, load_tokenizer
from minigpt.storage import why_unwritable

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


@pytest.mark.slow
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


def test_batch_encoding_gives_the_tokenizers_own_ids(data_root, tokenizer_dir):
    tokenizer = load_tokenizer(DataConfig(tokenizer=str(tokenizer_dir)))
    tokenizer.add_tokens(["<extra>"])
    texts = _safe_chunks(wiki_valid_text(data_root)[:40_000], target_size=2_000) + ["a <extra> b", "", " \n"]
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert data.encode_batch(tokenizer, texts) == expected
    assert any(len(ids) > 100 for ids in expected)


def test_batch_encoding_never_truncates_even_when_the_tokenizer_is_set_to(data_root, tokenizer_dir):
    tokenizer = load_tokenizer(DataConfig(tokenizer=str(tokenizer_dir)))
    texts = _safe_chunks(wiki_valid_text(data_root)[:10_000], target_size=2_000)
    expected = [whole_stream_ids(tokenizer, text).tolist() for text in texts]
    tokenizer.backend_tokenizer.enable_truncation(max_length=5)
    assert data.encode_batch(tokenizer, texts) == expected
    assert min(len(ids) for ids in expected) > 5


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


def test_missing_split_says_where_it_looked_and_how_to_fix(data_root, tokenizer, tmp_path):
    config = DataConfig(dataset="wikitext-2-raw-v1", data_dir=str(data_root), cache_dir=str(tmp_path))
    with pytest.raises(DataError) as error:
        load_split(config, "train", tokenizer, show_progress=False)  # raw train is not among the local assets
    message = str(error.value)
    assert message.startswith("the train split of wikitext-2-raw-v1 was not found. Looked in:\n")
    assert f"  - {data_root / 'wikitext-2-raw-v1' / 'wiki.train.raw'}\n" in message
    assert f"  - {data_root / 'wikitext-2-raw-v1' / 'wiki.train.raw.xz'}\n" in message
    assert f"  - the token cache {tmp_path / 'wikitext-2-raw-v1' / 'train.'}" in message
    assert "  - the Hugging Face Hub: offline (HF_HUB_OFFLINE=1)\nWays forward:" in message
    assert f"  - put wiki.train.raw (or wiki.train.raw.xz) in {data_root / 'wikitext-2-raw-v1'}/\n" in message
    assert "  - --dataset=wikitext-2-v1 (its train split is in the asset root)\n" in message
    assert message.endswith("  - --dataset=text --train_file=PATH --val_file=PATH (any UTF-8 text)")


def test_missing_asset_root_says_how_to_set_one(monkeypatch, tokenizer, tmp_path):
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    config = DataConfig(dataset="wikitext-2-v1", cache_dir=str(tmp_path))
    with pytest.raises(DataError) as error:
        load_split(config, "val", tokenizer, show_progress=False)
    message = str(error.value)
    assert "  - no asset root is set (data.data_dir or MINIGPT_DATA_DIR)\n" in message
    assert (
        "put wiki.valid.tokens (or wiki.valid.tokens.xz) in <asset root>/wikitext-2-v1/ and set " in message
    )
    assert "MINIGPT_DATA_DIR=<asset root> (or --data_dir)" in message


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_an_asset_root_that_is_no_folder_is_named_with_where_it_was_set(tmp_path, monkeypatch, kind):
    root = tmp_path / "assets"
    if kind == "file":
        root.write_text("not a folder")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(root))
    problem = "is a file" if kind == "file" else "does not exist"
    with pytest.raises(
        DataError, match=f"the asset root {root} \\(from MINIGPT_DATA_DIR\\) {problem}: point"
    ):
        load_tokenizer(DataConfig())


def test_a_hub_split_cached_earlier_is_used_offline(tmp_path, tokenizer, monkeypatch):
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    config = DataConfig(dataset="wikitext-103-raw-v1", cache_dir=str(tmp_path))
    text = " = Valkyria = \n Some text from the Hub .\n"
    offline_check = data.hub_unavailable
    monkeypatch.setattr(data, "hub_unavailable", lambda variables: None)
    monkeypatch.setattr(data.TextSource, "_read_hub", lambda source: text)
    online = load_split(config, "test", tokenizer, show_progress=False)
    monkeypatch.setattr(data, "hub_unavailable", offline_check)  # offline again (conftest)
    monkeypatch.setattr(data.TextSource, "_read_hub", lambda source: pytest.fail("read the Hub"))
    offline = load_split(config, "test", tokenizer, show_progress=False)
    np.testing.assert_array_equal(offline.tokens, online.tokens)
    np.testing.assert_array_equal(offline.tokens, whole_stream_ids(tokenizer, text))


def test_missing_text_file_and_tokenizer_are_named(tmp_path, monkeypatch):
    config = DataConfig(dataset="text", train_file=str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match=r"train text file .*nope.txt does not exist \(data.train_file\)"):
        data.resolve_source(config, "train")
    with pytest.raises(DataError, match=r"no val file: set --data.val_file=PATH"):
        data.resolve_source(config, "val")
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    with pytest.raises(
        DataError, match=r"tokenizer directory .*no-tokenizer does not exist: point --tokenizer"
    ):
        load_tokenizer(DataConfig(tokenizer=str(tmp_path / "no-tokenizer")))
    with pytest.raises(DataError, match=r"tokenizer 'no-such-name' not found. Looked in:\n  - no asset root"):
        load_tokenizer(DataConfig(tokenizer="no-such-name"))  # a Hub name: the Hub is offline (conftest)


def test_a_broken_tokenizer_file_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(
        DataError, match=rf"tokenizer directory {tmp_path} holds no loadable tokenizer \(KeyError"
    ):
        load_tokenizer(DataConfig(tokenizer=str(tmp_path)))


@pytest.mark.parametrize("compressed", [False, True])
def test_text_that_is_not_utf8_names_the_file_and_the_byte_offset(
    tmp_path, tokenizer_dir, tokenizer, compressed
):
    content = "Première ligne.\nSecond line, then ".encode() + b"\xff\xfe" + b" the rest.\n"
    path = tmp_path / ("train.txt.xz" if compressed else "train.txt")
    path.write_bytes(lzma.compress(content) if compressed else content)
    config = DataConfig(
        dataset="text", train_file=str(path), tokenizer=str(tokenizer_dir), cache_dir=str(tmp_path)
    )
    offset = content.index(b"\xff")
    within = " of the decompressed text" if compressed else ""
    with pytest.raises(DataError) as error:
        load_split(config, "train", tokenizer, show_progress=False)
    assert str(error.value).startswith(
        f"{path} is not UTF-8 text: byte 0xff at byte offset {offset}{within} (line 2) cannot be decoded "
        "(invalid start byte). Convert the file to UTF-8"
    )


def test_an_unwritable_token_cache_fails_before_tokenizing(tmp_path, tokenizer_dir, tokenizer, monkeypatch):
    calls = count_tokenizations(monkeypatch)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    config = text_config(tmp_path, tokenizer_dir, train="Hello world. " * 20)
    config = dataclasses.replace(config, cache_dir=str(blocker / "cache"))
    with pytest.raises(
        DataError, match=rf"token cache: cannot create {blocker}/cache/text-train-\w+: {blocker} is a"
    ):
        load_split(config, "train", tokenizer, show_progress=False)
    assert calls == []


def test_why_unwritable_creates_nothing_and_names_the_obstacle(tmp_path):
    assert why_unwritable(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    assert (
        why_unwritable(tmp_path / "file" / "runs")
        == f"cannot create {tmp_path}/file/runs: {tmp_path}/file is a file"
    )
    assert why_unwritable(tmp_path / "file") == f"cannot create {tmp_path}/file: {tmp_path}/file is a file"
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # the probe file is gone


def test_an_unreadable_cache_record_is_named(tmp_path, tokenizer_dir, tokenizer):
    config = text_config(tmp_path, tokenizer_dir, train="Hello world. " * 20)
    load_split(config, "train", tokenizer, show_progress=False)
    (meta_path,) = (tmp_path / "cache").rglob("*.json")
    meta_path.write_text('{"tokenizer": ')
    with pytest.raises(DataError, match=r"token cache .*\.json is unreadable \(.*\); delete it to rebuild"):
        load_split(config, "train", tokenizer, show_progress=False)


@pytest.mark.parametrize("text", ["", " \n \n"])
def test_empty_split_is_an_error(tmp_path, tokenizer_dir, tokenizer, text):
    config = text_config(tmp_path, tokenizer_dir, train=text)
    with pytest.raises(
        DataError, match=rf"the train split \({tmp_path}/train.txt\) is empty or only whitespace"
    ):
        load_split(config, "train", tokenizer, show_progress=False)


def test_split_of_one_token_is_an_error(tmp_path, tokenizer_dir, tokenizer):
    config = text_config(tmp_path, tokenizer_dir, train="Hello world. " * 20, val="Hello")
    with pytest.raises(DataError, match="is 1 token long; scoring it needs at least 2"):
        load_split(config, "val", tokenizer, show_progress=False)


def test_text_shorter_than_one_block_names_its_tokens_and_the_context():
    with pytest.raises(
        DataError,
        match=r"the train split has 16 tokens, fewer than one training window of the context "
        r"\(model.block_size=16\) \+ 1 = 17: use more train text or --block_size=15 or less",
    ):
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
