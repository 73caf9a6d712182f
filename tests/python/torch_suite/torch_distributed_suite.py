"""torch's own distributed test suite (shipped in the wheel), run against agentcomm.

Not collected by pytest directly (it spawns its own processes per test);
test_torch_suite.py runs a chosen list of its tests through this file.

    BACKEND=agentcomm WORLD_SIZE=2 python torch_distributed_suite.py -k test_all_reduce_sum
"""

import os

os.environ.setdefault("WORLD_SIZE", "2")
# Many of the suite's tests are gated on the *name* "gloo" (e.g. "Only gloo
# backend supports timeouts", "get_future is only supported on mpi, nccl and
# gloo") although they exercise only the public API. AGENTCOMM_AS_GLOO=1
# imports the suite as if for Gloo, so those gates open, then points the
# module's BACKEND at agentcomm, so every process group the tests create is
# an agentcomm one.
AS_GLOO = os.environ.get("AGENTCOMM_AS_GLOO") == "1"
os.environ["BACKEND"] = "gloo" if AS_GLOO else "agentcomm"

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402,F401

import agentcomm  # noqa: E402,F401  registers the backend in every spawned rank too
from torch.testing._internal.common_distributed import DistTestCases  # noqa: E402

# Declare what agentcomm implements, so the suite's own feature gates let the tests run.
for feature in ("plugin", "ddp", "subgroup"):
    DistTestCases.backend_feature[feature].add("agentcomm")

from torch.testing._internal.common_utils import run_tests  # noqa: E402
import torch.testing._internal.distributed.distributed_test as suite  # noqa: E402
from torch.testing._internal.distributed.distributed_test import DistributedTest, TestDistBackend  # noqa: E402

if AS_GLOO:
    suite.BACKEND = "agentcomm"
    os.environ["BACKEND"] = "agentcomm"


class TestAgentcommWithSpawn(TestDistBackend, DistributedTest._DistTestBase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()


if __name__ == "__main__":
    run_tests()
