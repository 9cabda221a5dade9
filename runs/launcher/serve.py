"""The playground's generation server: python -m runs.launcher.serve SOCKET [--models N] [--idle S]

One long-lived process per worker host, started by the worker on the first prompt. It listens
on a Unix socket; each connection sends one JSON line and gets one JSON line back:

  {"source": {model_dir, family, checkpoint_dir, lora, seed}, "prompt": "<rendered>",
   "settings": {max_new_tokens, temperature, top_p, seed}}
  -> {"ok": true, "tuned": "...", "base": "...", "cold": bool, "seconds": s}
     or {"ok": false, "error": "..."} (with "missing_checkpoint": true when the fine-tuned
     model is not loaded and its checkpoint_dir is not on this host: the worker stages it
     from the object store and sends the request again)

It keeps the most recently used models loaded (at most N: a run's fine-tuned model and its base
count as two), evicting the least recently used first, and their samplers' compiled shapes, so a
second prompt to the same run answers in milliseconds on a small model. Requests are served one
at a time. It exits after S seconds without a request (its memory goes back to the host).
"""

import argparse
import contextlib
import json
import os
import socket
import sys
import time
import traceback
from collections import OrderedDict
from pathlib import Path

from runs.launcher.generate import Generator, Settings, clip_prompt

MAX_PROMPT_TOKENS = 1024
# Prompt lengths are padded to a multiple of this: prompts of similar length share a compile.
PROMPT_BUCKET = 128
MAX_REQUEST_BYTES = 1 << 20


class Models:
    """Loaded models by key, least recently used first; each with its generators."""

    def __init__(self, limit: int, mesh):
        self.limit, self.mesh = max(1, limit), mesh
        self.loaded: OrderedDict = OrderedDict()
        self.tokenizers: dict = {}

    def tokenizer(self, source: dict):
        from runs.launcher.weights import TextTokenizer

        key = (source["model_dir"], source["family"])
        if key not in self.tokenizers:
            self.tokenizers[key] = TextTokenizer(Path(source["model_dir"]), source["family"])
        return self.tokenizers[key]

    @staticmethod
    def key(which: str, source: dict) -> tuple:
        # A run's fine-tuned model by its id: its checkpoint may be staged anew per prompt.
        tuned = source.get("run_id") or source.get("checkpoint_dir")
        return (which, source["model_dir"], tuned if which == "tuned" else "")

    def has_tuned(self, source: dict) -> bool:
        return self.key("tuned", source) in self.loaded

    def get(self, which: str, source: dict) -> tuple[dict, bool]:
        """({"model", "config", "generators"}, whether it was loaded now)."""
        from runs.launcher.weights import load_base, load_trained

        key = self.key(which, source)
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key], False
        while len(self.loaded) >= self.limit:
            self.loaded.popitem(last=False)  # evict the least recently used
        if which == "tuned":
            model, config, _, _ = load_trained(source, self.mesh)
        else:
            model, config, _ = load_base(Path(source["model_dir"]), source["family"], self.mesh)
        entry = {"model": model, "config": config, "generators": {}}
        self.loaded[key] = entry
        return entry, True

    def generate(self, which: str, source: dict, prompt: str, settings: Settings):
        tokenizer = self.tokenizer(source)
        entry, cold = self.get(which, source)
        length = len(tokenizer.encode(prompt))
        bucket = -(-max(length, 1) // PROMPT_BUCKET) * PROMPT_BUCKET
        gkey = (bucket, settings.max_new_tokens)
        generator = entry["generators"].get(gkey)
        if generator is None:
            generator = Generator(entry["model"], entry["config"], tokenizer, settings, bucket)
            entry["generators"][gkey] = generator
            cold = True  # a new shape: compiled on this call
        generator.settings = settings
        return generator([prompt])[0], cold


def answer(models: Models, request: dict) -> dict:
    source = request["source"]
    settings = Settings.from_dict(request.get("settings"))
    tokenizer = models.tokenizer(source)
    prompt = clip_prompt(tokenizer, str(request["prompt"]), MAX_PROMPT_TOKENS)
    if not models.has_tuned(source) and not Path(source["checkpoint_dir"]).is_dir():
        # The worker stages the checkpoint from its object store and asks again.
        error = f"checkpoint dir {source['checkpoint_dir']} does not exist"
        return {"ok": False, "missing_checkpoint": True, "error": error}
    started = time.monotonic()
    out: dict = {"ok": True, "cold": False}
    for which in ("tuned", "base"):
        out[which], cold = models.generate(which, source, prompt, settings)
        out["cold"] = out["cold"] or cold
    out["seconds"] = round(time.monotonic() - started, 4)
    out["loaded"] = len(models.loaded)
    return out


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST_BYTES:
        part = connection.recv(65536)
        if not part:
            break
        data += part
    return data


def serve(path: str, limit: int, idle: float) -> int:
    from runs.launcher.train import build_mesh

    mesh = build_mesh()
    models = Models(limit, mesh)
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(16)
    listener.settimeout(min(idle, 5.0))
    print(json.dumps({"event": "listening", "socket": path, "models": limit}), flush=True)
    last = time.monotonic()
    with mesh:
        while time.monotonic() - last < idle:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            last = time.monotonic()
            with connection:
                connection.settimeout(30)
                try:
                    reply = answer(models, json.loads(_read_line(connection)))
                except Exception as exc:  # one bad request never ends the server
                    traceback.print_exc()
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                with contextlib.suppress(OSError):  # the worker gave up waiting
                    connection.sendall(json.dumps(reply).encode() + b"\n")
            last = time.monotonic()
    print(json.dumps({"event": "idle exit"}), flush=True)
    listener.close()
    if os.path.exists(path):
        os.unlink(path)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m runs.launcher.serve")
    parser.add_argument("socket")
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--idle", type=float, default=600.0)
    args = parser.parse_args(argv)
    return serve(args.socket, args.models, args.idle)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)
