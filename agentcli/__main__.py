"""``python -m agentcli``."""

from agentcli.main import main

main()
