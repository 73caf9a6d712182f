"""nccl-tests-style benchmark of agentcomm beside other torch.distributed backends."""
