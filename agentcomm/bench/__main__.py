"""Entry point of ``python -m agentcomm.bench`` (the code lives in cli.py so spawned ranks can import it)."""

from agentcomm.bench.cli import main

main()
