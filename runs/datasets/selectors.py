"""Reads of datasets: lookups, lists, previews of the rendered training text, token
statistics and truncation figures."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet

from .. import protocol, training
from ..errors import Conflict, InvalidInput, NotFound
from ..models import Dataset
from ..storage import dataset_file
from . import rendering, validation


def datasets_visible(user) -> QuerySet[Dataset]:
    """The datasets `user` may see and train on: their own, those shared with everyone, and
    those the operator imported without an owner (`import_dataset` without --owner). Staff
    see all. Everyone else's are private: not listed, previewed, exported or used."""
    if user is not None and user.is_staff:
        return Dataset.objects.all()
    if user is None or not user.is_authenticated:
        return Dataset.objects.none()
    return Dataset.objects.filter(Q(owner=user) | Q(shared=True) | Q(owner__isnull=True))


def datasets_all(*, user) -> QuerySet[Dataset]:
    return datasets_visible(user).order_by("name", "version")


def dataset_get(key: str, *, user) -> Dataset:
    """The dataset by key (looked up, never joined into a path), or NotFound (also when it
    is another user's private dataset: its existence is not revealed)."""
    key = str(key)[:160]
    dataset = None
    if "\x00" not in key:  # PostgreSQL refuses NUL in a query; no key holds one
        dataset = (
            datasets_visible(user)
            .select_related("owner")
            .annotate(run_count=Count("tunixrun"))
            .filter(key=key)
            .first()
        )
    if dataset is None:
        raise NotFound(f"No dataset '{key}'.")
    return dataset


def datasets_list(*, user, q: str | None = None, format: str | None = None) -> QuerySet[Dataset]:
    """Datasets `user` may see by name and version, each with the number of runs using it."""
    found = datasets_visible(user).select_related("owner").annotate(run_count=Count("tunixrun"))
    if format:
        found = found.filter(format=format)
    if q:
        q = q.replace("\x00", "").strip()[:100]
        found = found.filter(Q(key__icontains=q) | Q(description__icontains=q))
    return found.order_by("name", "version")


def dataset_choices(method: str | None = None, *, user) -> list[tuple[str, str]]:
    """(key, label) pairs for the run form's dataset field:
    ("sample-v1", "sample-v1 (240 rows, Reasoning traces)"); with a method, only the
    datasets whose format that method can train on."""
    rows = datasets_all(user=user).values_list("key", "row_count", "format")
    if method:
        rows = rows.filter(format__in=rendering.METHOD_FORMATS.get(method, ()))
    return [
        (key, f"{key} ({rows} row{'s' if rows != 1 else ''}, {dict(Dataset.Format.choices)[fmt]})")
        for key, rows, fmt in rows
    ]


def datasets_unfit_count(method: str, *, user) -> int:
    """How many datasets the method cannot train on (the form says why)."""
    return (
        datasets_all(user=user).exclude(format__in=rendering.METHOD_FORMATS.get(method, ())).count()
    )


