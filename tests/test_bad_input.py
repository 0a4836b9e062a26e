"""Every user mistake is a usage error: exit status 2, one message that names the problem and the way
forward, no traceback, nothing half-written; and a missing asset fails in seconds, not after Hub retries."""

import contextlib
import json
import lzma
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, write_experiment

import run as run_script
from minigpt import data, sample
from minigpt.checkpoint import save_checkpoint
from minigpt.model import GPT

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Workspace:
    """A folder with a tiny experiment; runs would go to ``root/runs``."""

    root: Path
    corpus: dict[str, str]

    def experiment(self, overrides: dict | None = None, name: str = "experiment.py") -> str:
        return str(
            write_experiment(self.root / name, tiny_config(self.corpus, self.root / "runs", overrides))
        )

    def text_file(self, name: str, text: str) -> str:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def bytes_file(self, name: str, content: bytes) -> str:
        path = self.root / name
        path.write_bytes(content)
        return str(path)

    def folder(self, name: str) -> str:
        path = self.root / name
        path.mkdir()
        return str(path)

    def unwritable_folder(self) -> str:
        """A folder in which no file can be created: read-only by its mode, or, for root (whom modes do
        not bind), sysfs, which accepts no new files from anyone."""
        if os.geteuid() == 0:
            return "/sys"
        path = self.root / "read-only"
        path.mkdir(mode=0o555)
        return str(path)

    def checkpoint(self, lr: float = 3e-3) -> Path:
        """A real checkpoint of the tiny model, in ``root/saved``, made with learning rate ``lr``."""
        config = tiny_config(self.corpus, self.root / "runs", {"lr": lr})
        model = GPT(config.model)
        state = {"step": 1, "model": model.state_dict(), "config": config.to_dict()}
        state["model_config"] = config.to_dict()["model"]
        return save_checkpoint(self.root / "saved", state)

    def foreign_tokenizer_cache(self) -> str:
        """An experiment whose train split's token cache claims to come from another tokenizer."""
        config = tiny_config(self.corpus, self.root / "runs", {"cache_dir": str(self.root / "cache")})
        data.load_split(config.data, "train", data.load_tokenizer(config.data), show_progress=False)
        (meta_path,) = (self.root / "cache").rglob("train.*.json")
        meta_path.write_text(
            json.dumps({**json.loads(meta_path.read_text()), "tokenizer": "0123456789abcdef"})
        )
        return self.experiment({"cache_dir": str(self.root / "cache")})

    def text_with(self, before: str, bad: bytes, after: str = " and more text.\n") -> str:
        """An experiment whose train file is UTF-8 but for ``bad`` right after ``before``."""
        path = self.bytes_file("latin1.txt", before.encode() + bad + after.encode())
        return self.experiment({"train_file": path})


def truncated(path: Path) -> str:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return str(path)


def foreign(path: Path) -> str:
    torch.save({"weights": torch.zeros(2)}, path)
    return str(path)


def sampling(ws: Workspace, *args: str) -> list[str]:
    return ["--checkpoint", str(ws.checkpoint()), "--tokenizer", ws.corpus["tokenizer"], *args]


NOTES = "Some notes, not a model.\n"

