"""python3 -m agentctl: the same as the agentctl console script."""

from agentctl.cli import main

main()
