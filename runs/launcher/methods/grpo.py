"""GRPO and its variants (DAPO, Dr. GRPO; GSPO loss) on Tunix's RLCluster with its own
sampler as the rollout engine ("vanilla": no vLLM).

Rows are {prompt, answer}: the prompt rendered with the chat template up to the assistant's
turn, and the reference answer the rewards (runs.launcher.rewards) compare with. Metrics are
renamed to the SFT names where they mean the same (actor/train/loss -> train/loss), so the
run page, progress and compare read them alike; a few completions of each evaluation are
sent as `sample` events with their rewards.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runs import protocol
from runs.launcher import rewards as rewards_lib
from runs.launcher.checkpoints import complete_steps
from runs.launcher.data import read_fields, split_rows
from runs.launcher.events import Events, LaunchError
from runs.launcher.methods import common
from runs.launcher.models import read_hf_config, resolve_model_dir
from runs.launcher.monitor import Monitor

ACTOR = protocol.ACTOR_DIRNAME  # Tunix keeps the policy's checkpoints in this subfolder
SAMPLES_PER_EVAL = 2
SAMPLE_CHARS = 1000


@dataclass
class Prepared:
    model_dir: Path
    hf: dict
    train_rows: list
    eval_rows: list
    max_prompt_length: int
    total_steps: int
    settings: rewards_lib.RewardSettings


def prepare(config: dict) -> Prepared:
    """Read the rows, check the rewards and the prompt lengths: no JAX."""
    from tokenizers import Tokenizer

    model_cfg, t, method = config["model"], config["training"], config["method"]
    model_dir = resolve_model_dir(model_cfg)
    hf = read_hf_config(model_dir, model_cfg["family"])
    settings = rewards_lib.RewardSettings.from_config(method["rewards"])
    try:
        rewards_lib.build_rewards(settings)
    except rewards_lib.RewardError as exc:
        raise LaunchError(str(exc)) from None
    rows = read_fields(Path(config["dataset"]["path"]), ("prompt", "answer"))
    for row in rows:
        row["answer"] = rewards_lib.reference_answer(row["answer"], settings.extraction)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    limit = t["max_seq_length"] - method["max_new_tokens"]
    if limit < 1:
        raise LaunchError(
            f"max_seq_length={t['max_seq_length']} leaves no room for a prompt before "
            f"max_new_tokens={method['max_new_tokens']}"
        )
    lengths = [len(tokenizer.encode(r["prompt"], add_special_tokens=False).ids) for r in rows]
    kept = [r for r, n in zip(rows, lengths, strict=True) if n <= limit]
    if len(kept) < len(rows):
        print(
            f"launcher: dropped {len(rows) - len(kept)} rows whose prompt is longer than "
            f"max_seq_length - max_new_tokens = {limit} tokens",
            file=sys.stderr,
        )
    if not kept:
        raise LaunchError(f"no rows left: every prompt is longer than {limit} tokens")
    split_seed = config["dataset"].get("split_seed", t["seed"])
    train_rows, eval_rows = split_rows(kept, config["dataset"]["eval_fraction"], split_seed)
    per_epoch = -(-len(train_rows) // t["batch_size"])
    data_steps = per_epoch * t["num_epochs"] * method["num_iterations"]
    longest = max(n for n in lengths if n <= limit)
    return Prepared(
        model_dir=model_dir,
        hf=hf,
        train_rows=train_rows,
        eval_rows=eval_rows,
        max_prompt_length=min(limit, common.round_up(longest)),
        total_steps=min(t["max_steps"], data_steps) if t["max_steps"] else data_steps,
        settings=settings,
    )


class PromptBatches:
    """Epochs of shuffled {prompts, answer} batches (numpy string arrays, which Tunix repeats
    once per generation), the same on every pass."""

    def __init__(self, rows: list, batch_size: int, num_epochs: int, seed: int):
        self.rows, self.batch_size, self.num_epochs, self.seed = rows, batch_size, num_epochs, seed

    def __iter__(self):
        for epoch in range(self.num_epochs):
            order = common.epoch_order(len(self.rows), self.batch_size, self.seed, epoch)
            for start in range(0, len(order), self.batch_size):
                yield batch_of([self.rows[i] for i in order[start : start + self.batch_size]])


def batch_of(rows: list) -> dict:
    import numpy as np

    return {
        "prompts": np.array([r["prompt"] for r in rows]),
        "answer": np.array([r["answer"] for r in rows]),
    }


def metric_name(name: str) -> str:
    """Tunix's RL metric names in the SFT vocabulary: actor/train/loss -> train/loss,
    rewards/eval/answer_match -> eval/rewards/answer_match."""
    parts = name.lstrip("/").split("/")
    if len(parts) >= 3 and parts[0] == ACTOR and parts[1] in ("train", "eval"):
        return "/".join([parts[1], *parts[2:]])
    if len(parts) >= 3 and parts[1] in ("train", "eval"):
        return "/".join([parts[1], parts[0], *parts[2:]])
    return name.lstrip("/")


class RewardRecorder:
    """Wraps the reward functions: keeps each one's values for the spread metric and sends a
    few evaluation completions with their rewards as `sample` events."""

    def __init__(self, events: Events, fns: list, eval_every: int):
        self.events, self.fns, self.eval_every = events, fns, eval_every
        self.values: dict[str, list[float]] = {}
        self.step = lambda: 0
        self.wrapped = [self._wrap(fn, last=i == len(fns) - 1) for i, fn in enumerate(fns)]

    def _wrap(self, fn, *, last: bool):
        def reward(prompts, completions, answer=None, mode="", **kwargs):
            values = [float(v) for v in fn(prompts, completions, answer=answer, **kwargs)]
            self.values[fn.__name__] = values
            if last:
                self._maybe_sample(prompts, completions, answer, str(mode))
            return values

        reward.__name__ = fn.__name__
        return reward

    def _maybe_sample(self, prompts, completions, answers, mode: str) -> None:
        step = self.step()
        evaluating = "eval" in mode.lower()
        if not evaluating and (not self.eval_every or step % self.eval_every):
            return
        for i in range(min(SAMPLES_PER_EVAL, len(completions))):
            self.events.emit(
                protocol.EVENT_SAMPLE,
                step=step,
                split="eval" if evaluating else "train",
                prompt=str(prompts[i])[-SAMPLE_CHARS:],
                completion=str(completions[i])[:SAMPLE_CHARS],
                answer=str(answers[i])[:200] if answers is not None else "",
                rewards={name: values[i] for name, values in self.values.items()},
            )

    def spread(self, prompts, completions, advantages, rewards, **kwargs) -> dict:
        """A Tunix metric function: each reward's standard deviation over the batch."""
        import numpy as np

        return {
            f"rewards/{name}_std": (float(np.std(values)), np.mean)
            for name, values in self.values.items()
        }


