"""Paths and devices shared by the tests."""

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# the torch.nn oracle lives with the tools (it also trains side by side with n2ngraph)
import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
