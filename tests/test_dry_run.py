import json
from pathlib import Path

import pytest

from runs import protocol
from runs.errors import InvalidInput, TunixUnavailable
from runs.hyperparameters import HYPERPARAMETERS
from runs.models import LogChunk, RunStatus, TunixRun

from .conftest import import_dataset

pytestmark = pytest.mark.django_db


def test_dry_run_completes_with_the_full_config_and_command(run_factory, dataset, settings):
    run = run_factory(max_steps=30, learning_rate=1e-3)
    assert run.status == RunStatus.COMPLETED
    assert run.mode == "dry-run"
    assert "240 valid rows" in run.message
    assert run.config["model"] == {
        "family": "llama3",
        "source": "local",
        "path": str(settings.MODELS_DIR / "tiny-llama3"),
        "model_id": "local:tiny-llama3",
    }
    assert run.config["training"]["max_steps"] == 30
    assert run.config["training"]["learning_rate"] == 1e-3
    assert run.config["dataset"]["sha256"] == dataset.sha256 == run.dataset_sha256
    assert run.config["output"]["dir"] == str(settings.ARTIFACTS_DIR / run.output_dir)
    assert run.command[1:3] == ["-m", "runs.launcher"]
    assert run.command[3].endswith(f"{run.output_dir}/tunix_config.json")
    assert run.started_at and run.finished_at


def test_dry_run_executes_nothing_and_writes_no_files(run_factory, settings):
    run = run_factory()
    assert not (settings.ARTIFACTS_DIR / run.output_dir).exists()
    assert run.pid is None
    assert not LogChunk.objects.filter(run=run).exists()


def test_dry_run_with_unknown_dataset_fails_naming_it(run_factory):
    run = run_factory(dataset_key="nope-v9")
    assert run.status == RunStatus.FAILED
    assert "Unknown dataset 'nope-v9'" in run.message


def test_dry_run_with_empty_dataset_fails(run_factory, tmp_path, settings):
    dataset = import_dataset(name="ok", version="v1")
    # The stored file was emptied after import: the dry-run re-reads it.
    (settings.DATASETS_DIR / dataset.file_path).write_text("")
    run = run_factory(dataset_key=dataset.key)
    assert run.status == RunStatus.FAILED
    assert "no rows" in run.message


def test_dry_run_with_invalid_rows_names_the_line(run_factory, settings):
    dataset = import_dataset(name="ok", version="v2")
    path = settings.DATASETS_DIR / dataset.file_path
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    del row["final_answer"]
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    run = run_factory(dataset_key=dataset.key)
    assert run.status == RunStatus.FAILED
    assert "line 3: missing field 'final_answer'" in run.message


# The method is tested with datasets that fit it (tests/test_methods.py).
@pytest.mark.parametrize(
    "name", sorted(n for n, b in HYPERPARAMETERS.items() if b.choices and n != "method")
)
def test_every_choice_setting_takes_its_choices_and_nothing_else(run_factory, name):
    for value in HYPERPARAMETERS[name].choices:
        run = run_factory(**{name: value})
        assert run.status == RunStatus.COMPLETED and getattr(run, name) == value
    for bad in ("nope", 1, None):
        if bad is None:
            continue
        with pytest.raises(InvalidInput) as err:
            run_factory(**{name: bad})
        assert HYPERPARAMETERS[name].describe() in err.value.fields[name]


@pytest.mark.parametrize("name", sorted(n for n, b in HYPERPARAMETERS.items() if b.kind is not str))
def test_every_hyperparameter_is_checked_below_at_and_above_its_bounds(run_factory, name):
    bound = HYPERPARAMETERS[name]
    step = 1 if bound.kind is int else (abs(bound.minimum) / 10 or 0.01)
    low, high = bound.minimum, bound.maximum
    assert run_factory(**{name: low}).status == RunStatus.COMPLETED
    assert run_factory(**{name: high}).status == RunStatus.COMPLETED
    for bad in (low - step, high + (1 if bound.kind is int else high / 10)):
        with pytest.raises(InvalidInput) as err:
            run_factory(**{name: bad})
        assert name in err.value.fields
    assert TunixRun.objects.count() == 2


