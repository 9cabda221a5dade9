"""One module per post-training method around the shared core in `common`.

`sft` stays in `runs.launcher.train`; `dpo` runs DPO and ORPO; `grpo` runs GRPO and its
variants. Each module has `prepare(config)` (no JAX: bad input fails fast) and
`train(config, prepared, events, started) -> summary`.
"""

import importlib

METHOD_MODULES = {
    "sft": "runs.launcher.train",
    "dpo": "runs.launcher.methods.dpo",
    "orpo": "runs.launcher.methods.dpo",
    "grpo": "runs.launcher.methods.grpo",
}


def method_module(name: str):
    """The module that runs `name` (imported on demand: each imports Tunix only inside its
    functions)."""
    return importlib.import_module(METHOD_MODULES[name])
