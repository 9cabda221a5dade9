"""The run form. Its fields and bounds come from runs.tunix.HYPERPARAMETERS (the table the
API and the service read too); the service does the real validation, and its field errors
are put back on the form's fields."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from django import forms
from django.conf import settings
from django.urls import reverse

from runs import hyperparameters, selectors, services
from runs.datasets import selectors as dataset_selectors
from runs.datasets.rendering import METHOD_NEEDS
from runs.errors import InvalidInput
from runs.models import RunMode

# What the service calls each input; the form's fields carry the same names.
MAIN_FIELDS = ("dataset_key", "model_id", "base_run_id", "name")
LIMIT_FIELDS = ("timeout_seconds",)
AFTER_FIELDS = ("evaluate_after",)


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize().replace("Lora", "LoRA")


def number_messages(kind: type, bounds: str) -> dict[str, str]:
    """Django's messages for a number field, in our words and plain numbers (the service
    and the API say the same)."""
    between = f"Must be between {bounds}."
    return {
        "required": "Enter a value.",
        "invalid": "Must be a whole number." if kind is int else "Must be a number.",
        "min_value": between,
        "max_value": between,
    }


def _hyperparameter_field(name: str, bound: hyperparameters.Bound) -> forms.Field:
    # A method's own settings (and the method) may be left out: the service fills in their
    # defaults, so a form that does not show them still submits.
    if bound.kind is str:
        label = _label(name)
        if bound.choices:
            choices = [(c, hyperparameters.METHOD_LABELS.get(c, c)) for c in bound.choices]
            return forms.ChoiceField(
                label=label,
                choices=choices,
                initial=bound.default,
                help_text=bound.help,
                required=False,
            )
        return forms.CharField(
            label=label,
            required=False,
            initial=bound.default,
            max_length=int(bound.maximum),
            strip=False,
            help_text=bound.help,
        )
    help_text = f"{bound.help} {bound.range()}" + (
        "; empty for no limit." if bound.optional else "."
    )
    common = {
        "label": _label(name),
        "required": not bound.optional and bound.methods == hyperparameters.ALL_METHODS,
        "initial": bound.default,
        "min_value": bound.minimum,
        "max_value": bound.maximum,
        "help_text": help_text,
        "error_messages": number_messages(bound.kind, bound.describe()),
    }
    if bound.kind is int:
        return forms.IntegerField(**common)
    return forms.FloatField(**common)


class RunForm(forms.Form):
    dataset_key = forms.ChoiceField(
        label="Dataset",
        error_messages={
            "required": "Choose a dataset.",
            "invalid_choice": "There is no dataset %(value)s: choose one from the list.",
        },
    )
    model_id = forms.CharField(
        label="Model",
        max_length=200,
        error_messages={
            "required": "Enter a model reference.",
            "max_length": "At most 200 characters.",
        },
        help_text="local:NAME (a folder in the models directory), ORG/NAME (Hugging Face) or "
        "kaggle:OWNER/MODEL/FRAMEWORK/VARIATION.",
    )
    base_run_id = forms.ChoiceField(
        label="Start from run",
        required=False,
        help_text="Train on another run's result instead of the plain model: one of your "
        "completed LoRA runs of this model (its LoRA is merged into the model first).",
        error_messages={
            "invalid_choice": "That is not one of your completed LoRA runs of this model: "
            "choose one from the list."
        },
    )
    name = forms.CharField(
        label="Name",
        required=False,
        max_length=200,
        help_text="Optional, to find the run later.",
        error_messages={"max_length": "At most 200 characters."},
    )
    timeout_seconds = forms.IntegerField()  # replaced in __init__
    evaluate_after = forms.BooleanField(
        label="Evaluate after training",
        required=False,
        help_text="When the run completes, generate answers for its held-out rows with the "
        "fine-tuned and the base model and score both (an evaluation job on a worker).",
    )
    # Set by the button that submits the form ("Dry-run" or "Run with Tunix"), not rendered.
    mode = forms.ChoiceField(choices=RunMode.choices, required=False)

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        for name, bound in hyperparameters.HYPERPARAMETERS.items():
            self.fields[name] = _hyperparameter_field(name, bound)
        method = self.chosen_method()
        self.fields["dataset_key"].choices = dataset_selectors.dataset_choices(method, user=user)
        self.unfit_datasets = dataset_selectors.datasets_unfit_count(method, user=user)
        self.method_needs = METHOD_NEEDS.get(method, "")
        self.fields["base_run_id"].choices = self._base_run_choices(user)
        # Built here, not on the class, because its maximum is a setting.
        self.fields["timeout_seconds"] = forms.IntegerField(
            label="Timeout (seconds)",
            min_value=10,
            max_value=settings.RUN_TIMEOUT_MAX,
            initial=settings.RUN_TIMEOUT_DEFAULT,
            help_text="The run is stopped after this long; "
            f"{hyperparameters.format_number(10)} to "
            f"{hyperparameters.format_number(settings.RUN_TIMEOUT_MAX)} s.",
            error_messages=number_messages(
                int, f"10 and {hyperparameters.format_number(settings.RUN_TIMEOUT_MAX)}"
            ),
        )
        self.fields["evaluate_after"].initial = settings.EVALUATE_AFTER_RUN
        self.fields["model_id"].widget.attrs.update(
            {"list": "model-choices", "autocomplete": "off", "spellcheck": "false"}
        )
        validate_url = reverse("runs:validate")
        for name, field in self.fields.items():
            if name in ("mode", "method"):
                continue
            # Each input asks the server about itself as the user types or leaves it; the
            # answer replaces only its error list, never the input being typed into.
            field.widget.attrs.update(
                {
                    "hx-post": validate_url,
                    "hx-trigger": "input changed delay:400ms, change",
                    "hx-target": f"#errors-{name}",
                    "hx-swap": "outerHTML",
                    "hx-sync": "this:replace",
                    "aria-describedby": f"help-{name} errors-{name}",
                }
            )

        # Choosing a method swaps in its settings and the datasets it can train on.
        self.fields["method"].widget.attrs.update(
            {
                "hx-post": reverse("runs:method_settings"),
                "hx-trigger": "change",
                "hx-target": "#method-dependent",
                "hx-select": "#method-dependent",
                "hx-swap": "outerHTML",
                "hx-include": "#run-form",
            }
        )

    def _base_run_choices(self, user) -> list[tuple[str, str]]:
        """The runs this one can start from: the user's completed LoRA runs of the chosen
        model (SFT trains from the plain model only)."""
        model_id = (self.data.get("model_id") if self.is_bound else None) or self.initial.get(
            "model_id", ""
        )
        choices = [("", "None: the model itself")]
        if user is None or self.chosen_method() == "sft" or not model_id:
            return choices
        for run in selectors.runs_to_start_from(user, model_id=str(model_id).strip()):
            label = f"{run.name or 'Run'} · {str(run.id)[:8]} · {run.get_method_display()}"
            choices.append((str(run.id), label))
        return choices

    # --- groups for the template -------------------------------------------------------
    def main_fields(self):
        names = (
            MAIN_FIELDS
            if self.chosen_method() != "sft"
            else tuple(name for name in MAIN_FIELDS if name != "base_run_id")
        )
        return [self[name] for name in names]

    def hyperparameter_fields(self):
        """The settings of the chosen method (the method field itself comes first)."""
        method = self.chosen_method()
        return [self[name] for name in hyperparameters.applicable(method) if name != "method"]

    def chosen_method(self) -> str:
        value = (self.data.get("method") if self.is_bound else None) or self.initial.get(
            "method", "sft"
        )
        return value if value in hyperparameters.METHODS else "sft"

    def limit_fields(self):
        return [self[name] for name in LIMIT_FIELDS]

    def after_fields(self):
        return [self[name] for name in AFTER_FIELDS]

    # --- to and from the service -------------------------------------------------------
    @staticmethod
    def initial_from_request(request: services.RunRequest) -> dict[str, Any]:
        """Form initial values from services.run_request (for "Run again")."""
        initial = {
            name: getattr(request, name)
            for name in ("dataset_key", "model_id", "mode", "timeout_seconds", "name")
        }
        initial.update(request.hyperparameters)
        if request.base_run_id:
            initial["base_run_id"] = request.base_run_id
        if request.evaluate_after is not None:
            initial["evaluate_after"] = request.evaluate_after
        return initial

    def initial_data(self) -> dict[str, Any]:
        """What this unbound form shows, as form data (to preview its defaults)."""
        data = {}
        for name, field in self.fields.items():
            value = self.get_initial_for_field(field, name)
            if value is None and name == "dataset_key" and field.choices:
                value = field.choices[0][0]
            if value is not None:
                data[name] = value
        return data

    def run_request(self) -> services.RunRequest:
        """The service's request from the cleaned values. Fields that did not clean are
        left for the service to default or report, so one field can be checked alone."""
        data = getattr(self, "cleaned_data", {})
        return services.RunRequest(
            dataset_key=data.get("dataset_key") or self.data.get("dataset_key", ""),
            model_id=data.get("model_id") or str(self.data.get("model_id", "")).strip(),
            name=data.get("name") or "",
            mode=data.get("mode") or RunMode.DRY_RUN,
            timeout_seconds=data.get("timeout_seconds"),
            evaluate_after=bool(data.get("evaluate_after")),
            base_run_id=data.get("base_run_id") or None,
            hyperparameters={
                name: data[name]
                for name in hyperparameters.HYPERPARAMETERS
                if data.get(name) is not None
            },
        )

    def add_service_errors(self, exc: InvalidInput) -> None:
        """Put the service's field errors on the matching fields; the rest on the form."""
        if not exc.fields:
            self.add_error(None, exc.message)
        for name, message in exc.fields.items():
            if name in self.fields and name != "mode":
                if message not in self.errors.get(name, []):
                    self.add_error(name, message)
            else:
                self.add_error(None, f"{_label(name)}: {message}")

    def check_field(self, name: str, *, owner) -> None:
        """Validate the whole form, then ask the service about `name` alone, so an input
        shows the same message as a submission would."""
        self.is_valid()
        if name in self.errors:
            return
        try:
            services.run_plan(owner=owner, request=self.plan_request(), check_dataset=False)
        except InvalidInput as exc:
            if name in exc.fields:
                self.add_error(name, exc.fields[name])

    def check_service_fields(self, *, owner) -> None:
        """After a submission with field errors, ask the service about the fields that did
        clean, so every error the live checks showed stays shown (a model the service
        refuses is not hidden by a number out of range)."""
        try:
            services.run_plan(owner=owner, request=self.plan_request(), check_dataset=False)
        except InvalidInput as exc:
            for name, message in exc.fields.items():
                if name in self.fields and name != "mode" and name not in self.errors:
                    self.add_error(name, message)

    def error_summary(self) -> list[tuple[str, str, str]]:
        """(input id, label, message) of every field error, for the summary at the top."""
        return [
            (self[name].auto_id, field.label or _label(name), message)
            for name, field in self.fields.items()  # in the order of the form
            if name != "mode"
            for message in self.errors.get(name, [])
        ]

    def plan_request(self) -> services.RunRequest:
        """Like run_request, as a dry-run: a preview or a field check needs no Tunix."""
        return replace(self.run_request(), mode=RunMode.DRY_RUN)