# (id, entry point, arguments built in the workspace, the message on stderr; {root} is the workspace)
BAD_INPUTS: list[tuple[str, str, Callable[[Workspace], list[str]], str]] = [
    # ------------------------------------------------------------------------------- the experiment file
    ("experiment file missing", "run", lambda ws: [str(ws.root / "expriment.py")], "does not exist"),
    (
        "a folder instead of an experiment file",
        "run",
        lambda ws: [ws.experiment() and str(ws.root)],
        "{root} is a folder; name one experiment file in it: experiment.py",
    ),
    (
        "experiment file with a syntax error",
        "run",
        lambda ws: [ws.text_file("broken.py", "config = (\n")],
        "broken.py has a syntax error at line 1",
    ),
    (
        "experiment file without a config",
        "run",
        lambda ws: [ws.text_file("none.py", "lr = 1\n")],
        "defines no experiment: expected `config = ExperimentConfig(...)`",
    ),
    ("neither an experiment nor --resume", "run", lambda ws: ["--lr=0.1"], "name an experiment file"),
    # ------------------------------------------------------------------------------- keys and values
    (
        "unknown key",
        "run",
        lambda ws: [ws.experiment(), "--n_layr=2"],
        "unknown config key --n_layr; did you mean --n_layer or --model.n_layer?",
    ),
    (
        "wrong type: integer",
        "run",
        lambda ws: [ws.experiment(), "--max_steps=1.5"],
        "--train.max_steps=1.5: expected an integer",
    ),
    (
        "wrong type: boolean",
        "run",
        lambda ws: [ws.experiment(), "--compile=yes please"],
        "expected true or false",
    ),
    (
        "not one of the choices",
        "run",
        lambda ws: [ws.experiment(), "--precision=fp8"],
        "train.precision: must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp8'",
    ),
    (
        "n_embd not divisible by n_head",
        "run",
        lambda ws: [ws.experiment(), "--n_embd=30", "--n_head=4"],
        "model.n_embd: 30 must be divisible by model.n_head=4",
    ),
    (
        "evaluation context beyond the model's positions",
        "run",
        lambda ws: [ws.experiment(), "--eval_stride=32"],
        "train.eval_stride: 32 is longer than the context model.block_size=16",
    ),
    (
        "negative learning rate",
        "run",
        lambda ws: [ws.experiment(), "--lr=-0.1"],
        "train.lr: must be positive, got -0.1",
    ),
    (
        "batch sizes that do not divide",
        "run",
        lambda ws: [ws.experiment(), "--batch_size=5", "--micro_batch_size=2"],
        "train.batch_size=5 (the global batch) is not a multiple of train.micro_batch_size=2",
    ),
    (
        "a batch too big for memory",  # 10M sequences x 16 positions: ~170 GB of activations
        "run",
        lambda ws: [ws.experiment(), "--batch_size=10000000", "--micro_batch_size=10000000"],
        "does not fit in memory: micro_batch_size=10000000 at context 16",
    ),
    (
        "a model too big for memory",  # 9.7B parameters: ~155 GB of weights, gradients and AdamW state
        "run",
        lambda ws: [ws.experiment(), "--n_layer=48", "--n_embd=4096", "--n_head=32"],
        "does not fit in memory",
    ),
    ("fp16 without CUDA", "run", lambda ws: [ws.experiment(), "--precision=fp16"], "fp16 needs CUDA"),
    # ------------------------------------------------------------------------------- data
    (
        "missing WikiText split",
        "run",
        lambda ws: [ws.experiment({"dataset": "wikitext-103-v1", "data_dir": ws.folder("assets")})],
        "the train split of wikitext-103-v1 was not found. Looked in:\n"
        "  - {root}/assets/wikitext-103-v1/wiki.train.tokens\n"
        "  - {root}/assets/wikitext-103-v1/wiki.train.tokens.xz\n",
    ),
    (
        "asset root pointing nowhere",
        "run",
        lambda ws: [ws.experiment({"data_dir": str(ws.root / "nowhere"), "tokenizer": "gpt2"})],
        "the asset root {root}/nowhere (from data.data_dir) does not exist",
    ),
    (
        "missing split file",
        "run",
        lambda ws: [ws.experiment(), f"--val_file={ws.root / 'valid.txt'}"],
        "val text file {root}/valid.txt does not exist",
    ),
    (
        "split file that is a folder",
        "run",
        lambda ws: [ws.experiment(), f"--train_file={ws.folder('texts')}"],
        "train text file {root}/texts is a directory",
    ),
    (
        "empty split file",
        "run",
        lambda ws: [ws.experiment({"train_file": ws.text_file("empty.txt", "")})],
        "the train split ({root}/empty.txt) is empty",
    ),
    (
        "split file of only whitespace",
        "run",
        lambda ws: [ws.experiment({"train_file": ws.text_file("blank.txt", " \n \n")})],
        "the train split ({root}/blank.txt) is empty or only whitespace",
    ),
    (
        "text that is not UTF-8",
        "run",
        lambda ws: [ws.text_with("Line one.\nCaf", b"\xe9")],
        "{root}/latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 13 (line 2) cannot be decoded",
    ),
    (
        "a binary file as text",
        "run",
        lambda ws: [ws.experiment(), f"--train_file={ws.bytes_file('model.bin', bytes(range(256)))}"],
        "{root}/model.bin is not UTF-8 text: byte 0x80 at byte offset 128 (line 2)",
    ),
    (
        "a corrupt .xz file",
        "run",
        lambda ws: [
            ws.experiment(),
            f"--train_file={ws.bytes_file('train.txt.xz', lzma.compress(b'Some text. ' * 50)[:40])}",
        ],
        "{root}/train.txt.xz is not a complete .xz file",
    ),
    (
        "text shorter than one training window",
        "run",
        lambda ws: [ws.experiment({"train_file": ws.text_file("short.txt", "Only a few words here.")})],
        "the train split has 6 tokens, fewer than one training window of the context "
        "(model.block_size=16) + 1 = 17: use more train text or --block_size=5 or less",
    ),
    (
        "a validation split of one token",
        "run",
        lambda ws: [ws.experiment(), f"--val_file={ws.text_file('one.txt', 'Hello')}"],
        "the val split of text-one-",
    ),
    (
        "tokenizer directory missing",
        "run",
        lambda ws: [ws.experiment(), f"--tokenizer={ws.root / 'no-tokenizer'}"],
        "tokenizer directory {root}/no-tokenizer does not exist",
    ),
    (
        "tokenizer directory without a tokenizer",
        "run",
        lambda ws: [ws.experiment(), f"--tokenizer={ws.folder('empty-tokenizer')}"],
        "tokenizer directory {root}/empty-tokenizer holds no loadable tokenizer",
    ),
    (
        "tokenizer that is a file",
        "run",
        lambda ws: [ws.experiment(), f"--tokenizer={ws.text_file('tokenizer.json', '{}')}"],
        "--tokenizer={root}/tokenizer.json is a file",
    ),
    (
        "token cache folder that cannot be created",
        "run",
        lambda ws: [ws.experiment(), f"--cache_dir={ws.text_file('cache-file', NOTES)}/tokens"],
        "token cache: cannot create {root}/cache-file/tokens/text-train-",
    ),
    (
        "token cache folder that is not writable",
        "run",
        lambda ws: [ws.experiment(), f"--cache_dir={ws.unwritable_folder()}"],
        "token cache: cannot create",
    ),
    (
        "token cache from another tokenizer",
        "run",
        lambda ws: [ws.foreign_tokenizer_cache()],
        "was made with another tokenizer (0123456789abcdef, now",
    ),
    # ------------------------------------------------------------------------------- output folder
    (
        "output folder that cannot be created",
        "run",
        lambda ws: [ws.experiment({"out_dir": f"{ws.text_file('runs-file', NOTES)}/runs"})],
        "cannot create",
    ),
    (
        "output folder that is not writable",
        "run",
        lambda ws: [ws.experiment({"out_dir": ws.unwritable_folder()})],
        "not writable",
    ),
    (
        "a fresh run into a run directory with checkpoints",
        "run",
        lambda ws: [ws.experiment({"out_dir": str(ws.root), "run_name": ws.checkpoint().parent.name})],
        "already has checkpoints: continue it with --resume=",
    ),
    # ------------------------------------------------------------------------------- checkpoints
    (
        "truncated checkpoint",
        "run",
        lambda ws: [f"--resume={truncated(ws.checkpoint())}"],
        "is not a loadable MiniGPT checkpoint: not a complete PyTorch archive",
    ),
    (
        "foreign checkpoint",
        "run",
        lambda ws: [f"--resume={foreign(ws.root / 'other.pt')}"],
        "is not a MiniGPT checkpoint (no 'minigpt-checkpoint' marker)",
    ),
    (
        "resuming from a text file",
        "run",
        lambda ws: [f"--resume={ws.text_file('notes.txt', NOTES)}"],
        "{root}/notes.txt is not a loadable MiniGPT checkpoint: not a complete PyTorch archive (a text file",
    ),
    (
        "resuming from an empty folder",
        "run",
        lambda ws: [f"--resume={ws.folder('empty-run')}"],
        "no checkpoint (ckpt-*.pt) in {root}/empty-run",
    ),
    (
        "run directory without checkpoints",
        "run",
        lambda ws: [f"--resume={ws.root}"],
        "no checkpoint (ckpt-*.pt) in",
    ),
    (
        "resuming with an incompatible config",
        "run",
        lambda ws: [ws.experiment(), f"--resume={ws.checkpoint(lr=0.5)}"],
        "cannot resume with an incompatible config: train.lr is 0.5 in the checkpoint but 0.003 now",
    ),
    (
        "fine-tuning from a text file",
        "run",
        lambda ws: [ws.experiment(), f"--init_from={ws.text_file('notes.txt', NOTES)}"],
        "{root}/notes.txt is not a loadable MiniGPT checkpoint: not a complete PyTorch archive",
    ),
    (
        "fine-tuning from a folder without a model",
        "run",
        lambda ws: [ws.experiment(), f"--init_from={ws.folder('no-model')}"],
        "{root}/no-model",
    ),
    # ------------------------------------------------------------------------------- sampling
    ("empty prompt", "sample", lambda ws: sampling(ws, "--prompt="), "the prompt is empty"),
    (
        "prompt longer than the context",
        "sample",
        lambda ws: sampling(ws, "--prompt", " ".join(["one two three"] * 10)),
        "the prompt is 30 tokens, longer than the context of 16",
    ),
    (
        "top_p above 1",
        "sample",
        lambda ws: sampling(ws, "--prompt=Hi", "--top-p=1.5"),
        "top_p must be in (0, 1], got 1.5",
    ),
    (
        "top_p of 0",
        "sample",
        lambda ws: sampling(ws, "--prompt=Hi", "--top-p=0"),
        "top_p must be in (0, 1], got 0.0",
    ),
    (
        "negative temperature",
        "sample",
        lambda ws: sampling(ws, "--prompt=Hi", "--temperature=-1"),
        "temperature must be >= 0 (0 means greedy), got -1.0",
    ),
    (
        "sampling from an empty folder",
        "sample",
        lambda ws: ["--checkpoint", ws.folder("nothing"), "--prompt=Hi"],
        "no checkpoint (ckpt-*.pt) in {root}/nothing",
    ),
    (
        "an adapter that is a text file",
        "sample",
        lambda ws: sampling(ws, "--prompt=Hi", f"--adapter={ws.text_file('adapter.txt', NOTES)}"),
        "{root}/adapter.txt is a file, but an adapter is a directory",
    ),
]


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and "cache" not in p.relative_to(root).parts
    }


