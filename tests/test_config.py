"""Experiment files and ``--key=value`` overrides: types, names, and every way they can be wrong."""

import dataclasses
from pathlib import Path

import pytest
from helpers import write_experiment

import run as run_script
from minigpt import config as config_module
from minigpt import data
from minigpt.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    LogConfig,
    TrainConfig,
    all_keys,
    apply_overrides,
    derive,
    describe_keys,
    field_docs,
    load_experiment,
    parse_overrides,
    resolve_key,
)


def overridden(*args: str) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig(), parse_overrides(list(args)))


def test_dotted_and_bare_names_set_the_same_field():
    assert overridden("--train.lr=0.01").train.lr == overridden("--lr=0.01").train.lr == 0.01
    assert overridden("--model.n_layer=3").model.n_layer == overridden("--n_layer=3").model.n_layer == 3
    assert overridden("--name=abc").name == "abc"


def test_values_take_the_type_of_their_field():
    config = overridden("--dropout=0", "--max_steps=1e3", "--compile=True", "--lr=3e-4", "--run_name=7")
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)
    assert config.train.max_steps == 1000 and isinstance(config.train.max_steps, int)
    assert config.train.compile is True
    assert config.train.lr == 3e-4
    assert config.log.run_name == "7"
    for spelling, expected in [
        ("True", True),
        ("true", True),
        ("1", True),
        ("false", False),
        ("False", False),
    ]:
        assert overridden(f"--compile={spelling}").train.compile is expected
    assert overridden("--seed=123456789012345678").train.seed == 123456789012345678  # no float round trip


def test_wandb_agent_style_arguments_parse():
    args = ["--lr=0.001", "--n_layer", "3", "--compile", "--train.warmup_steps=-0", "--tags", "a,b"]
    assert parse_overrides(args) == {
        "lr": "0.001",
        "n_layer": "3",
        "compile": "true",
        "train.warmup_steps": "-0",
        "tags": "a,b",
    }
    config = apply_overrides(ExperimentConfig(), parse_overrides(args))
    assert (config.train.lr, config.model.n_layer, config.train.compile) == (0.001, 3, True)
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        parse_overrides(["stray"])


def test_python_values_are_type_checked_too():
    assert derive(ExperimentConfig(), {"dropout": 0}).model.dropout == 0.0
    with pytest.raises(ConfigError, match=r"model.n_layer=2.5: expected an integer, got a float"):
        derive(ExperimentConfig(), {"n_layer": 2.5})
    with pytest.raises(ConfigError, match=r"train.max_steps=True: expected an integer, got a bool"):
        derive(ExperimentConfig(), {"max_steps": True})


def test_derive_changes_only_what_it_names():
    base = ExperimentConfig()
    derived = derive(base, {"n_head": 4, "train.lr": 1e-3})
    assert (derived.model.n_head, derived.train.lr) == (4, 1e-3)
    assert dataclasses.replace(derived.model, n_head=base.model.n_head) == base.model
    assert dataclasses.replace(derived.train, lr=base.train.lr) == base.train
    assert base.model.n_head == 12  # the base is not modified


def test_config_round_trips_through_a_dict():
    config = overridden("--n_layer=2", "--lr=0.5", "--wandb=disabled", "--tags=x")
    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_from_dict_with_an_unknown_key_is_a_config_error():
    values = ExperimentConfig().to_dict()
    values["train"]["learning_rate"] = 1.0
    with pytest.raises(ConfigError, match="learning_rate"):
        ExperimentConfig.from_dict(values)


@pytest.mark.parametrize(
    "key, suggestions",
    [
        ("n_layr", ["--n_layer", "--model.n_layer"]),
        ("train.lrr", ["--train.lr"]),
        ("dropuot", ["--dropout"]),
        ("model.heads", ["--model.n_head"]),
    ],
)
def test_unknown_key_names_the_closest_valid_keys(key, suggestions):
    with pytest.raises(ConfigError, match=f"unknown config key --{key}") as error:
        resolve_key(key)
    for suggestion in suggestions:
        assert suggestion in str(error.value)
    assert "python run.py --help" in str(error.value)


