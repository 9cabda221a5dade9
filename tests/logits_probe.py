"""Run in a child interpreter by tests/test_export.py: print the largest logit difference
between a run's trained weights and a model folder, and between the trained weights and the
base (to show the comparison can fail). Usage: python tests/logits_probe.py JOB.json FOLDER"""

import json
import sys
from pathlib import Path

import numpy as np

from runs.launcher.train import build_mesh
from runs.launcher.weights import TextTokenizer, load_base, load_trained, logits


def main(job_path: str, folder: str) -> None:
    source = json.loads(Path(job_path).read_text())["source"]
    family = source["family"]
    tokenizer = TextTokenizer(Path(source["model_dir"]), family)
    texts = ["I have 3 apples and get 4 more. How many apples?", "2 + 2 = 4. The answer is"]
    ids = [tokenizer.encode(t) for t in texts]
    mesh = build_mesh()
    with mesh:
        trained = logits(load_trained(source, mesh)[0], ids)
        exported = logits(load_base(Path(folder), family, mesh)[0], ids)
        base = logits(load_base(Path(source["model_dir"]), family, mesh)[0], ids)
    print(
        json.dumps(
            {
                "exported": float(np.abs(trained - exported).max()),
                "base": float(np.abs(trained - base).max()),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
