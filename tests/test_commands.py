import io

import pytest
from django.core.management import CommandError, call_command
from django_q.models import Schedule

from runs import services
from runs.models import Dataset

from .conftest import SAMPLE

pytestmark = pytest.mark.django_db


def test_import_dataset_registers_name_version_with_hash_and_rows():
    out = io.StringIO()
    call_command("import_dataset", str(SAMPLE), name="math", version="v1", stdout=out)
    dataset = Dataset.objects.get(key="math-v1")
    assert dataset.row_count == 240 and dataset.format == "reasoning"
    assert len(dataset.sha256) == 64
    assert "Imported math-v1: 240 rows" in out.getvalue()


def test_import_dataset_refuses_an_existing_version_and_a_bad_file(tmp_path):
    call_command("import_dataset", str(SAMPLE), name="math", version="v1", stdout=io.StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("import_dataset", str(SAMPLE), name="math", version="v1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": 3, "completion": "c"}\n')
    with pytest.raises(CommandError, match="line 2: field 'prompt' must be a string"):
        call_command("import_dataset", str(bad), name="bad", version="v1")
    assert not Dataset.objects.filter(name="bad").exists()


def test_create_api_token_prints_a_token_that_authenticates(user):
    out = io.StringIO()
    call_command("create_api_token", "alice", stdout=out)
    token = out.getvalue().strip()
    assert services.api_token_authenticate(token=token) == user
    assert token not in str(list(user.api_tokens.values()))


def test_bootstrap_is_idempotent_and_creates_one_admin_and_one_reaper_schedule(
    django_user_model, settings
):
    first, second = io.StringIO(), io.StringIO()
    call_command("bootstrap", stdout=first)
    call_command("bootstrap", stdout=second)
    assert "Created admin user 'admin' with password" in first.getvalue()
    assert "password" not in second.getvalue()
    assert django_user_model.objects.filter(is_superuser=True).count() == 1
    assert Dataset.objects.filter(key="sample-v1").count() == 1
    assert Schedule.objects.filter(name="tunixrt-reaper").count() == 1