def test_ambiguous_bare_key_lists_the_dotted_names(monkeypatch):
    keys = {**all_keys(), "log.seed": int}  # a second field named ``seed``
    monkeypatch.setattr(config_module, "all_keys", lambda: keys)
    with pytest.raises(ConfigError, match=r"--seed is ambiguous: say which one of --train.seed, --log.seed"):
        resolve_key("seed")
    assert resolve_key("train.seed") == "train.seed"


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--n_layer=2.5", "--model.n_layer=2.5: expected an integer"),
        ("--max_steps=ten", "--train.max_steps=ten: expected an integer"),
        ("--dropout=lots", "--model.dropout=lots: expected a number"),
        ("--compile=maybe", "--train.compile=maybe: expected true or false"),
        ("--lr=", "--train.lr=: expected a number"),
    ],
)
def test_wrong_type_names_the_field_and_what_it_accepts(arg, message):
    with pytest.raises(ConfigError) as error:
        overridden(arg)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n_embd=30", "--n_head=4"], "model.n_embd: 30 must be divisible by model.n_head=4"),
        (["--lr=-1e-3"], "train.lr: must be positive, got -0.001"),
        (["--max_minutes=-1"], "train.max_minutes: must be >= 0, got -1.0"),
        (["--norm_position=middle"], "model.norm_position: must be one of 'pre', 'post', got 'middle'"),
        (["--dropout=1.5"], "model.dropout: must be in [0, 1), got 1.5"),
        (["--max_steps=0"], "train.max_steps: must be positive, got 0"),
        (["--wandb=sometimes"], "log.wandb: must be one of 'auto', 'offline', 'online', 'disabled'"),
        (["--block_size=64", "--eval_stride=128"], "train.eval_stride: 128 is longer than the context"),
        (["--dataset=text"], 'data.train_file: is required with data.dataset="text"'),
    ],
)
def test_impossible_values_name_the_field_and_the_rule(args, message):
    with pytest.raises(ConfigError) as error:
        overridden(*args)
    assert message in str(error.value)


def test_missing_experiment_file_suggests_a_close_name(tmp_path):
    (tmp_path / "baseline.py").write_text("")
    with pytest.raises(ConfigError, match=r"basline.py does not exist; did you mean baseline.py\?"):
        load_experiment(tmp_path / "basline.py")
    with pytest.raises(ConfigError, match="experiments there: baseline.py"):
        load_experiment(tmp_path / "zzz.py")


def test_experiment_file_with_a_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("from minigpt.config import ExperimentConfig\n\nconfig = ExperimentConfig(\n")
    with pytest.raises(ConfigError, match=r"broken.py has a syntax error at line 3"):
        load_experiment(path)


def test_experiment_file_that_raises_names_the_line(tmp_path):
    path = tmp_path / "raises.py"
    path.write_text("x = 1\nconfig = undefined_name\n")
    with pytest.raises(ConfigError, match=r"raises.py failed at line 2: NameError"):
        load_experiment(path)


def test_experiment_file_with_a_bad_value_says_which_file(tmp_path):
    path = tmp_path / "bad_value.py"
    path.write_text("from minigpt.config import *\nconfig = derive(ExperimentConfig(), {'lr': -1})\n")
    with pytest.raises(ConfigError, match=r"in experiment file .*bad_value.py: train.lr: must be positive"):
        load_experiment(path)


@pytest.mark.parametrize("body, found", [("x = 1\n", "nothing"), ("config = {'lr': 1}\n", "a dict")])
def test_experiment_file_without_a_config_says_what_it_needs(tmp_path, body, found):
    path = tmp_path / "empty.py"
    path.write_text(body)
    with pytest.raises(
        ConfigError, match=f"defines no experiment: expected `config = ExperimentConfig.*found {found}"
    ):
        load_experiment(path)


def test_the_shipped_experiments_load():
    for path in sorted(Path(run_script.__file__).parent.glob("experiments/**/*.py")):
        assert isinstance(load_experiment(path), ExperimentConfig), path


