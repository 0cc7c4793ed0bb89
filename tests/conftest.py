import os
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import SPECS

# Generated kernels are built into a cache of this test session, not the user's: the
# suite shows that a fresh machine compiles them, and the CLI's subprocesses share it.
os.environ.setdefault("N2NGRAPH_CACHE", tempfile.mkdtemp(prefix="n2ngraph-test-cache-"))


@pytest.fixture(params=SPECS, ids=[p.stem for p in SPECS])
def spec_path(request) -> Path:
    return request.param


@pytest.fixture
def one_thread():
    """One torch thread for a test of tiny GEMMs: on a shared machine two threads
    fighting for cores are ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
