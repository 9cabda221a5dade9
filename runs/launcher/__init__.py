"""The launcher: the program that runs one Tunix training job inside the training interpreter.

Usage: python -m runs.launcher CONFIG.json   (cwd: the run's output directory)

This package is the only code of the project that runs inside the training interpreter,
which may be another virtual environment on a GPU host. It therefore imports no Django and
nothing else of the app except `runs.protocol` (the contract with the supervisor), and only
the standard library at module level: JAX and Tunix are imported inside functions, after the
cheap checks, so a bad config fails in well under a second.

Modules, in the order a run goes through them:
- `config`: read and check the config file;
- `models`: find the model folder and build Tunix's model config (a table of families);
- `data`: read, split, tokenize and batch the rendered rows;
- `train`: prepare (no JAX) and train (model, LoRA, optimizer, trainer) by phase;
- `monitor`: Tunix's metric stream and loop hooks turned into protocol events;
- `checkpoints`: complete Orbax steps and seeding a resumed run;
- `events`: the JSON-lines writer and the launcher's own exceptions;
- `tinymodel`: generates the tiny test and demo models (no Tunix needed).
"""