def test_the_table_covers_at_least_thirty_mistakes_each_once():
    assert len(BAD_INPUTS) >= 30
    assert len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize(
    "entry, make_args, message", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_gets_a_specific_early_error_and_leaves_nothing_behind(
    entry, make_args, message, tmp_path, tiny_corpus, capsys
):
    workspace = Workspace(tmp_path, tiny_corpus)
    args = make_args(workspace)
    before = files_under(tmp_path)
    if entry == "run":
        code = run_script.main(args)
    else:
        with pytest.raises(SystemExit) as exit_info:
            sample.main(args)
        code = exit_info.value.code
    err = capsys.readouterr().err
    assert code == 2
    assert "error: " in err and message.format(root=tmp_path) in err, err
    assert "Traceback" not in err
    assert files_under(tmp_path) == before  # nothing created, changed or half-written
    assert not list((tmp_path / "runs").glob("*"))  # no run directory
    assert not list(tmp_path.rglob("*.tmp"))


# ----------------------------------------------------------------------------------------------- no Hub


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingHost:
    """A local port that accepts connections and counts them: ``answer=False`` holds each one open without a
    word (a host behind a dropping firewall), ``answer=True`` hangs up at once (a host that refuses to
    talk). A test then counts probes instead of timing them."""

    def __init__(self, hang_up: bool) -> None:
        self.connections = 0
        self._held: list[socket.socket] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        self._hang_up = hang_up
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._server.accept()
                self.connections += 1
                if self._hang_up:
                    connection.close()
                else:
                    self._held.append(connection)

    def close(self) -> None:
        for connection in [*self._held, self._server]:
            connection.close()


@pytest.fixture
def silent_host() -> Iterator[CountingHost]:
    host = CountingHost(hang_up=False)
    yield host
    host.close()


@pytest.fixture
def hanging_up_host() -> Iterator[CountingHost]:
    host = CountingHost(hang_up=True)
    yield host
    host.close()


@pytest.fixture
def hub_at(monkeypatch) -> Callable[[int], None]:
    """Point the Hub at a local port, with the offline switches that conftest sets turned off."""

    def point(port: int) -> None:
        for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        data._probe_hub.cache_clear()

    return point


@pytest.mark.slow
def test_missing_split_with_an_unreachable_hub_tries_the_hub_once(
    tmp_path, tiny_corpus, data_root, hanging_up_host
):
    """The issue's case: raw WikiText-103 train is neither in the asset root nor reachable. The process is
    fresh, so nothing is probed or imported in advance, and the offline switches are off. The Hub is tried
    by one probe, not by the Hub clients' retries (which took 23 s)."""
    closed_port = hanging_up_host.port
    overrides = {
        "dataset": "wikitext-103-raw-v1",
        "data_dir": str(data_root),
        "cache_dir": str(tmp_path / "c"),
    }
    experiment = write_experiment(tmp_path / "exp.py", tiny_config(tiny_corpus, tmp_path / "runs", overrides))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port}", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), str(experiment)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr
    assert "the train split of wikitext-103-raw-v1 was not found" in message
    assert str(data_root / "wikitext-103-raw-v1" / "wiki.train.raw.xz") in message
    assert f"unreachable at http://127.0.0.1:{closed_port}" in message
    assert "--dataset=wikitext-2-v1 (its train split is in the asset root)" in message  # ways forward
    assert f"put wiki.train.raw (or wiki.train.raw.xz) in {data_root / 'wikitext-103-raw-v1'}/" in message
    assert "--dataset=text --train_file=PATH" in message
    assert hanging_up_host.connections == 1, message
    assert not (tmp_path / "runs").exists()


