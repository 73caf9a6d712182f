import glob
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test must leave no agentcomm shared-memory segments and no child processes."""
    yield
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
        pytest.fail(f"test leaked a child process: {child}")
    leaked = glob.glob("/dev/shm/*agentcomm*")
    for path in leaked:
        os.unlink(path)
    assert not leaked, f"test leaked shared-memory segments: {leaked}"
