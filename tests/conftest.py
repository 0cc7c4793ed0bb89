from pathlib import Path

import pytest
from helpers import SPECS


@pytest.fixture(params=SPECS, ids=[p.stem for p in SPECS])
def spec_path(request) -> Path:
    return request.param