@pytest.mark.parametrize(
    "args",
    [
        ["--n_layr=2"],
        ["--n_layer=2.5"],
        ["--n_embd=30", "--n_head=4"],
        ["--lr=-1"],
        ["--norm_position=middle"],
    ],
)
def test_config_errors_come_before_any_data_is_loaded(tmp_path, tiny_corpus, monkeypatch, capsys, args):
    def fail(*_args, **_kwargs):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(data, "load_tokenizer", fail)
    monkeypatch.setattr(data, "load_split", fail)
    cache = tmp_path / "cache"
    config = ExperimentConfig.from_dict(
        {**ExperimentConfig().to_dict(), "data": {**tiny_corpus, "cache_dir": str(cache)}}
    )
    experiment = write_experiment(tmp_path / "exp.py", derive(config, {"out_dir": str(tmp_path / "runs")}))
    assert run_script.main([str(experiment), *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not cache.exists() and not (tmp_path / "runs").exists()


def test_help_lists_every_key(capsys):
    assert run_script.main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in all_keys():
        assert f"--{key}=" in out


def test_every_key_is_described_from_its_field_docs():
    text = describe_keys()
    entries = text.split("\n  --")
    assert len(entries) == len(all_keys())
    for entry in entries:
        key, _, description = entry.partition("\n")
        assert description.strip(), f"--{key.strip()} has no description"
    assert "number of transformer blocks" in text  # GPTConfig documents its fields in trailing comments
    assert "inner dimension of each update" in text  # LoRAConfig in docstrings under each field


def test_help_for_a_file_shows_the_files_values():
    tiny = load_experiment(Path(run_script.__file__).parent / "experiments" / "tiny.py")
    text = describe_keys(tiny)
    assert "--model.n_layer=<int>  (default: 2)" in text and "--train.max_steps=<int>  (default: 150)" in text
    assert "--model.n_layer=<int>  (default: 12)" in describe_keys()


def test_field_docs_join_multi_line_docstrings():
    docs = field_docs(TrainConfig)
    assert docs["max_minutes"].startswith("Stop training after this many minutes")
    assert "\n" not in docs["precision"] and "  " not in docs["precision"]


def test_every_config_rule_raises_config_error():
    with pytest.raises(ConfigError, match="train.lr: must be positive"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="log.wandb: must be one of"):
        LogConfig(wandb="sometimes")
    with pytest.raises(ConfigError, match="data.train_file"):
        DataConfig(dataset="text")


def test_batch_divisibility_is_left_to_the_run_which_knows_the_process_count():
    # 12 sequences split over micro-batches of 4 on 3 processes only; TrainConfig cannot know the count.
    assert TrainConfig(batch_size=12, micro_batch_size=4).batch_size == 12
    assert TrainConfig(batch_size=10, micro_batch_size=4).batch_size == 10


def test_new_log_and_train_fields_have_safe_defaults():
    config = ExperimentConfig()
    assert (config.log.sweep, config.log.export_hf, config.train.max_minutes) == ("", False, 0)
    assert overridden("--sweep=abl", "--export_hf", "--max_minutes=1.5").log.sweep == "abl"


# --------------------------------------------------------------------------------------------------- roles


def test_every_key_has_a_role_and_keys_without_one_define_the_experiment():
    roles = config_module.key_roles()
    assert roles.keys() == all_keys().keys()
    assert set(roles.values()) <= set(config_module.ROLES)
    assert roles["model.n_head"] == roles["train.lr"] == config_module.EXPERIMENT  # model.py declares none
    assert roles["train.seed"] == config_module.REPLICATE
    assert roles["train.micro_batch_size"] == config_module.EXECUTION
    assert roles["train.eval_max_tokens"] == config_module.MEASUREMENT
    assert all(role == config_module.RECORD for key, role in roles.items() if key.startswith("log."))


def test_the_resume_check_the_wandb_group_and_the_analysis_read_the_same_roles():
    from analysis.runs import NOT_VARIANT_KEYS
    from minigpt.tracking import RUN_SPECIFIC_KEYS
    from minigpt.train import RESUMABLE_CHANGES

    roles = config_module.key_roles()
    assert RUN_SPECIFIC_KEYS == NOT_VARIANT_KEYS == config_module.non_variant_keys()
    # What a resume may change is what does not define the variant, the seed aside, plus what is scored how
    # and for how long the run trains.
    measurement = {k for k, role in roles.items() if role == config_module.MEASUREMENT}
    expected = (NOT_VARIANT_KEYS - {"train.seed"}) | measurement | {"train.max_steps", "train.max_minutes"}
    assert expected == RESUMABLE_CHANGES


def test_keys_that_define_no_variant_leave_the_wandb_group_and_the_analysis_variant_alone():
    from analysis.runs import Run, varying_keys
    from minigpt.tracking import variant_group

    base = ExperimentConfig().to_dict()
    flat = config_module.flatten(base)
    others = {k: f"other-{k}" for k in config_module.non_variant_keys() if k != "name"}  # name: the prefix
    changed = {**base}
    for key, value in others.items():
        section, name = key.split(".")
        changed[section] = {**changed[section], name: value}
    assert variant_group(changed) == variant_group(base)
    runs = [Run("a", flat, {}), Run("b", config_module.flatten(changed), {})]
    assert varying_keys(runs) == []
    runs.append(Run("c", {**flat, "train.eval_max_tokens": 4096, "train.lr": 1.0}, {}))
    assert varying_keys(runs) == ["train.eval_max_tokens", "train.lr"]


def test_lora_without_the_weights_it_adapts_is_refused_by_the_config_once_overrides_are_in():
    lora_only = overridden("--lora.rank=4")  # an experiment file may leave init_from to the command line
    with pytest.raises(ConfigError, match="lora.rank > 0 adapts trained weights"):
        lora_only.check_runnable()
    apply_overrides(lora_only, {"init_from": "runs/base"}).check_runnable()


def test_first_line_of_an_error_drops_the_libraries_explanation_or_names_the_type():
    from minigpt.errors import first_line

    assert first_line(OSError("no such file\n\nsee the docs for more")) == "no such file"
    assert first_line(ValueError()) == "ValueError"


def test_the_variant_label_names_what_differs_from_the_experiment_and_leaves_out_seeds():
    base = ExperimentConfig(name="abl")
    variant = apply_overrides(base, {"model.norm_position": "post", "train.lr": 0.004, "train.seed": 3})
    assert config_module.variant_label(base, variant) == "abl: norm_position=post, lr=0.004"
    executed_elsewhere = apply_overrides(variant, {"train.threads": 1, "log.out_dir": "x", "train.seed": 9})
    assert config_module.variant_label(base, executed_elsewhere) == "abl: norm_position=post, lr=0.004"
    assert config_module.variant_label(base, base) == "abl"
    long = apply_overrides(base, {"data.dataset": "hf:" + "d" * 200})
    label = config_module.variant_label(base, long)
    assert len(label) == config_module.MAX_GROUP_CHARS and label.startswith("abl: dataset=hf:ddd")
    other_long = apply_overrides(base, {"data.dataset": "hf:" + "d" * 199 + "e"})
    assert config_module.variant_label(base, other_long) != label  # the cut keeps a digest of the whole


def test_run_py_groups_a_runs_seeds_in_wandb_by_what_its_command_line_changes(tmp_path, monkeypatch):
    from minigpt import train

    experiment = write_experiment(tmp_path / "abl.py", ExperimentConfig(name="abl"))
    started = []
    monkeypatch.setattr(train, "run", lambda config, **_kwargs: started.append(config))
    for seed in (1, 2):
        assert run_script.main([str(experiment), "--norm_position=post", "--lr=0.004", f"--seed={seed}"]) == 0
    assert run_script.main([str(experiment), "--lr=0.004", "--group=mine"]) == 0
    assert [c.log.group for c in started] == ["abl: norm_position=post, lr=0.004"] * 2 + ["mine"]
