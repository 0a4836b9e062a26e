"""python -m minigpt.export: a trained run becomes a Hugging Face directory that transformers loads from disk
and that generates the same greedy tokens as MiniGPT; what GPT-2 cannot express is refused."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from test_lora import randomise_adapters, tiny_base
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from minigpt import checkpoint, export, lora
from minigpt.checkpoint import CheckpointError
from minigpt.export import ExportError, export_run
from minigpt.lora import LoRAConfig
from minigpt.model import GPTConfig
from minigpt.train import run

GPT2_TINY = GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def trained_run(request, tiny_corpus, tmp_path_factory):
    """A tiny model trained for a few steps, with its run record (config, summary, checkpoints)."""
    out = tmp_path_factory.mktemp("runs")
    run(tiny_config(tiny_corpus, out, {"model.tie_embeddings": request.param}), command=["run.py", "tiny"])
    return out / "run"


@pytest.mark.slow
def test_exported_run_generates_the_same_greedy_tokens_in_transformers(trained_run, tmp_path):
    out = export_run(trained_run, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "README.md",
        "tokenizer.json",
    } <= names
    hf_config = json.loads((out / "config.json").read_text())
    tied = json.loads((trained_run / "config.json").read_text())["model"]["tie_embeddings"]
    assert hf_config["tie_word_embeddings"] is tied and hf_config["model_type"] == "gpt2"

    ours = checkpoint.build_model(checkpoint.load_checkpoint(trained_run))
    tokenizer = AutoTokenizer.from_pretrained(out)
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([tokenizer.encode("The history of the")])
    expected = ours.generate(prompt, 12, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    theirs = hf_model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12
    )
    assert torch.equal(theirs, expected)
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():  # a few steps of training leave greedy text repetitive: compare every logit too
        assert torch.allclose(hf_model(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)

    generate = pipeline("text-generation", model=str(out), device="cpu")
    text = generate("The history of the", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert text == tokenizer.decode(expected[0])


@pytest.mark.slow
def test_model_card_states_what_was_trained_how_and_how_well(trained_run, tmp_path):
    card = (export_run(trained_run, tmp_path / "export") / "README.md").read_text()
    summary = json.loads((trained_run / "summary.json").read_text())
    recorded = json.loads((trained_run / "config.json").read_text())["_run"]
    assert "1 layers, width 16, 2 heads, context 16 tokens" in card
    assert f"{summary['tokens']:,} tokens" in card  # samples seen x context: what the run reports
    assert f"validation: perplexity {summary['final_val/ppl']:.2f}" in card
    assert f"test: perplexity {summary['final_test/ppl']:.2f}" in card
    assert f"context {summary['final_val/context']}, stride {summary['final_val/stride']}" in card
    assert "plain text files" in card and "Intended use and limits" in card
    assert f"`{recorded['git_commit'] or 'not recorded'}`" in card and "`run.py tiny`" in card


@pytest.mark.slow
def test_exporting_again_replaces_the_earlier_export_and_nothing_else(trained_run, tmp_path):
    out = export_run(trained_run, tmp_path / "export")
    (out / "stale.txt").write_text("from an earlier export")
    export_run(trained_run, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging directories left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_run(trained_run, tmp_path / "notes")
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def save_run(directory, model, tokenizer_dir, lora_config: LoRAConfig | None = None):
    config = {"data": {"tokenizer": str(tokenizer_dir)}}
    if lora_config is not None:
        config["lora"] = dataclasses.asdict(lora_config)
    state = {
        "step": 3,
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model.config),
        "config": config,
    }
    checkpoint.save_checkpoint(directory, state)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_greedy_tokens_match_token_for_token_where_the_output_varies(tmp_path, tokenizer_dir, tied):
    model = tiny_base(config=dataclasses.replace(GPT2_TINY, tie_embeddings=tied))  # random, so not repetitive
    out = export_run(save_run(tmp_path / "run", model, tokenizer_dir), tmp_path / "export")
    prompt = torch.tensor([[464, 2106, 286, 262]])
    expected = model.generate(prompt, 12, do_sample=False, eos_token_id=50256)
    assert len(set(expected[0, 4:].tolist())) > 1  # not one token repeated
    theirs = AutoModelForCausalLM.from_pretrained(out).generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12
    )
    assert torch.equal(theirs, expected)
    generate = pipeline("text-generation", model=str(out), device="cpu")
    text = generate(AutoTokenizer.from_pretrained(out).decode(prompt[0]), max_new_tokens=12, do_sample=False)
    assert text[0]["generated_text"] == AutoTokenizer.from_pretrained(out).decode(expected[0])


def test_post_ln_is_refused_saying_why_and_what_to_do(tmp_path, tokenizer_dir):
    model = tiny_base(config=dataclasses.replace(GPT2_TINY, norm_position="post"))
    source = save_run(tmp_path / "post-ln", model, tokenizer_dir)
    with pytest.raises(ExportError, match="pre-LN.*--checkpoint.*norm_position=pre"):
        export_run(source, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_lora_needs_merging_and_exports_merged(tmp_path, tokenizer_dir):
    base = tiny_base(config=GPT2_TINY)
    config = LoRAConfig(rank=2, alpha=4)
    adapted = copy.deepcopy(base)
    lora.apply_lora(adapted, config)
    randomise_adapters(adapted)
    lora_run = save_run(tmp_path / "lora-run", adapted, tokenizer_dir, config)
    with pytest.raises(ExportError, match="not merged.*--merge-adapter"):
        export_run(lora_run, tmp_path / "export")

    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        expected = adapted(idx)[0]
    for out, kwargs in [
        (export_run(lora_run, tmp_path / "from-run", merge_adapter=True), {}),
        (
            export_run(
                save_run(tmp_path / "base", base, tokenizer_dir),
                tmp_path / "from-adapter",
                adapter=lora.save_adapter(tmp_path / "adapter", adapted, config, "base"),
                merge_adapter=True,
            ),
            {},
        ),
    ]:
        with torch.no_grad():
            logits = AutoModelForCausalLM.from_pretrained(out, **kwargs).eval()(idx).logits
        assert torch.allclose(logits, expected, atol=1e-5, rtol=0), out


@pytest.mark.parametrize(
    ("make_source", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "no checkpoint"),
        (
            lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt",
            "not a loadable MiniGPT checkpoint",
        ),
        (
            lambda d: torch.save({"weights": torch.zeros(1)}, d / "x.pt") or d / "x.pt",
            "not a MiniGPT checkpoint",
        ),
    ],
    ids=["missing", "directory-without-checkpoints", "text-file", "foreign-pt"],
)
def test_cli_reports_a_wrong_source_as_a_usage_error(tmp_path, capsys, make_source, message):
    source = make_source(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(source), "--out", str(tmp_path / "export")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err


def test_cli_reports_a_truncated_checkpoint_and_a_bad_adapter_as_usage_errors(
    tmp_path, tokenizer_dir, capsys
):
    source = save_run(tmp_path / "base", tiny_base(config=GPT2_TINY), tokenizer_dir)
    for argv, message in [
        (["--adapter", str(tmp_path / "base")], "has no adapter_config.json"),
        (["--merge-adapter"], "has no LoRA adapters"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            export.main([str(source), "--out", str(tmp_path / "export"), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    ckpt = checkpoint.list_checkpoints(source)[-1][1]
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a loadable MiniGPT checkpoint"):
        export_run(ckpt, tmp_path / "export")
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(ckpt), "--out", str(tmp_path / "export")])
    assert exit_info.value.code == 2 and "truncated" in capsys.readouterr().err


def test_the_exported_tokenizer_and_generation_config_fit_the_model(trained_run, tmp_path):
    out = export_run(trained_run, tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.model_max_length == model.config.n_positions == 16
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id
    generation = model.generation_config
    assert (generation.do_sample, generation.temperature, generation.top_k) == (True, 1.0, 0)
    assert generation.max_length == 16


def test_pipeline_generation_stops_at_the_context_and_refuses_a_prompt_that_fills_it(trained_run, tmp_path):
    out = export_run(trained_run, tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(out)
    generate = pipeline("text-generation", model=str(out), device="cpu")
    text = generate("The history of the", do_sample=False)[0]["generated_text"]
    assert len(tokenizer(text)["input_ids"]) <= 16  # no index past the position embeddings
    with pytest.raises(ValueError, match="Input length of input_ids is 17, but `max_length` is set to 16"):
        generate(" word" * 17, do_sample=False)


def test_the_model_card_carries_hub_metadata_and_no_local_paths(trained_run, tmp_path):
    from huggingface_hub import ModelCard

    record = export._run_record(trained_run)
    record["config"]["init_from"] = "openai-community/gpt2"
    record["config"]["data"] = {"dataset": "wikitext-2-raw-v1", "tokenizer": "gpt2"}
    record["config"]["_run"]["command"] = [
        "/usr/local/bin/python3.11",
        str(export.REPO_ROOT / "run.py"),
        f"--out_dir={export.REPO_ROOT}/runs",
    ]
    state = checkpoint.load_checkpoint(trained_run)
    state["path"] = str(export.REPO_ROOT / "runs" / "tiny" / "ckpt-0000006.pt")
    text = export.model_card(checkpoint.build_model(state), state, record)
    assert str(export.REPO_ROOT) not in text and "`python run.py --out_dir=runs`" in text
    assert "`runs/tiny/ckpt-0000006.pt`" in text
    data = ModelCard(text).data
    assert (data.license, data.language, data.library_name) == ("mit", "en", "transformers")
    assert data.datasets == ["Salesforce/wikitext"] and data.base_model == "openai-community/gpt2"
    summary = record["summary"]
    perplexities = {(r.dataset_split, r.metric_name): r.metric_value for r in data.eval_results}
    assert perplexities[("validation", "perplexity (validation)")] == round(summary["final_val/ppl"], 4)
    assert perplexities[("test", "perplexity (test)")] == round(summary["final_test/ppl"], 4)


@pytest.fixture
def hub_stand_in(monkeypatch):
    """A local port that accepts connections as the Hub's endpoint, and an ``HfApi`` that records uploads."""
    import socket

    import huggingface_hub

    listener = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    uploads = []

    class FakeHfApi:
        def __init__(self, endpoint):
            self.endpoint = endpoint

        def create_repo(self, repo_id, exist_ok):
            uploads.append(("create", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploads.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    yield uploads
    listener.close()


def test_push_to_hub_uploads_the_export_when_the_hub_answers(trained_run, tmp_path, hub_stand_in, capsys):
    export.main([str(trained_run), "--out", str(tmp_path / "hf"), "--push-to-hub", "me/tiny"])
    create, upload = hub_stand_in
    assert create == ("create", "me/tiny", True)
    assert upload[:2] == ("upload", "me/tiny") and {"model.safetensors", "README.md"} <= set(upload[2])
    assert "uploaded to http://127.0.0.1:" in capsys.readouterr().out


def test_push_to_hub_says_plainly_when_the_hub_is_unreachable(trained_run, tmp_path, monkeypatch, capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(SystemExit) as stopped:
        export.main([str(trained_run), "--out", str(tmp_path / "hf"), "--push-to-hub", "me/tiny"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "is not reachable from here" in err and "hf upload me/tiny" in err
    assert (tmp_path / "hf" / "model.safetensors").is_file()  # the export itself is kept
