"""W&B as its users live it: when a run goes online, what it sends (axes, summaries, group, job type, tags),
artifacts, resuming, and what it says. A local HTTP server on 127.0.0.1 stands in for the W&B host, so
nothing here needs a network."""

import contextlib
import dataclasses
import http.server
import json
import threading
from pathlib import Path

import pytest
import wandb
import yaml
from helpers import tiny_config
from test_study_report import write_study

from analysis import report, study_report
from analysis.runs import load_wandb_runs
from minigpt import train
from minigpt.config import ConfigError, ExperimentConfig, LogConfig, flatten
from minigpt.tracking import (
    ConsoleLogger,
    MultiLogger,
    WandbLogger,
    build_logger,
    fetch_artifact,
    is_artifact_reference,
    log_artifact_run,
    variant_group,
    wandb_mode,
)


class FakeWandbHost:
    """Answers every request with 401 Unauthorized (as W&B does for an unknown API key) and records it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                host.requests.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(401)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = answer

            def log_message(self, *_args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def wandb_host(monkeypatch, tmp_path):
    """A fake W&B host, no credentials, no mode in the environment, and no sweep agent."""
    host = FakeWandbHost()
    monkeypatch.setenv("WANDB_BASE_URL", host.url)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # never the user's own ~/.netrc
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    # wandb alone would retry an unreachable or refusing host for this long; kept short for the tests.
    monkeypatch.setattr(WandbLogger, "INIT_TIMEOUT", 10.0)
    yield host
    host.close()


def write_netrc(path: Path, machine: str) -> None:
    path.write_text(f"machine {machine}\n  login user\n  password {'k' * 40}\n")


CREDENTIAL_CASES = {
    "no credentials": ({}, None, "offline"),
    "an API key": ({"WANDB_API_KEY": "k" * 40}, None, "online"),
    "a netrc entry for the host": ({}, "host", "online"),
    "a netrc entry for another host": ({}, "api.example.org", "offline"),
    "under wandb agent": ({"WANDB_SWEEP_ID": "abc123"}, None, "online"),
    "WANDB_MODE=offline and an API key": (
        {"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40},
        None,
        "offline",
    ),
}


@pytest.mark.parametrize("case", CREDENTIAL_CASES)
def test_auto_goes_online_exactly_when_the_user_can_use_wandb(case, wandb_host, monkeypatch, tmp_path):
    env, netrc_machine, expected = CREDENTIAL_CASES[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if netrc_machine:
        machine = wandb_host.url.removeprefix("http://") if netrc_machine == "host" else netrc_machine
        write_netrc(tmp_path / "netrc", machine)
    assert wandb_mode("auto") == expected
    assert wandb_mode("disabled") == "disabled"  # an explicit --wandb always wins


def warnings_if(expected: bool):
    if expected:
        return pytest.warns(UserWarning, match=r"W&B online start failed .* logging offline instead")
    return contextlib.nullcontext()


@pytest.mark.parametrize("option, attempted", [("auto", True), ("offline", False)])
def test_a_run_tries_the_wandb_host_only_when_online_and_still_finishes(
    option, attempted, wandb_host, monkeypatch, tmp_path, tiny_corpus
):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # credentials the fake host refuses
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    config = tiny_config(tiny_corpus, tmp_path, {"log.wandb": option, "max_steps": 2, "eval_interval": 0})
    with warnings_if(attempted):
        summary = train.run(config)
    assert bool(wandb_host.requests) is attempted
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    assert summary["step"] == 2
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1  # the fallback logged offline


class FakeRun:
    """Stands in for ``wandb.init``'s run and records what the logger asked of it."""

    def __init__(self, **kwargs) -> None:
        self.init = kwargs
        self.id, self.url = "fake01", "https://wandb.example/run/fake01"
        self.dir = str(Path(kwargs["dir"]) / "wandb" / "offline-run-x" / "files")
        self.metrics: list[tuple] = []
        self.artifacts: list = []
        self.aliases: list[list[str] | None] = []
        self.used: list[str] = []
        self.logged: list[tuple] = []
        self.summary: dict = {}

    def define_metric(self, name, step_metric=None, summary=None) -> None:
        self.metrics.append((name, step_metric, summary))

    def log_artifact(self, artifact, aliases=None) -> None:
        self.artifacts.append(artifact)
        self.aliases.append(aliases)

    def use_artifact(self, name) -> None:
        self.used.append(name)

    def log(self, row, step=None) -> None:
        self.logged.append((row, step))

    def finish(self, exit_code=None) -> None:
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    runs: list[FakeRun] = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def wandb_logger(logger: MultiLogger) -> WandbLogger:
    return next(x for x in logger.loggers if isinstance(x, WandbLogger))


