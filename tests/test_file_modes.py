"""Files under the data folder are private to the OS user from their creation: the SQLite
database, the secret key, dataset files, run folders with their config and training data,
and what a training child writes there (it inherits the umask)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

from .conftest import SAMPLE

REPO = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter that starts with the permissive umask most shells have (022):
# only what the app itself does can make the files private.
SCRIPT = """
import os, sys
os.umask(0o022)
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.conf import settings
from runs.datasets import services as dataset_services
from runs.services import run_create
from runs.services.lifecycle import run_prepare
import subprocess
with open(sys.argv[1], "rb") as handle:
    dataset_services.dataset_import(source=handle, name="sample", version="v1")
model = settings.MODELS_DIR / "tiny"
model.mkdir(mode=0o700)
os.close(os.open(model / "config.json", os.O_WRONLY | os.O_CREAT, 0o600))
(model / "config.json").write_text('{"model_type": "llama"}')
from django.contrib.auth import get_user_model
user = get_user_model().objects.create(username="modes")
run = run_create(owner=user, dataset_key="sample-v1", model_id="local:tiny")
folder, _ = run_prepare(run=run)
# A child started by the worker writes into the run folder, as a checkpoint would.
subprocess.run([sys.executable, "-c", "import pathlib; pathlib.Path('ckpt').mkdir(); "
                "pathlib.Path('ckpt/params').write_bytes(b'x')"], cwd=folder, check=True)
print(folder)
"""


def test_everything_the_app_creates_under_the_data_folder_is_private(tmp_path):
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TUNIXRT_", "DJANGO_"))},
        "TUNIXRT_DATA_DIR": str(data),
        "DJANGO_SETTINGS_MODULE": "tunixrt.settings",
        "DATABASE_URL": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SAMPLE)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = Path(result.stdout.strip().splitlines()[-1])
    created = [data, *data.rglob("*")]
    names = {p.relative_to(data).as_posix() for p in created}
    assert {"tunixrt.sqlite3", "secret_key", "datasets/sample/v1.jsonl"} <= names, names
    run = folder.relative_to(data).as_posix()
    assert {f"{run}/tunix_config.json", f"{run}/train.jsonl", f"{run}/ckpt/params"} <= names
    exposed = [
        f"{p.relative_to(data)} {stat.filemode(p.stat().st_mode)}"
        for p in created
        if p.stat().st_mode & 0o077
    ]
    assert exposed == []
