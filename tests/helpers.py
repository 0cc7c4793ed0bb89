"""Paths and devices shared by the tests."""

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
