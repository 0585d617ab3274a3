"""The Locust side of the comparison in docs/load-testing.md ("How agentcli's figures compare with Locust's and k6's").

Not a project dependency: run it from a separate venv (``python3 -m venv /tmp/locust && /tmp/locust/bin/pip install
locust``). Each user POSTs one chat request to ``agentcli mock-llm`` and loops; ``PER_USER_RATE`` (requests/s per
user, via Locust's ``constant_throughput``) paces the users, 0 (default) sends back to back.
"""

import os

from locust import FastHttpUser, constant, constant_throughput, task

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PER_USER_RATE = float(os.environ.get("PER_USER_RATE", "0"))


class Chat(FastHttpUser):
    wait_time = constant_throughput(PER_USER_RATE) if PER_USER_RATE > 0 else constant(0)

    @task
    def chat(self) -> None:
        self.client.post("/v1/chat/completions", json=BODY)
