"""The operator commands: ``agentcli run``, ``emit``, ``dlq`` and ``mock-llm``."""
