"""Orbax checkpoints: which steps are complete, and seeding a resumed run."""

import shutil
from pathlib import Path

from runs import protocol
from runs.launcher.events import LaunchError


def complete_steps(checkpoint_dir: Path) -> list[int]:
    """Steps whose Orbax checkpoint finished writing (commit_success.txt present)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in checkpoint_dir.iterdir()
        if p.name.isdigit() and (p / protocol.CHECKPOINT_COMPLETE_MARKER).is_file()
    )


def seed_from_parent(parent_dir: Path, own_dir: Path) -> int:
    """Copy the parent's newest complete checkpoint into this run's checkpoint dir.

    Tunix's trainer restores from the newest step under its own checkpoint
    root, so the copy is all that resuming needs. Returns the step resumed from.
    """
    if not parent_dir.is_dir():
        raise LaunchError(f"resume checkpoint dir {parent_dir} does not exist")
    steps = complete_steps(parent_dir)
    if not steps:
        raise LaunchError(f"resume checkpoint dir {parent_dir} holds no complete checkpoint")
    step = steps[-1]
    own_steps = complete_steps(own_dir)
    if own_steps and own_steps[-1] >= step:
        # A restarted resume: this run already has a newer checkpoint of its own.
        return own_steps[-1]
    own_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(parent_dir / str(step), own_dir / str(step), dirs_exist_ok=True)
    return step


def prune(checkpoint_dir: Path, keep: int | None, eval_losses: dict[int, float]) -> list[int]:
    """Remove complete checkpoints beyond the newest `keep`, never the last one nor the
    best one (lowest eval loss among steps that have a checkpoint and an evaluation).
    Returns the steps removed. Only complete, older steps are touched: Orbax may still be
    writing the newest."""
    if not keep:
        return []
    steps = complete_steps(checkpoint_dir)
    scored = [s for s in steps if s in eval_losses]
    protected = set(steps[-keep:])
    if scored:
        protected.add(min(scored, key=lambda s: (eval_losses[s], -s)))
    removed = []
    for step in steps:
        if step not in protected:
            shutil.rmtree(checkpoint_dir / str(step), ignore_errors=True)
            removed.append(step)
    return removed