@contextlib.contextmanager
def _reading(dataset: Dataset):
    """Turn a stored file that no longer parses (edited after import) into Conflict."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as exc:
        raise Conflict(
            f"The file of dataset {dataset.key} changed since it was imported "
            f"({type(exc).__name__}); import it again as a new version."
        ) from exc


def dataset_target(
    *, family: str | None = None, model_id: str | None = None
) -> tuple[str, training.ModelRef | None]:
    """The family whose chat template renders the rows, and the model (if one was named)
    whose tokenizer counts them. A named model decides the family."""
    if model_id:
        try:
            model = training.parse_model_ref(model_id)
        except training.ModelRefError as exc:
            raise InvalidInput(str(exc), fields={"model_id": str(exc)}) from exc
        return model.family, model
    if family and family not in protocol.FAMILIES:
        message = f"Must be one of: {', '.join(protocol.FAMILIES)}."
        raise InvalidInput("Unknown model family.", fields={"family": message})
    return family or protocol.FAMILIES[0], None


def dataset_preview_rows(dataset: Dataset, *, family: str, limit: int = 5) -> list[dict]:
    """The first rows as stored and as the exact training text (prompt masked)."""
    rows = []
    with _reading(dataset):
        for line, row in validation.iter_numbered_rows(dataset_file(dataset)):
            rendered = rendering.render_row(
                row, dataset.format, family, method=rendering.default_method(dataset.format)
            )
            rows.append({"line": line, "data": row, **rendered})
            if len(rows) >= limit:
                break
    return rows


def dataset_rendered_lines(dataset: Dataset, *, family: str) -> Iterator[str]:
    """The training text of `dataset` for `family`'s built-in template, streamed: what the
    launcher trains on for a checkpoint without a chat template of its own."""
    return rendering.rendered_lines(
        validation.iter_rows(dataset_file(dataset)),
        dataset.format,
        family,
        method=rendering.default_method(dataset.format),
    )


def model_template(family: str, model: training.ModelRef | None) -> rendering.Template:
    """The chat template the launcher will render with: a local checkpoint's own
    chat_template when it has one, else the family's built-in one. (A hub model's is read
    at launch, after the download.)"""
    if model is None or model.source != "local":
        return rendering.Template(family)
    source, tokens = protocol.read_chat_template(model.path)
    return rendering.Template(family, source, tokens)


_tokenizers: OrderedDict[tuple, Any] = OrderedDict()


_length_stats: OrderedDict[tuple, rendering.LengthStats] = OrderedDict()


_cache_lock = threading.Lock()


def _cached(cache: OrderedDict, key: tuple, make, size: int):
    with _cache_lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _cache_lock:
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    return value


def model_tokenizer(model: training.ModelRef | None) -> tuple[Any, str]:
    """(tokenizer or None, how lengths are counted, in words). Only a local model's
    tokenizer.json is used, and only when the `tokenizers` package is importable here (it
    comes with the tunix extra; the web process never imports Tunix or JAX)."""
    if model is None:
        return None, "Counted in characters: no model chosen, so no tokenizer."
    if model.source != "local":
        return None, (
            f"Counted in characters: {model.model_id} is not a local model, so its "
            "tokenizer is not on this machine."
        )
    path = Path(model.path) / "tokenizer.json"
    try:
        stat = path.stat()
    except OSError:
        return None, f"Counted in characters: {model.model_id} has no tokenizer.json."
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None, (
            "Counted in characters: the tokenizers package is not installed for the web "
            "process (it comes with the tunix extra)."
        )
    try:
        tokenizer = _cached(
            _tokenizers,
            (str(path), stat.st_mtime_ns, stat.st_size),
            lambda: Tokenizer.from_file(str(path)),
            size=4,
        )
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
        return None, (
            f"Counted in characters: the tokenizer of {model.model_id} cannot be loaded "
            f"({str(exc)[:200]})."
        )
    return tokenizer, f"Counted in tokens with the tokenizer of {model.model_id}."


def dataset_length_stats(
    dataset: Dataset, *, family: str, model: training.ModelRef | None = None
) -> tuple[rendering.LengthStats, str]:
    """Lengths of every rendered row, in tokens when the model's tokenizer is available,
    else in characters; (stats, how they were counted). One streaming pass over the file,
    remembered per file hash, template and tokenizer, so changing max_seq_length is free."""
    tokenizer, note = model_tokenizer(model)
    template = model_template(family, model)
    tokenizer_key = None
    every = 1
    if tokenizer is not None:
        stat = (Path(model.path) / "tokenizer.json").stat()
        tokenizer_key = (model.path, stat.st_mtime_ns, stat.st_size)
        # Tokenizing runs at thousands of rows a second, not hundreds of thousands: past a
        # bound, an evenly spaced sample keeps a page or a dry-run to seconds.
        every = max(1, -(-dataset.row_count // max(1, settings.DATASET_STATS_MAX_TOKENIZED_ROWS)))

    def measure() -> rendering.LengthStats:
        rows = validation.iter_rows(dataset_file(dataset))
        with _reading(dataset):
            if tokenizer is None:
                return rendering.measure_lengths(rows, dataset.format, family, template=template)
            return rendering.measure_lengths(
                rows,
                dataset.format,
                family,
                count=rendering.token_counter(tokenizer),
                unit="tokens",
                every=every,
                template=template,
            )

    key = (dataset.pk, dataset.sha256, dataset.format, family, tokenizer_key, every)
    key += (template.source,)
    return _cached(_length_stats, key, measure, size=32), note


def dataset_truncation(
    dataset: Dataset,
    *,
    family: str,
    model: training.ModelRef | None = None,
    max_seq_length: int,
    bins: int = 20,
) -> dict[str, Any]:
    """Statistics of the rendered rows at `max_seq_length`: how many the launcher would
    truncate (longer than it: the prompt loses its start) and how many answers alone do not
    fit (dropped, or kept cut with long_completions=keep), the length distribution and a
    histogram, with the unit they are counted in and the chat template used."""
    stats, note = dataset_length_stats(dataset, family=family, model=model)
    truncated, dropped = stats.truncated(max_seq_length), stats.dropped(max_seq_length)
    share = truncated / stats.rows if stats.rows else 0.0
    rows = stats.rows
    if stats.every > 1:
        # A sample: scale to the whole file, and say so.
        rows = dataset.row_count
        note += f" Estimated from every {ordinal(stats.every)} row ({stats.rows} rows tokenized)."
        truncated = round(share * rows)
        dropped = round(dropped / stats.rows * rows) if stats.rows else 0
    return {
        "rows": rows,
        "measured_rows": stats.rows,
        "unit": stats.unit,
        "counted_with": note,
        "family": family,
        "chat_template": model_template(family, model).name,
        "max_seq_length": max_seq_length,
        "truncated_rows": truncated,
        "truncated_share": round(share, 4),
        "dropped_rows": dropped,
        "min": min(stats.totals) if stats.rows else 0,
        "median": stats.percentile(0.5),
        "p95": stats.percentile(0.95),
        "max": max(stats.totals) if stats.rows else 0,
        "histogram": [
            {"start": start, "end": end, "count": count}
            for start, end, count in stats.histogram(bins)
        ],
    }


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def truncation_sentence(figures: dict[str, Any], long_completions: str = "drop") -> str:
    """'3 of 240 rows (1.2%) would be truncated at max_seq_length=512 (tokens). ...'."""
    rows, truncated = figures["rows"], figures["truncated_rows"]
    sentence = (
        f"{truncated} of {rows} rows ({100 * figures['truncated_share']:.1f}%) would be "
        f"truncated at max_seq_length={figures['max_seq_length']} ({figures['unit']})."
    )
    if truncated:
        sentence += " Prompts lose their start first, so answers keep their end-of-turn token."
    if figures["dropped_rows"]:
        dropped = figures["dropped_rows"]
        fate = "dropped" if long_completions == "drop" else "kept with the answer cut"
        sentence += (
            f" {dropped} rows would be {fate}: the answer alone does not fit."
            if dropped != 1
            else f" 1 row would be {fate}: its answer alone does not fit."
        )
    rendered = f" Rendered with {figures['chat_template']}." if "chat_template" in figures else ""
    return f"{sentence} {figures['counted_with']}{rendered}"


def pair_sentence(check: dict[str, Any]) -> str:
    """'Pairs: 2 of 12 would be cut to fit max_seq_length=128 (tokens; prompt 64, answers 64
    tokens). Counted in tokens with ...'."""
    if check.get("problem"):
        return f"Pairs: {check['problem']}."
    if check["truncated"] is None:
        return (
            f"Pairs: {check['pairs']}; how many would be cut to fit "
            f"max_seq_length={check['max_seq_length']} needs the model's tokenizer. "
            + check["note"]
        )
    return (
        f"Pairs: {check['truncated']} of {check['pairs']} would be cut to fit "
        f"max_seq_length={check['max_seq_length']} (prompts to {check['prompt_len']}, "
        f"answers to {check['answer_len']} tokens). {check['note']}"
    )