def experiment(tmp_path, init_from: str = "", **log) -> ExperimentConfig:
    config = tiny_config({"dataset": "wikitext-2-v1"}, tmp_path)
    log = dataclasses.replace(config.log, **{"wandb": "offline", **log})
    return dataclasses.replace(config, log=log, init_from=init_from)


def test_every_series_is_plotted_against_tokens_and_val_loss_summarises_to_its_minimum(fake_wandb, tmp_path):
    logger = build_logger(experiment(tmp_path), tmp_path / "run")
    logger.start({}, total_steps=1)
    (run,) = fake_wandb
    assert ("train/tokens", None, None) in run.metrics
    assert ("*", "train/tokens", None) in run.metrics
    assert ("val/loss", "train/tokens", "min") in run.metrics


def test_seeds_of_one_variant_share_a_group_and_other_variants_do_not(tmp_path):
    base = experiment(tmp_path).to_dict()
    other_seed = json.loads(json.dumps(base))
    other_seed["train"]["seed"] += 1
    other_seed["log"].update(run_name="elsewhere", out_dir="other", sweep="s1")
    other_seed["train"]["threads"] = 7
    other_lr = json.loads(json.dumps(base))
    other_lr["train"]["lr"] *= 2
    assert variant_group(base) == variant_group(other_seed)
    assert variant_group(base) != variant_group(other_lr)
    assert variant_group(base).startswith("tiny-test-")


def test_job_type_tags_notes_and_an_explicit_group(fake_wandb, tmp_path):
    config = experiment(tmp_path, tags="a, b", sweep="abl-cpu", notes="does post-LN need warmup?")
    build_logger(config, tmp_path / "r1").start({}, 1)
    finetune = experiment(tmp_path, init_from="runs/base", group="mine")
    build_logger(finetune, tmp_path / "r2").start({}, 1)
    trained, tuned = (run.init for run in fake_wandb)
    assert (trained["job_type"], tuned["job_type"]) == ("train", "finetune")
    assert trained["tags"] == ["a", "b", "abl-cpu"]
    assert (trained["notes"], tuned["notes"]) == ("does post-LN need warmup?", None)
    assert tuned["group"] == "mine"


def test_a_disabled_run_has_no_wandb_logger(tmp_path):
    logger = build_logger(experiment(tmp_path, wandb="disabled"), tmp_path / "run")
    assert not any(isinstance(x, WandbLogger) for x in logger.loggers)
    assert any(isinstance(x, ConsoleLogger) for x in logger.loggers)


