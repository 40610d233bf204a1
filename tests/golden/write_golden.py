"""Regenerates tests/golden/tiny_losses.json from the tiny golden config, on 8 CPU devices as the
tests run. A deliberate step, separate from the test that checks the file:

    python tests/golden/write_golden.py

Rewrite the file only for a change that is meant to move the loss curve, and say why in the commit.
"""

import importlib
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
importlib.import_module("tests.conftest")  # 8 fake CPU devices, before JAX is imported
from tests.helpers import write_learnable_dataset  # noqa: E402
from tests.integration.test_trainer import GOLDEN, golden_losses  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_learnable_dataset(pathlib.Path(tmp) / "ds")
        losses = golden_losses(data, os.path.join(tmp, "run"))
    with open(GOLDEN, "w") as f:
        json.dump({"losses": losses}, f, indent=1)
    print(f"wrote {len(losses)} losses to {GOLDEN}")


if __name__ == "__main__":
    main()
