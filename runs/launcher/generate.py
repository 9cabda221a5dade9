"""Generation with Tunix's sampler, shared by the evaluation job and the playground.

Prompts arrive rendered with the family's chat template (as training saw them); the sampler is
given the run's tokenizer through `weights.TextTokenizer`, which adds no special tokens.
Prompt lengths are padded up to a multiple of 32 so that a few compiled shapes serve all rows.
"""

from dataclasses import asdict, dataclass

from runs.launcher.events import LaunchError

PROMPT_BUCKET = 32


@dataclass(frozen=True)
class Settings:
    """Decoding settings, saved with every result so it can be reproduced.
    temperature 0 is greedy; top_p applies only when sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict | None) -> "Settings":
        values = values or {}
        settings = cls(
            max_new_tokens=int(values.get("max_new_tokens", cls.max_new_tokens)),
            temperature=float(values.get("temperature", cls.temperature)),
            top_p=None if values.get("top_p") in (None, "") else float(values["top_p"]),
            seed=int(values.get("seed", cls.seed)),
        )
        if not 1 <= settings.max_new_tokens <= 4096:
            raise LaunchError("generation.max_new_tokens must be between 1 and 4096")
        if settings.temperature < 0:
            raise LaunchError("generation.temperature must not be negative")
        if settings.top_p is not None and not 0 < settings.top_p <= 1:
            raise LaunchError("generation.top_p must be in (0, 1]")
        return settings

    def as_dict(self) -> dict:
        return asdict(self)


class Generator:
    """One model's sampler; reusable across calls (its compiled shapes are cached)."""

    def __init__(self, model, model_config, tokenizer, settings: Settings, max_prompt: int):
        from tunix.generate.sampler import CacheConfig, Sampler

        self.tokenizer, self.settings = tokenizer, settings
        self.max_prompt = -(-max_prompt // PROMPT_BUCKET) * PROMPT_BUCKET
        cache = CacheConfig(
            cache_size=self.max_prompt + settings.max_new_tokens + 8,
            num_layers=model_config.num_layers,
            num_kv_heads=model_config.num_kv_heads,
            head_dim=model_config.head_dim,
        )
        self.sampler = Sampler(model, tokenizer, cache)

    def __call__(self, prompts: list[str]) -> list[str]:
        s = self.settings
        sampling = s.temperature > 0
        out = self.sampler(
            list(prompts),
            max_generation_steps=s.max_new_tokens,
            max_prompt_length=self.max_prompt,
            temperature=s.temperature if sampling else 0.0,
            top_p=(s.top_p or 1.0) if sampling else None,
            seed=s.seed if sampling else None,
            eos_tokens=self.tokenizer.stop_ids or None,
        )
        return [text.strip() for text in out.text]


def clip_prompt(tokenizer, prompt: str, max_tokens: int) -> str:
    """Keep the end of an over-long prompt (where the question and the answer marker are)."""
    ids = tokenizer.encode(prompt)
    if len(ids) <= max_tokens:
        return prompt
    return tokenizer.tokenizer.decode(ids[-max_tokens:], skip_special_tokens=False)