@pytest.mark.parametrize(
    "chosen", ["team", "runs", "exp/one", ".", "..", "runs/./x", "../escape", "runs/ok/.."]
)
def test_an_output_folder_cannot_be_chosen(run_factory, chosen):
    with pytest.raises(InvalidInput) as err:
        run_factory(output_dir=chosen)
    assert "runs/<its id>" in err.value.fields["output_dir"]
    assert TunixRun.objects.count() == 0


def test_every_run_writes_to_runs_slash_its_id(run_factory):
    first, second = run_factory(), run_factory()
    assert first.output_dir == f"runs/{first.id}" and second.output_dir == f"runs/{second.id}"


@pytest.mark.parametrize(
    "model_id",
    ["--help", "-rf", "local:../../etc", "local:missing", "x; rm -rf /", "org/$(id)", "plain"],
)
def test_hostile_or_unknown_model_references_are_refused(run_factory, model_id):
    with pytest.raises(InvalidInput) as err:
        run_factory(model_id=model_id)
    assert "model_id" in err.value.fields


def test_hub_model_ids_name_their_family(run_factory):
    run = run_factory(model_id="meta-llama/Llama-3.2-1B")
    assert run.model_family == "llama3"
    assert run.config["model"]["source"] == "huggingface"
    run = run_factory(model_id="google/gemma-2-2b")
    assert run.model_family == "gemma2"


def test_local_run_without_tunix_is_refused_and_nothing_is_stored(
    run_factory, settings, python_without_tunix
):
    settings.TUNIX_PYTHON = python_without_tunix
    with pytest.raises(TunixUnavailable) as err:
        run_factory(mode="local")
    assert "not installed" in err.value.message
    assert TunixRun.objects.count() == 0


def test_local_run_with_bad_dataset_is_refused_not_queued(run_factory):
    with pytest.raises(InvalidInput) as err:
        run_factory(mode="local", dataset_key="missing-v1", command=["true"])
    assert "dataset_key" in err.value.fields
    assert TunixRun.objects.count() == 0


def test_dry_run_records_the_tunix_probe(run_factory, python_without_tunix, settings):
    settings.TUNIX_PYTHON = python_without_tunix
    run = run_factory()
    assert run.environment["tunix_available"] is False
    assert TunixRun.objects.get(id=run.id) == run


def test_a_dry_run_states_steps_epochs_and_the_rows_for_training_and_evaluation(run_factory):
    # The sample dataset has 240 rows: 216 train, 24 held out; batches of 4 make 54.
    run = run_factory(max_steps=100, batch_size=4)
    plan = run.environment["plan"]
    assert (plan["steps"], plan["batches_per_epoch"], plan["epochs"]) == (100, 54, 1.85)
    assert (plan["train_rows"], plan["eval_rows"]) == (216, 24)
    assert "Trains 100 steps (1.85 epochs of 216 rows, 54 batches each)" in run.message
    assert "24 rows held out for evaluation" in run.message
    assert "per-token mean over the whole held-out split" in run.message
    assert "Read from config.json: model_type." in run.message
    assert run.config["dataset"]["split_seed"] == protocol.split_seed(run.dataset_sha256)
    other = run_factory(max_steps=100, seed=7)
    assert other.config["dataset"]["split_seed"] == run.config["dataset"]["split_seed"]


def test_a_checkpoint_the_launcher_cannot_honour_fails_the_dry_run_and_refuses_to_queue(
    run_factory, settings
):
    folder = Path(settings.MODELS_DIR) / "gemma2-27b"
    folder.mkdir(parents=True)
    config = {
        "model_type": "gemma2",
        "hidden_size": 4608,
        "num_attention_heads": 32,
        "head_dim": 128,
        "query_pre_attn_scalar": 144,
    }
    (folder / "config.json").write_text(json.dumps(config))
    run = run_factory(model_id="local:gemma2-27b")
    assert run.status == RunStatus.FAILED
    assert "query_pre_attn_scalar=144 differs from head_dim=128" in run.message
    with pytest.raises(InvalidInput) as err:
        run_factory(model_id="local:gemma2-27b", mode="local", command=["true"])
    assert "query_pre_attn_scalar" in err.value.fields["model_id"]
