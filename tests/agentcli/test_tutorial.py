"""docs/tutorial.md, run as written: every file it shows is written and every command run, in order, in an empty
directory, with real processes (the mock LLM, the worker) and a real Kafka-protocol broker.

Three things differ from a user's machine, and only these: the packages come from this checkout's environment
instead of ``pip install`` (step 1), the broker is the suite's Tansu broker instead of ``docker run`` (so
``[kafka]`` gets Tansu's client settings, docs/kafka.md), and the ports are free ones instead of 9092, 8089 and
9464, so the test can run beside others.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from kafka_broker import TEST_KAFKA_SETTINGS, TansuBroker, free_port

TUTORIAL = REPO_ROOT / "docs" / "tutorial.md"
_BLOCK = re.compile(r"```(\w+)[^\n]*\n(.*?)```", re.DOTALL)
_STEP = re.compile(r"^## (\d+)\. (.+)$", re.MULTILINE)


@dataclass
class Step:
    number: int
    title: str
    blocks: list[tuple[str, str]]  # (language, text)


def steps() -> list[Step]:
    text = TUTORIAL.read_text(encoding="utf-8")
    heads = list(_STEP.finditer(text))
    out = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[head.end() : end]
        out.append(Step(int(head.group(1)), head.group(2), [(m.group(1), m.group(2)) for m in _BLOCK.finditer(body)]))
    return out


@dataclass
class Shell:
    """Runs the tutorial's commands as one terminal would: ``&`` starts a job, ``kill %N`` / ``wait %N`` act on it."""

    cwd: Path
    swaps: dict[str, str]
    env: dict[str, str]
    jobs: dict[int, subprocess.Popen[str]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def argv(self, command: str) -> list[str]:
        for old, new in self.swaps.items():
            command = command.replace(old, new)
        args = shlex.split(command)
        if args[0] == "agentcli":
            return [sys.executable, "-m", "agentcli", *args[1:]]
        if args[0] in ("python", "python3"):
            return [sys.executable, *args[1:]]
        return args

    def run(self, command: str) -> None:
        if command.startswith(("python3 -m venv", ". .venv/bin/activate", "pip install")):
            return  # step 1: this checkout's environment is already installed
        if command.startswith("docker "):
            return  # the suite's broker stands in for the container
        for part in command.split(" && "):
            self._one(part.strip())

    def _one(self, command: str) -> None:
        if command.startswith(("kill ", "wait ")):
            verb, *targets = command.split()
            for t in targets:
                proc = self.jobs[int(t.lstrip("%"))]
                if verb == "kill":
                    proc.send_signal(signal.SIGTERM)
                else:
                    out, _ = proc.communicate(timeout=60)
                    self.outputs.append(out)
                    assert proc.returncode == 0, (command, out, self.logs())
            return
        if command.endswith(" &"):
            # stderr to a file: a job's log lines must not fill a pipe nobody reads until the end
            log = open(self.cwd / f"job-{len(self.jobs) + 1}.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(
                self.argv(command[:-2]), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=log, text=True
            )
            log.close()
            number = next(n for n in range(1, 100) if n not in self.jobs or self.jobs[n].poll() is not None)
            self.jobs[number] = proc
            self._wait_until_up(proc, command)
            return
        done = subprocess.run(
            self.argv(command), cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr, self.logs())
        self.outputs.append(done.stdout + done.stderr)

    def _wait_until_up(self, proc: subprocess.Popen[str], command: str) -> None:
        """A user would wait for the line a long-running command prints when it is up."""
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving on" in line or "ready on" in line, (command, line, self.logs())

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.cwd.glob("job-*.log")))

    def close(self) -> None:
        for proc in self.jobs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    all_steps = steps()
    assert [s.number for s in all_steps] == list(range(1, len(all_steps) + 1)), "steps are numbered 1, 2, 3 ..."
    llm_port, http_port = free_port(), free_port()
    tansu = "".join(f"{k} = {v!r}\n".replace("'", '"').replace("True", "true").replace("False", "false")
                    for k, v in TEST_KAFKA_SETTINGS.items())  # fmt: skip
    swaps = {
        "127.0.0.1:9092": kafka_broker.bootstrap,
        "--port 8089": f"--port {llm_port}",
        "127.0.0.1:8089": f"127.0.0.1:{llm_port}",
        "port = 9464": f"port = {http_port}",
        f'bootstrap_servers = "{kafka_broker.bootstrap}"\n': f'bootstrap_servers = "{kafka_broker.bootstrap}"\n{tansu}',
    }
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("COLUMNS", None)
    shell = Shell(tmp_path, swaps, env)
    try:
        for step in all_steps:
            for lang, text in step.blocks:
                first, _, rest = text.partition("\n")
                if lang in ("python", "toml") and first.startswith("# "):
                    content = text
                    for old, new in swaps.items():
                        content = content.replace(old, new)
                    (tmp_path / first[2:].strip()).write_text(content, encoding="utf-8")
                elif lang == "console":
                    for line in text.splitlines():
                        if line.startswith("$ "):
                            shell.run(line[2:])
            outputs = "\n".join(shell.outputs)
            if step.number == 3:
                assert "agentflow.toml: valid" in outputs, outputs
            if step.number == 5:
                assert "echo:What is agentflow?" in outputs, (step.title, outputs)
            if step.number == 6:
                assert "tool results: capital: Nairobi" in outputs, (step.title, outputs)
    finally:
        shell.close()