def test_an_online_resume_continues_the_run_id_by_default_and_says_what_wandb_will_show(
    fake_wandb, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("minigpt.tracking.wandb.can_connect", lambda _url: True)
    config = experiment(tmp_path, wandb="online")
    build_logger(config, tmp_path / "run", resume_id="abc123", first_step=40).start({}, 100, first_step=40)
    (run,) = fake_wandb
    assert (run.init["id"], run.init["resume"]) == ("abc123", "allow") and "resume_from" not in run.init
    err = capsys.readouterr().err
    assert "W&B resume" in err and "after 40" in err and "--wandb_rewind=true" in err


def test_an_online_resume_rewinds_the_wandb_run_to_the_checkpoint_when_asked(
    fake_wandb, tmp_path, monkeypatch
):
    monkeypatch.setattr("minigpt.tracking.wandb.can_connect", lambda _url: True)
    config = experiment(tmp_path, wandb="online", wandb_rewind=True)
    build_logger(config, tmp_path / "run", resume_id="abc123", first_step=40).start({}, 100, first_step=40)
    (run,) = fake_wandb
    assert run.init["resume_from"] == "abc123?_step=40"
    assert "id" not in run.init and "resume" not in run.init


@pytest.mark.parametrize("rewind", [False, True])
def test_a_resume_whose_server_refuses_it_continues_the_same_run_id_offline(
    rewind, wandb_host, tmp_path, monkeypatch
):
    # The stand-in host refuses every request (as W&B refuses a rewind of a run it still thinks is running):
    # either way the resumed part goes on offline under the same id, ready for `wandb sync`.
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    config = experiment(tmp_path, wandb="online", wandb_rewind=rewind)
    logger = build_logger(config, tmp_path / "run", resume_id="abc123", first_step=40)
    with warnings_if(True):
        logger.start({}, 100, first_step=40)
    assert wandb_host.requests and logger.run_id == "abc123"
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*-abc123"))


def test_an_offline_resume_continues_the_run_id_and_says_what_wandb_will_show(fake_wandb, tmp_path, capsys):
    logger = build_logger(experiment(tmp_path), tmp_path / "run", resume_id="abc123", first_step=40)
    logger.start({}, 100, first_step=40)
    (run,) = fake_wandb
    assert (run.init["id"], run.init["resume"]) == ("abc123", "allow")
    err = capsys.readouterr().err
    assert "W&B resume" in err and "after 40" in err and "metrics.jsonl" in err and "wandb sync" in err


def test_an_offline_run_prints_the_exact_sync_command_at_start_and_end(fake_wandb, tmp_path, capsys):
    logger = build_logger(experiment(tmp_path), tmp_path / "run")
    logger.start({}, 1)
    logger.finish()
    folder = Path(fake_wandb[0].dir).parent
    assert capsys.readouterr().err.count(f"wandb sync {folder}") == 2


def test_periodic_samples_grow_one_incremental_wandb_table(fake_wandb, tmp_path):
    logger = build_logger(experiment(tmp_path), tmp_path / "run")
    logger.start({}, total_steps=10)
    logger.sample("The history of", " the city", tokens=0, step=0)
    logger.sample("The history of", " the county", tokens=640, step=5)
    (run,) = fake_wandb
    (first_step, first), (second_step, second) = [(step, row["samples"]) for row, step in run.logged]
    assert (first_step, second_step) == (0, 5) and first is second  # one table, rows added
    assert second.log_mode == "INCREMENTAL" and second.columns == ["step", "tokens", "prompt", "text"]
    assert second.data == [[0, 0, "The history of", " the city"], [5, 640, "The history of", " the county"]]


def test_artifacts_are_logged_with_their_files(fake_wandb, tmp_path):
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (tmp_path / "adapter.pt").write_bytes(b"adapter")
    logger = build_logger(experiment(tmp_path), tmp_path / "run")
    logger.start({}, 1)
    logger.artifact(model_dir, "tiny test/model", "model")
    logger.artifact(tmp_path / "adapter.pt", "tiny-adapter", "lora-adapter")
    first, second = fake_wandb[0].artifacts
    assert (first.name, first.type, second.type) == ("tiny-test-model", "model", "lora-adapter")
    assert set(first.manifest.entries) == {"config.json"} and set(second.manifest.entries) == {"adapter.pt"}


def test_an_offline_artifact_is_kept_with_the_run_for_wandb_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    logger = WandbLogger("offline", "minigpt-test", tmp_path / "run", "artifact")
    logger.start({}, total_steps=1)
    logger.artifact(tmp_path / "ckpt.pt", "final-checkpoint", "model")
    logger.finish()
    # wandb's service may still be writing the run's record when finish() returns; shutting the service
    # down waits for it, however busy the machine is, so no deadline is needed.
    wandb.teardown()
    (record,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"final-checkpoint" in record.read_bytes()


def test_init_from_an_artifact_needs_wandb_online(wandb_host):
    with pytest.raises(ConfigError, match="is a W&B artifact, which needs W&B online"):
        fetch_artifact("wandb-artifact://me/minigpt/tiny-model:v0", "offline", Path("unused"))


def test_init_from_an_artifact_downloads_it_and_returns_its_checkpoint(wandb_host, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    asked = []

    class FakeArtifact:
        def download(self, root):
            Path(root).mkdir(parents=True)
            (Path(root) / "ckpt-000010.pt").write_bytes(b"weights")
            return root

    class FakeApi:
        def artifact(self, name):
            asked.append(name)
            return FakeArtifact()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    assert is_artifact_reference("wandb-artifact://me/minigpt/tiny-model:v0")
    assert not is_artifact_reference("runs/tiny-model")
    found = fetch_artifact("wandb-artifact://me/minigpt/tiny-model:v0", "auto", tmp_path)
    assert asked == ["me/minigpt/tiny-model:v0"]
    assert found.read_bytes() == b"weights" and found.is_relative_to(tmp_path)


def test_a_report_directory_is_logged_as_an_artifact_of_its_own_run(fake_wandb, tmp_path):
    report = tmp_path / "reports" / "abl"
    report.mkdir(parents=True)
    (report / "README.md").write_text("# report")
    where = log_artifact_run(report, "abl-report", "report", "minigpt-test", "offline")
    (run,) = fake_wandb
    assert run.init["job_type"] == "report" and where.startswith("W&B (offline): upload with wandb sync ")
    (artifact,) = run.artifacts
    assert (artifact.name, set(artifact.manifest.entries)) == ("abl-report", {"README.md"})
    assert not (report / "wandb").exists()


@pytest.mark.slow
def test_a_study_report_is_logged_as_an_artifact_when_asked(fake_wandb, tmp_path, capsys):
    study = write_study(tmp_path / "study")
    out = tmp_path / "ablations"
    assert study_report.main([str(study), "--out", str(out), "--log-artifact", "minigpt-test"]) == 0
    (run,) = fake_wandb
    assert (run.init["project"], run.init["job_type"]) == ("minigpt-test", "report")
    (artifact,) = run.artifacts
    assert artifact.name == "ablations-report" and "report.md" in artifact.manifest.entries
    assert "as the W&B artifact ablations-report: W&B (offline)" in capsys.readouterr().out


SWEEP_FILES = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_names_the_project_its_runs_log_to(path):
    # Under `wandb agent` the sweep's project wins over wandb.init(project=...): without it, agent runs would
    # land in the default project, away from the local runs and from `analysis.report --wandb`.
    assert yaml.safe_load(path.read_text()).get("project") == LogConfig().project


@pytest.mark.parametrize(
    "source, project, filters",
    [
        ("me/minigpt", "me/minigpt", {}),
        ("me/minigpt/sweeps/ab12cd", "me/minigpt", {"sweep": "ab12cd"}),
        ("https://wandb.ai/me/minigpt/groups/post-LN/", "me/minigpt", {"group": "post-LN"}),
        ("me/minigpt/tags/abl-cpu", "me/minigpt", {"tags": {"$in": ["abl-cpu"]}}),
    ],
)
def test_the_report_reads_only_the_runs_of_the_sweep_group_or_tag_it_names(
    source, project, filters, monkeypatch
):
    asked = []

    class FakeApi:
        def runs(self, path, filters):
            asked.append((path, filters))
            return []

    monkeypatch.setattr(wandb, "Api", FakeApi)
    assert load_wandb_runs(source) == []
    assert asked == [(project, filters)]


def test_a_malformed_wandb_source_is_a_one_line_usage_error(capsys, tmp_path):
    assert report.main(["--wandb", "me/minigpt/runs/x", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ENTITY/PROJECT/sweeps/ID" in err


def test_an_online_run_prints_its_url_at_the_start_and_again_at_the_end(
    fake_wandb, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("minigpt.tracking.wandb.can_connect", lambda _url: True)
    logger = build_logger(experiment(tmp_path, wandb="online"), tmp_path / "run")
    logger.start({}, 1)
    assert capsys.readouterr().err.count(fake_wandb[0].url) == 1
    logger.finish()
    assert capsys.readouterr().err.count(fake_wandb[0].url) == 1


def test_each_config_key_reaches_wandb_once_under_the_name_a_sweep_gives_it(fake_wandb, tmp_path):
    config = experiment(tmp_path)
    build_logger(config, tmp_path / "run").start(config.to_dict(), 1)
    logged = fake_wandb[0].init["config"]
    assert logged == flatten(config.to_dict())
    assert not any(isinstance(v, dict) for v in logged.values())
    swept = {key for path in SWEEP_FILES for key in yaml.safe_load(path.read_text())["parameters"]}
    assert swept <= set(logged)


@pytest.mark.parametrize("status", ["finished", "failed", "diverged", "interrupted"])
def test_wandb_records_the_exit_code_run_py_gives_each_ending(status, fake_wandb, tmp_path):
    logger = build_logger(experiment(tmp_path), tmp_path / "run")
    logger.start({}, 1)
    logger.finish(status)
    assert fake_wandb[0].exit_code == {"finished": 0, "failed": 1, "diverged": 3, "interrupted": 130}[status]


def test_log_model_is_off_by_default_and_takes_only_its_three_settings():
    assert LogConfig().log_model == "off"
    with pytest.raises(ConfigError, match="log.log_model: must be one of 'off', 'end', 'checkpoint'"):
        LogConfig(log_model="always")


def model_artifacts(run: FakeRun) -> list[tuple]:
    return [(a, aliases) for a, aliases in zip(run.artifacts, run.aliases, strict=True) if a.type == "model"]


def trained_with(fake_wandb, tiny_corpus, tmp_path, **overrides) -> FakeRun:
    config = tiny_config(tiny_corpus, tmp_path, {"log.wandb": "offline", "eval_interval": 0, **overrides})
    train.run(config)
    (run,) = fake_wandb
    return run


@pytest.mark.slow
def test_log_model_end_logs_the_safetensors_weights_with_aliases_and_the_summary(
    fake_wandb, tiny_corpus, tmp_path
):
    run = trained_with(fake_wandb, tiny_corpus, tmp_path, **{"log.log_model": "end"})
    ((artifact, aliases),) = model_artifacts(run)
    assert artifact.name == "run-model" and set(aliases) == {"latest", "step-6", "best"}
    files = set(artifact.manifest.entries)
    assert "model.safetensors" in files and not any(name.endswith(".pt") for name in files)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert artifact.metadata["final_val/loss"] == summary["final_val/loss"] and artifact.metadata["step"] == 6
    assert not list((tmp_path / "run").glob("*/config.json"))  # staged where analysis finds no extra run


@pytest.mark.slow
def test_log_model_checkpoint_logs_a_version_at_every_checkpoint(fake_wandb, tiny_corpus, tmp_path):
    run = trained_with(
        fake_wandb, tiny_corpus, tmp_path, **{"log.log_model": "checkpoint", "ckpt_interval": 3}
    )
    steps = [alias for _, aliases in model_artifacts(run) for alias in aliases if alias.startswith("step-")]
    assert steps == ["step-3", "step-6"]


def test_log_model_off_logs_no_model(fake_wandb, tiny_corpus, tmp_path):
    assert model_artifacts(trained_with(fake_wandb, tiny_corpus, tmp_path)) == []


def test_a_model_gpt2_cannot_express_is_logged_as_its_checkpoint(fake_wandb, tiny_corpus, tmp_path, capsys):
    run = trained_with(
        fake_wandb, tiny_corpus, tmp_path, **{"log.log_model": "end", "model.norm_position": "post"}
    )
    ((artifact, _),) = model_artifacts(run)
    assert set(artifact.manifest.entries) == {"ckpt-0000006.pt"}
    assert "the W&B model artifact is the checkpoint" in capsys.readouterr().err


def test_starting_from_an_artifact_records_it_as_used_for_lineage(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setattr("minigpt.tracking.wandb.can_connect", lambda _url: True)
    config = experiment(tmp_path, init_from="wandb-artifact://me/minigpt/tiny-model:v0", wandb="online")
    build_logger(config, tmp_path / "run").start({}, 1)
    assert fake_wandb[0].used == ["me/minigpt/tiny-model:v0"]