def algorithm(method: dict):
    """(learner class, its config) for the variant."""
    from tunix.rl.grpo import dapo_learner, drgrpo_learner, grpo_learner

    common_args = {
        "num_generations": method["num_generations"],
        "num_iterations": method["num_iterations"],
        "epsilon": method["epsilon"],
        "loss_algo": method["loss_algo"],
    }
    if method["variant"] == "dapo":
        # DAPO has no KL term; the length penalty is ours (reward length_penalty).
        config = dapo_learner.DAPOConfig(
            **common_args,
            epsilon_high=max(0.28, method["epsilon"]),
            overlong_buffer=None,
        )
        return dapo_learner.DAPOLearner, config
    if method["variant"] == "drgrpo":
        return drgrpo_learner.DrGRPOLearner, drgrpo_learner.DrGRPOConfig(
            **common_args, beta=method["beta"]
        )
    return grpo_learner.GRPOLearner, grpo_learner.GRPOConfig(**common_args, beta=method["beta"])


def build_cluster(config: dict, prep: Prepared, mesh, model, reference, tokenizer, total):
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.rollout import base_rollout

    t, method = config["training"], config["method"]
    training_config = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=common.build_optimizer(t),
        eval_every_n_steps=t["eval_every_n_steps"] or total + 1,
        max_steps=total,
        checkpoint_root_directory=config["output"]["checkpoint_dir"],
        checkpointing_options=common.checkpoint_options(t, total),
        metrics_logging_options=common.logging_options(config),
        pbar_description=None,
    )
    rollout = base_rollout.RolloutConfig(
        max_tokens_to_generate=method["max_new_tokens"],
        max_prompt_length=prep.max_prompt_length,
        kv_cache_size=prep.max_prompt_length + method["max_new_tokens"] + 8,
        temperature=method["temperature"],
        top_p=method["top_p"],
        eos_tokens=tokenizer.stop_ids(),
        seed=None,
    )
    roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE, rl_cluster_lib.Role.ROLLOUT)
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={role: mesh for role in roles},
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=training_config,
        rollout_config=rollout,
    )
    return rl_cluster_lib.RLCluster(
        actor=model, reference=reference, tokenizer=tokenizer, cluster_config=cluster_config
    )


