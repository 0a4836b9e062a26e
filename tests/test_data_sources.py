"""Data sources beyond WikiText: the registry, JSONL, Parquet, Hugging Face data sets, large vocabularies."""

import json
from pathlib import Path

import numpy as np
import pytest

from minigpt import data
from minigpt.config import WIKITEXT_DATASETS, DataConfig
from minigpt.data import DataError, load_split, load_tokenizer
from minigpt.errors import ConfigError

BIG_VOCAB = 70_000  # more ids than uint16 holds


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(DataConfig(tokenizer=str(tokenizer_dir)))


def word_tokenizer(folder: Path, vocab_size: int, end_of_text: bool = True) -> Path:
    """A word-level tokenizer whose words ``w0 ... w{vocab_size - 2}`` are their own tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 1)}
    vocab["<|endoftext|>"] = vocab_size - 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = {"eos_token": "<|endoftext|>"} if end_of_text else {}
    PreTrainedTokenizerFast(tokenizer_object=backend, **special).save_pretrained(str(folder))
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def stories(count: int, start: int = 0) -> list[dict]:
    return [
        {"story": f"Once upon a time number {i} a cat sat.", "id": i} for i in range(start, start + count)
    ]


def expected_ids(tokenizer, texts: list[str]) -> list[int]:
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


# ----------------------------------------------------------------------------------------------- registry


def test_wikitext_and_text_files_are_registered_sources_like_any_other():
    assert {*WIKITEXT_DATASETS, "text", "jsonl", "parquet", "hf"} <= set(data.SOURCES)


def test_a_registered_source_is_usable_by_name_without_touching_another_file(
    tmp_path, tokenizer, monkeypatch
):
    monkeypatch.setitem(data.SOURCES, "echo", data.SOURCES["text"])  # what registering a source adds
    (tmp_path / "train.txt").write_text("Hello there, general reader.\n")
    config = DataConfig(dataset="echo", train_file=str(tmp_path / "train.txt"), cache_dir=str(tmp_path))
    assert len(load_split(config, "train", tokenizer, show_progress=False)) > 2


def test_an_unknown_dataset_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"data.dataset: must be one of .*'jsonl'.*'hf', got 'tinystories'"):
        DataConfig(dataset="tinystories")


@pytest.mark.parametrize("dataset", ["jsonl", "parquet"])
def test_local_table_files_need_a_train_file(dataset):
    with pytest.raises(ConfigError, match=f'data.train_file: is required with data.dataset="{dataset}"'):
        DataConfig(dataset=dataset)


def test_hf_without_a_name_is_refused():
    with pytest.raises(ConfigError, match=r"hf: needs a data set: --dataset=hf:NAME_OR_PATH\[:CONFIG\]"):
        DataConfig(dataset="hf:")


# ----------------------------------------------------------------------------------------------- local tables


@pytest.mark.parametrize("dataset, write", [("jsonl", write_jsonl), ("parquet", write_parquet)])
def test_jsonl_and_parquet_documents_are_separated_by_end_of_text(tmp_path, tokenizer, dataset, write):
    rows = stories(5)
    config = DataConfig(
        dataset=dataset,
        train_file=write(tmp_path / f"train.{dataset}", rows),
        text_field="story",
        cache_dir=str(tmp_path / "cache"),
    )
    split = load_split(config, "train", tokenizer, show_progress=False)
    texts = [row["story"] for row in rows]
    assert list(split.tokens) == expected_ids(tokenizer, texts)
    assert split.num_bytes == sum(len(t.encode()) for t in texts)
    assert list(load_split(config, "train", tokenizer, show_progress=False).tokens) == list(split.tokens)


def test_a_missing_text_field_names_the_fields_there_are(tmp_path, tokenizer):
    config = DataConfig(
        dataset="jsonl", train_file=write_jsonl(tmp_path / "train.jsonl", stories(3)), cache_dir=str(tmp_path)
    )
    with pytest.raises(DataError, match=r"has no field 'text'; its fields are 'story', 'id': choose one"):
        load_split(config, "train", tokenizer, show_progress=False)


def test_an_empty_table_split_is_an_error(tmp_path, tokenizer):
    (tmp_path / "train.jsonl").write_text("\n")
    config = DataConfig(dataset="jsonl", train_file=str(tmp_path / "train.jsonl"), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"the train split of .*train.jsonl is empty \(no rows\)"):
        load_split(config, "train", tokenizer, show_progress=False)
    no_rows = write_parquet(tmp_path / "train.parquet", [])
    with pytest.raises(DataError, match=r"the train split of .*train.parquet is empty \(no rows\)"):
        load_split(
            DataConfig(dataset="parquet", train_file=no_rows, cache_dir=str(tmp_path)), "train", tokenizer
        )


def test_a_table_of_empty_documents_is_an_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": ""}, {"text": ""}])
    config = DataConfig(dataset="jsonl", train_file=path, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"the train split \(.*train.jsonl\) has only empty documents"):
        load_split(config, "train", tokenizer, show_progress=False)


def test_documents_need_a_tokenizer_with_an_end_of_text_token(tmp_path):
    folder = word_tokenizer(tmp_path / "no-eos", 100, end_of_text=False)
    config = DataConfig(
        dataset="jsonl",
        train_file=write_jsonl(tmp_path / "train.jsonl", [{"text": "w1 w2 w3"}]),
        tokenizer=str(folder),
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(DataError, match="the tokenizer has no end-of-text token"):
        load_split(config, "train", load_tokenizer(config), show_progress=False)
    assert not (tmp_path / "cache").exists()  # refused before anything was loaded or written


def test_the_test_split_of_local_files_is_optional(tmp_path):
    config = DataConfig(dataset="jsonl", train_file="a.jsonl", val_file="b.jsonl")
    assert not data.has_split(config, "test")
    assert data.has_split(DataConfig(dataset="jsonl", train_file="a", test_file="c"), "test")


# ----------------------------------------------------------------------------------------------- Hugging Face


def save_dataset(folder: Path, splits: dict[str, list[dict]]) -> str:
    from datasets import Dataset, DatasetDict

    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(folder))
    return str(folder)


def test_a_save_to_disk_folder_is_read_by_split_name(tmp_path, tokenizer):
    folder = save_dataset(
        tmp_path / "ds", {"train": stories(4), "validation": stories(2, 100), "test": stories(1, 200)}
    )
    config = DataConfig(dataset=f"hf:{folder}", text_field="story", cache_dir=str(tmp_path / "cache"))
    for split, rows in (("train", stories(4)), ("val", stories(2, 100)), ("test", stories(1, 200))):
        tokens = load_split(config, split, tokenizer, show_progress=False).tokens
        assert list(tokens) == expected_ids(tokenizer, [row["story"] for row in rows])
    assert data.has_split(config, "test")


def test_without_a_validation_split_a_fixed_fraction_of_train_is_carved_out(tmp_path, tokenizer):
    rows = stories(200)
    folder = save_dataset(tmp_path / "ds", {"train": rows})
    config = DataConfig(
        dataset=f"hf:{folder}", text_field="story", val_fraction=0.1, cache_dir=str(tmp_path / "cache")
    )
    train = data.resolve_source(config, "train").documents()
    val = data.resolve_source(config, "val").documents()
    assert len(val) == 20 and len(train) == 180
    assert sorted([*train, *val]) == sorted(row["story"] for row in rows)  # disjoint and complete
    again = data.resolve_source(DataConfig(**{**config.__dict__}), "val").documents()
    assert list(again) == list(val)  # the same rows every time
    other_seed = DataConfig(**{**config.__dict__, "split_seed": 1})
    assert list(data.resolve_source(other_seed, "val").documents()) != list(val)
    assert not data.has_split(config, "test")


def test_a_missing_hf_folder_and_a_config_on_a_folder_are_named(tmp_path, tokenizer):
    missing = DataConfig(dataset=f"hf:{tmp_path / 'nothing'}", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"data set folder .*nothing does not exist"):
        load_split(missing, "train", tokenizer, show_progress=False)
    folder = save_dataset(tmp_path / "ds", {"train": stories(3)})
    with pytest.raises(DataError, match=r"save_to_disk folder, which has no configs; drop ':en'"):
        load_split(DataConfig(dataset=f"hf:{folder}:en", cache_dir=str(tmp_path)), "train", tokenizer)


def test_a_hub_data_set_offline_says_so_and_how_to_go_on(tmp_path, tokenizer):
    config = DataConfig(dataset="hf:someone/stories-that-are-not-here", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"Hugging Face Hub cannot be used: offline \(HF_HUB_OFFLINE=1\)"):
        load_split(config, "train", tokenizer, show_progress=False)


# ----------------------------------------------------------------------------------------------- vocabulary


def test_a_vocabulary_beyond_uint16_is_cached_as_uint32(tmp_path):
    folder = word_tokenizer(tmp_path / "big", BIG_VOCAB)
    words = [0, 65_535, 65_536, 69_998, 12]
    (tmp_path / "train.txt").write_text(" ".join(f"w{i}" for i in words))
    config = DataConfig(
        dataset="text", train_file=str(tmp_path / "train.txt"), tokenizer=str(folder), cache_dir=str(tmp_path)
    )
    tokenizer = load_tokenizer(config)
    assert len(tokenizer) == BIG_VOCAB
    fresh = load_split(config, "train", tokenizer, show_progress=False)
    cached = load_split(config, "train", tokenizer, show_progress=False)
    for split in (fresh, cached):
        assert split.tokens.dtype == np.uint32
        assert list(split.tokens) == words


def test_a_run_takes_its_vocabulary_from_the_tokenizer_padded_to_64_and_never_predicts_the_padding(tmp_path):
    """A 70,000-token tokenizer: the config asks for GPT-2's 50,257, the run trains 70,000 (70,016 rows), the
    padding rows stay zero through training, and the exported Hugging Face model has 70,000 rows."""
    import random

    import torch
    from helpers import tiny_config

    from minigpt import checkpoint, train
    from minigpt.hf import to_hf

    folder = word_tokenizer(tmp_path / "big", BIG_VOCAB)
    rng = random.Random(0)
    corpus = {"dataset": "text", "tokenizer": str(folder), "cache_dir": str(tmp_path / "cache")}
    for split in ("train", "val", "test"):
        path = tmp_path / f"{split}.txt"
        path.write_text(" ".join(f"w{rng.randrange(BIG_VOCAB - 1)}" for _ in range(400)))
        corpus[f"{split}_file"] = str(path)
    config = tiny_config(corpus, tmp_path / "runs", {"max_steps": 2, "eval_interval": 2, "ckpt_interval": 2})
    assert config.model.vocab_size == 50257
    train.run(config)
    run_dir = tmp_path / "runs" / "run"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["vocab_size"] == BIG_VOCAB
    state = checkpoint.load_checkpoint(checkpoint.list_checkpoints(run_dir)[-1][1])
    rows = state["model"]["transformer.wte.weight"]
    assert (
        rows.shape == (70_016, 16) and torch.all(rows[BIG_VOCAB:] == 0) and rows[:BIG_VOCAB].abs().sum() > 0
    )
    hf_model = to_hf(checkpoint.build_model(state))
    assert hf_model.config.vocab_size == BIG_VOCAB
    assert torch.equal(hf_model.transformer.wte.weight, rows[:BIG_VOCAB])


def test_a_small_vocabulary_keeps_the_uint16_cache(tmp_path):
    folder = word_tokenizer(tmp_path / "small", 1000)
    assert data.token_dtype(load_tokenizer(DataConfig(tokenizer=str(folder)))) == np.uint16


def test_a_hub_data_set_is_loaded_by_split_and_stays_usable_offline(tmp_path, tokenizer, monkeypatch):
    import datasets

    hub = {"train": stories(6), "validation": stories(2, 50), "test": stories(2, 90)}
    asked: list[tuple] = []

    def load_dataset(name, config_name, split):
        asked.append((name, config_name, split))
        return datasets.Dataset.from_list(hub[split])

    offline_check = data.hub_unavailable
    monkeypatch.setattr(data, "hub_unavailable", lambda variables: None)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name, config_name: list(hub))
    data._hf_splits.cache_clear()
    config = DataConfig(dataset="hf:someone/stories:clean", text_field="story", cache_dir=str(tmp_path))
    online = {split: load_split(config, split, tokenizer, show_progress=False) for split in data.SPLITS}
    assert asked == [("someone/stories", "clean", name) for name in ("train", "validation", "test")]
    assert list(online["val"].tokens) == expected_ids(tokenizer, [row["story"] for row in hub["validation"]])

    monkeypatch.setattr(data, "hub_unavailable", offline_check)  # offline again (conftest) ...
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: pytest.fail("loaded the Hub"))
    data._hf_splits.cache_clear()  # ... and the Hub's answers forgotten
    assert data.has_split(config, "test")
    for split, tokens in online.items():
        np.testing.assert_array_equal(load_split(config, split, tokenizer).tokens[:], tokens.tokens[:])
    data._hf_splits.cache_clear()


def test_a_run_saved_before_the_new_data_fields_still_resumes(tiny_corpus, tmp_path):
    import torch
    from helpers import tiny_config

    from minigpt import train

    config = tiny_config(tiny_corpus, tmp_path)
    saved = config.to_dict()
    for key in ("text_field", "val_fraction", "split_seed", "shard_tokens"):
        del saved["data"][key]
    settled, _ = train.settle_config(config, {"config": saved}, torch.device("cpu"))
    assert settled == config
    saved["data"]["text_field"] = "body"  # a field the checkpoint does have is still compared
    with pytest.raises(ConfigError, match="data.text_field is 'body' in the checkpoint but 'text' now"):
        train.settle_config(config, {"config": saved}, torch.device("cpu"))


def test_an_unknown_hub_config_is_named_with_what_the_hub_says(tmp_path, tokenizer, monkeypatch):
    import datasets

    def split_names(name, config_name):
        raise ValueError(f"BuilderConfig '{config_name}' not found. Available: ['default']")

    monkeypatch.setattr(data, "hub_unavailable", lambda variables: None)
    monkeypatch.setattr(datasets, "get_dataset_split_names", split_names)
    data._hf_splits.cache_clear()
    config = DataConfig(dataset="hf:someone/stories:nope", cache_dir=str(tmp_path))
    with pytest.raises(
        DataError,
        match=r"data set 'someone/stories' \(config 'nope'\) cannot be loaded: "
        r"BuilderConfig 'nope' not found. Available: \['default'\]",
    ):
        load_split(config, "train", tokenizer, show_progress=False)
    assert not list(tmp_path.rglob("*.json"))