def dataset_reward_check(dataset: Dataset, section: dict) -> dict:
    """The reward dry-run over the dataset's first rows (see reward_check)."""
    from runs.datasets.reward_check import reward_dry_run

    with _reading(dataset):
        return reward_dry_run(validation.iter_rows(dataset_file(dataset)), dataset.format, section)


def dataset_preference_check(
    dataset: Dataset, family: str, model: training.ModelRef | None, max_seq_length: int
) -> dict | None:
    """The first preference pair rendered for `family` (chosen beside rejected) with its
    lengths, and how many pairs DPO/ORPO will cut to fit max_seq_length. Lengths are tokens
    counted as the launcher counts them when the model's tokenizer is at hand; otherwise
    characters, and the cut pairs are not counted (characters say nothing about tokens)."""
    tokenizer, note = model_tokenizer(model)
    count = rendering.token_counter(tokenizer) if tokenizer else rendering.count_characters
    first, prompts, answers = None, [], []
    with _reading(dataset):
        rows = validation.iter_rows(dataset_file(dataset))
        pending: list[dict] = []
        for row in rows:
            pending.append(rendering.render_row(row, dataset.format, family, method="dpo"))
            if len(pending) == 512:
                first = first or pending[0]
                _count_pairs(pending, count, prompts, answers)
                pending = []
        if pending:
            first = first or pending[0]
            _count_pairs(pending, count, prompts, answers)
    if first is None:
        return None
    chosen, rejected = count([first["chosen"], first["rejected"]])
    check = {
        **{k: first[k] for k in ("prompt", "chosen", "rejected")},
        "unit": "tokens" if tokenizer else "characters",
        "note": note,
        "counts": {"prompt": prompts[0], "chosen": chosen, "rejected": rejected},
        "pairs": len(prompts),
        "max_seq_length": max_seq_length,
        "truncated": None,
    }
    if tokenizer is not None:
        try:
            prompt_len, answer_len, cut = protocol.preference_lengths(
                prompts, answers, max_seq_length
            )
        except ValueError as exc:
            check["problem"] = str(exc)
        else:
            check |= {"truncated": cut, "prompt_len": prompt_len, "answer_len": answer_len}
    return check


def _count_pairs(pairs: list[dict], count, prompts: list[int], answers: list[int]) -> None:
    """Append each pair's prompt length and its longer answer's length."""
    prompts.extend(count([p["prompt"] for p in pairs]))
    chosen = count([p["chosen"] for p in pairs])
    rejected = count([p["rejected"] for p in pairs])
    answers.extend(max(c, r) for c, r in zip(chosen, rejected, strict=True))
