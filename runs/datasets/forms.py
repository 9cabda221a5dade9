"""The dataset upload form. It checks only the shape of the input; the service validates
the name, the version and every row, and its field errors are put back on the form."""

from pathlib import PurePath

from django import forms
from django.urls import reverse

from runs.models import Dataset


def name_from_filename(filename: str) -> str:
    """The name an upload gets when none is typed: the file's name without its folder and
    its last extension ("my-data.jsonl" -> "my-data"). The service validates it as if typed."""
    return PurePath(filename.replace("\\", "/")).stem.strip()


class DatasetUploadForm(forms.Form):
    file = forms.FileField(
        label="JSONL file",
        help_text="One JSON object per line: reasoning traces, prompt/completion pairs or "
        "chat messages.",
    )
    name = forms.CharField(
        max_length=100,
        required=False,
        help_text="Letters, digits, '.', '_' and '-'. Empty: the file's name without .jsonl.",
    )
    version = forms.CharField(
        max_length=50, initial="v1", help_text="A version never changes once created."
    )
    format = forms.ChoiceField(
        choices=[("", "Detect from the first row"), *Dataset.Format.choices], required=False
    )
    description = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # An htmx swap after an error keeps these very inputs: the chosen file stays chosen
        # (a browser cannot put it back), and the name remembers it came from the file.
        for name in ("file", "name"):
            self.fields[name].widget.attrs["hx-preserve"] = "true"
        # An existing name-version (and a bad name) is reported as the user types, before
        # any byte is uploaded; the answer swaps both fields' error lists out of band.
        check = {
            "hx-get": reverse("datasets:upload-check"),
            "hx-trigger": "input changed delay:400ms, change",
            "hx-include": "#id_name, #id_version",
            "hx-swap": "none",
        }
        for name in ("name", "version"):
            self.fields[name].widget.attrs.update(check)

    def clean(self):
        data = super().clean()
        upload = data.get("file")
        if not data.get("name") and upload is not None:
            data["name"] = name_from_filename(upload.name or "")
            # Shown in the field if the form comes back, so an error names what was used.
            self.data = self.data.copy()
            self.data[self.add_prefix("name")] = data["name"]
        return data

    def add_service_error(self, exc) -> None:
        """Put a ServiceError's field messages on the matching fields (one error per line,
        so a rejected file lists its lines), and its message on the form."""
        placed = False
        for name, message in exc.fields.items():
            target = name if name in self.fields else None
            self.add_error(target, [line for line in str(message).splitlines() if line])
            placed = True
        if not placed or "file" not in exc.fields:
            self.add_error(None, exc.message)