# long: one phase after another inside the mesh, as in runs.launcher.train.train.
def train(config: dict, prep: Prepared, events: Events, started: float) -> dict:
    import jax
    from flax import nnx

    from runs.launcher.train import build_mesh, report_environment, resume_from_parent

    report_environment(events)
    t, method = config["training"], config["method"]
    total = prep.total_steps
    checkpoint_dir = Path(config["output"]["checkpoint_dir"]) / ACTOR
    resumed_from = resume_from_parent(config, prep, events, subfolder=ACTOR)
    tokenizer = common.TextTokenizer(prep.model_dir, prep.hf, config["model"]["family"])
    mesh = build_mesh()
    with mesh:
        base = common.create_base(config, prep.model_dir, prep.hf, mesh)
        model = common.add_lora(base, config)
        reference = base if model is not base else nnx.clone(base)
        monitor = Monitor(
            events,
            total,
            checkpoint_dir,
            Path(config["output"]["dir"]),
            known_steps=[resumed_from] if resumed_from else [],
        )
        jax.monitoring.register_scalar_listener(
            lambda name, value, **kw: monitor.on_scalar(metric_name(name), value, **kw)
        )
        cluster = build_cluster(config, prep, mesh, model, reference, tokenizer, total)
        recorder = RewardRecorder(
            events, rewards_lib.build_rewards(prep.settings), t["eval_every_n_steps"] or 0
        )
        recorder.step = lambda: cluster.global_steps
        learner_class, algo_config = algorithm(method)
        learner = learner_class(
            rl_cluster=cluster,
            algo_config=algo_config,
            reward_fns=recorder.wrapped,
            metric_fns=[recorder.spread],
            data_shuffle_seed=t["seed"],
        )
        eval_ds = None
        if prep.eval_rows:
            size = t["batch_size"]
            eval_ds = [
                batch_of(prep.eval_rows[s : s + size]) for s in range(0, len(prep.eval_rows), size)
            ]
        events.enter(protocol.PHASE_TRAINING)
        learner.train(
            PromptBatches(prep.train_rows, t["batch_size"], t["num_epochs"], t["seed"]), eval_ds
        )

    monitor.report_checkpoints()
    steps = complete_steps(checkpoint_dir)
    events.enter(protocol.PHASE_DONE)
    return {
        "method": "grpo",
        "variant": method["variant"],
        "steps": cluster.actor_trainer.train_steps,
        "first_loss": monitor.first_loss,
        "final_loss": monitor.final_loss,
        "eval_loss": monitor.eval_loss,
        "checkpoint_step": steps[-1] if steps else None,
        "seconds": round(time.monotonic() - started, 3),
    }
