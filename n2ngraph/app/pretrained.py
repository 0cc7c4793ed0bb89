"""What ships inside the package, so that an installed n2ngraph works without the
repository: the specs of the networks that have pretrained weights (``specs/``) and
those weights (``weights/<spec name>.safetensors``, n2ngraph checkpoints).

``specs/noise2noise.yaml`` here is a copy of the repository's; a test keeps them equal.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, check_loadable, load_checkpoint

PACKAGE = Path(__file__).resolve().parent.parent  # n2ngraph/, beside app/
SPECS = PACKAGE / "specs"
WEIGHTS = PACKAGE / "weights"


def spec_path(spec_name: str) -> Path:
    """The shipped spec of a network by its name (``noise2noise``)."""
    path = SPECS / f"{spec_name}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SPECS.glob("*.yaml"))) or "none"
        raise FileNotFoundError(f"no spec '{spec_name}' ships with n2ngraph (shipped: {shipped})")
    return path


def weights_path(spec_name: str) -> Path:
    return WEIGHTS / f"{spec_name}.safetensors"


def load_pretrained(spec_name: str) -> dict[str, torch.Tensor]:
    """The shipped parameters of network ``spec_name``, keyed like ``conv1.weight``."""
    path = weights_path(spec_name)
    if not path.is_file():
        raise CheckpointError(f"no pretrained weights for '{spec_name}': {path} is not part "
                              f"of this installation")
    params, *_ = load_checkpoint(path)
    check_loadable(path, params)
    return params