def test_a_hub_that_never_answers_costs_one_probe_timeout(tmp_path, hub_at, silent_host, monkeypatch):
    """One probe, given up after its timeout (shortened here). (huggingface_hub itself may still fetch its
    agent registry from the endpoint, once a day in a fresh process: outside what this test controls.)"""
    silent_port = silent_host.port
    hub_at(silent_port)
    monkeypatch.delenv("MINIGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "HUB_PROBE_TIMEOUT_S", 0.3)
    probes, real_urlopen = [], data.urllib.request.urlopen

    def counted_urlopen(request, timeout):
        probes.append((request.full_url, timeout))
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(data.urllib.request, "urlopen", counted_urlopen)
    config = data.DataConfig(tokenizer="minigpt-tests/no-such-tokenizer")
    with pytest.raises(data.DataError) as error:
        data.load_tokenizer(config)
    assert probes == [(f"http://127.0.0.1:{silent_port}", 0.3)]
    message = str(error.value)
    assert "tokenizer 'minigpt-tests/no-such-tokenizer' not found. Looked in:" in message
    assert "no asset root is set" in message
    assert f"the Hugging Face Hub: unreachable at http://127.0.0.1:{silent_port} (timed out)" in message
    assert "--tokenizer" in message


def test_the_hub_is_probed_once_per_process(hub_at, closed_port, monkeypatch):
    hub_at(closed_port)
    probes: list[str] = []
    real_urlopen = data.urllib.request.urlopen

    def counting_urlopen(request, *args, **kwargs):
        probes.append(request.full_url)
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(data.urllib.request, "urlopen", counting_urlopen)
    first = data.hub_unavailable(data.DATASETS_OFFLINE_VARIABLES)
    second = data.hub_unavailable(data.TOKENIZER_OFFLINE_VARIABLES)
    assert (
        first == second == f"unreachable at http://127.0.0.1:{closed_port} ([Errno 111] Connection refused)"
    )
    assert probes == [f"http://127.0.0.1:{closed_port}"]


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_an_offline_switch_means_the_hub_is_not_tried(hub_at, closed_port, monkeypatch, variable):
    hub_at(closed_port)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(data, "_probe_hub", lambda endpoint: pytest.fail("probed the Hub while offline"))
    assert data.hub_unavailable(data.DATASETS_OFFLINE_VARIABLES) == f"offline ({variable}=1)"


def test_a_hub_that_answers_is_reachable_whatever_its_status(hub_at, monkeypatch):
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    with HTTPServer(("127.0.0.1", 0), NotFound) as server:
        Thread(target=server.handle_request, daemon=True).start()
        hub_at(server.server_address[1])
        assert data.hub_unavailable(data.DATASETS_OFFLINE_VARIABLES) is None
