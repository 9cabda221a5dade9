"""The dataset upload form. It checks only the shape of the input; the service validates
the name, the version and every row, and its field errors are put back on the form."""

from django import forms

from runs.models import Dataset


class DatasetUploadForm(forms.Form):
    file = forms.FileField(
        label="JSONL file",
        help_text="One JSON object per line: reasoning traces, prompt/completion pairs or "
        "chat messages.",
    )
    name = forms.CharField(max_length=100, help_text="Letters, digits, '.', '_' and '-'.")
    version = forms.CharField(
        max_length=50, initial="v1", help_text="A version never changes once created."
    )
    format = forms.ChoiceField(
        choices=[("", "Detect from the first row"), *Dataset.Format.choices], required=False
    )
    description = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )

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
