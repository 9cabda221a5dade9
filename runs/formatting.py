"""Numbers for people: one byte-size and one duration formatter for the whole app.
Standard library only."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """'512 MiB' for a round size; '4.2 KiB (4299 bytes)' when rounding would hide it."""
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    if unit == "bytes":
        return f"{n} bytes"
    if value == int(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit} ({n} bytes)"


def duration(seconds: float | None) -> str:
    """'1h 02m 03s', '4m 05s', '6s'; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def plan_sentence(plan: dict) -> str:
    """'Trains 60 steps (4.29 epochs of 54 rows, 14 batches each); 6 rows held out ...'."""
    text = (
        f"Trains {plan['steps']:,} steps ({plan['epochs']:g} epochs of {plan['train_rows']:,} "
        f"rows, {plan['batches_per_epoch']:,} batches each)"
    )
    if "from_step" in plan:
        per_epoch = plan["batches_per_epoch"] or 1
        text = (
            f"Continues from step {plan['from_step']:,} to {plan['steps']:,}: "
            f"{plan['steps'] - plan['from_step']:,} more steps, epochs "
            f"{plan['from_step'] / per_epoch:.2f} to {plan['steps'] / per_epoch:.2f} of "
            f"{plan['train_rows']:,} rows"
        )
    return (
        f"{text}; {plan['eval_rows']:,} rows held out for evaluation (eval loss: "
        f"{plan['eval_loss']}). Chat template: {plan['chat_template']}; trained: "
        f"{plan['trained_turns']}; compute: {plan['compute_dtype']}."
    )
