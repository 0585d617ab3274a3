from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from conftest import REPO_ROOT

from agentflow.config import (
    AgentConfig,
    AlertsConfig,
    BusConfig,
    Config,
    DlqConfig,
    KafkaConfig,
    LLMConfig,
    MCPConfig,
    MonitoringConfig,
    RetryConfig,
    RetryOverride,
    RunnerConfig,
    StateConfig,
    ToolBreakerConfig,
    ToolConfig,
    TracingConfig,
    WorkflowConfig,
    WorkflowStepConfig,
    config_from_dict,
    load_config,
)
from agentflow.errors import ConfigError

ROOT = REPO_ROOT
SHIPPED = ROOT / "config" / "agentflow.toml"
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "runner": RunnerConfig,
    "bus": BusConfig,
    "retry": RetryConfig,
    "dlq": DlqConfig,
    "monitoring": MonitoringConfig,
    "kafka": KafkaConfig,
    "memory": StateConfig,
    "tracing": TracingConfig,
}


WriteToml = Callable[[str], Path]


@pytest.fixture
def write_toml(tmp_path: Path) -> WriteToml:
    def write(text: str) -> Path:
        path = tmp_path / "agentflow.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def config_error(path: Path | None, *, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    return info.value


# --- defaults and the shipped file -------------------------------------------------------------------------


def test_defaults() -> None:
    config = Config()
    assert config.runner.worker_pool_size == 64
    assert config.runner.max_concurrent_events == 1024
    assert config.runner.event_buffer_size == 10_000
    assert config.runner.event_timeout_s == 30.0
    assert config.runner.shutdown_grace_s == 10.0
    assert config.runner.max_workflow_depth == 16
    assert config.runner.max_event_bytes == 1_048_576
    assert config.runner.request_timeout_s == 30.0
    assert config.bus == BusConfig(backend="memory", partitions=8)
    assert config.retry == RetryConfig(
        max_attempts=3, initial_backoff_s=0.1, max_backoff_s=10.0, multiplier=2.0, jitter_s=0.1
    )
    assert config.dlq == DlqConfig(enabled=True, topic_suffix=".dlq", max_entries=10_000)
    assert config.monitoring == MonitoringConfig(metrics_enabled=False, host="127.0.0.1", port=9464)
    assert config.agents == {}


def test_load_without_path_gives_defaults() -> None:
    assert load_config(env={}) == Config()
    assert config_from_dict({}) == Config()


def test_shipped_file_equals_defaults() -> None:
    assert load_config(SHIPPED, env={}) == Config()


def test_shipped_file_lists_every_key() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert set(data) == set(SECTIONS)
    for name, struct in SECTIONS.items():
        fields = msgspec.structs.fields(struct)
        # TOML has no null: a key whose default is "unset" is shown commented out.
        assert set(data[name]) == {f.name for f in fields if f.default is not None}, name
        for f in fields:
            if f.default is None:
                assert f"# {f.name} = " in text, f"{name}.{f.name}"


def test_docs_mention_every_key() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    structs: dict[str, type[msgspec.Struct]] = {
        **SECTIONS,
        "monitoring.alerts": AlertsConfig,
        "agents.NAME": AgentConfig,
        "llm.NAME": LLMConfig,
        "tools.NAME": ToolConfig,
        "mcp.NAME": MCPConfig,
        "tools.NAME.breaker": ToolBreakerConfig,
        "workflows.NAME": WorkflowConfig,
        "workflows.NAME.steps.STEP": WorkflowStepConfig,
    }
    for name, struct in structs.items():
        for field in struct.__struct_fields__:
            assert f"`{field}`" in docs, f"{name}.{field}"


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.runner = RunnerConfig()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.runner.worker_pool_size = 1  # type: ignore[misc]


def test_file_values_are_loaded(write_toml: WriteToml) -> None:
    path = write_toml(
        """
        [runner]
        worker_pool_size = 8
        event_timeout_s = 5      # an integer is accepted where seconds are expected
        [monitoring]
        metrics_enabled = true
        port = 0
        [agents.summarize]
        concurrency = 2
        """
    )
    config = load_config(path, env={})
    assert config.runner.worker_pool_size == 8
    assert config.runner.event_timeout_s == 5.0
    assert config.runner.max_concurrent_events == 1024
    assert config.monitoring == MonitoringConfig(metrics_enabled=True, port=0)
    assert config.agent("summarize") == AgentConfig(concurrency=2)


# --- per-agent overrides ----------------------------------------------------------------------------------


def test_agent_without_overrides_is_empty() -> None:
    config = Config()
    assert config.agent("nobody") == AgentConfig()
    assert config.retry_for("nobody") == config.retry


def test_retry_for_merges_agent_override_over_global(write_toml: WriteToml) -> None:
    path = write_toml(
        """
        [retry]
        max_attempts = 4
        initial_backoff_s = 0.5
        [agents.summarize.retry]
        max_attempts = 1
        jitter_s = 0.0
        """
    )
    config = load_config(path, env={})
    assert config.retry_for("summarize") == RetryConfig(
        max_attempts=1, initial_backoff_s=0.5, max_backoff_s=10.0, multiplier=2.0, jitter_s=0.0
    )
    assert config.retry_for("other") == RetryConfig(max_attempts=4, initial_backoff_s=0.5)


def test_retry_override_apply() -> None:
    base = RetryConfig()
    assert RetryOverride().apply(base) == base
    assert RetryOverride(multiplier=3.0).apply(base) == RetryConfig(multiplier=3.0)


# --- environment overrides --------------------------------------------------------------------------------


def test_env_overrides_int_float_bool_and_string(write_toml: WriteToml) -> None:
    path = write_toml("[runner]\nworker_pool_size = 8\n")
    config = load_config(
        path,
        env={
            "AGENTFLOW__RUNNER__WORKER_POOL_SIZE": "128",
            "AGENTFLOW__RUNNER__SHUTDOWN_GRACE_S": "2.5",
            "AGENTFLOW__MONITORING__METRICS_ENABLED": "true",
            "AGENTFLOW__MONITORING__HOST": "0.0.0.0",  # not a TOML value, so taken as the raw string
            "AGENTFLOW__DLQ__TOPIC_SUFFIX": '"-dead"',  # a quoted TOML string works too
            "UNRELATED": "ignored",
        },
    )
    assert config.runner.worker_pool_size == 128
    assert config.runner.shutdown_grace_s == 2.5
    assert config.monitoring.metrics_enabled is True
    assert config.monitoring.host == "0.0.0.0"
    assert config.dlq.topic_suffix == "-dead"


def test_env_names_are_case_insensitive_and_reach_agents() -> None:
    config = load_config(
        env={
            "agentflow__agents__summarize__timeout_s": "5",
            "AGENTFLOW__AGENTS__SUMMARIZE__RETRY__MAX_ATTEMPTS": "1",
        }
    )
    assert config.agent("summarize") == AgentConfig(timeout_s=5.0, retry=RetryOverride(max_attempts=1))
    assert config.retry_for("summarize").max_attempts == 1


def test_env_matches_agent_name_in_file_case_insensitively(write_toml: WriteToml) -> None:
    path = write_toml("[agents.Summarize]\nconcurrency = 2\n")
    config = load_config(path, env={"AGENTFLOW__AGENTS__SUMMARIZE__TIMEOUT_S": "5"})
    assert config.agents == {"Summarize": AgentConfig(concurrency=2, timeout_s=5.0)}


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.upper().startswith("AGENTFLOW__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AGENTFLOW__BUS__PARTITIONS", "3")
    assert load_config().bus.partitions == 3


def test_env_unknown_key_names_the_variable() -> None:
    error = config_error(None, env={"AGENTFLOW__RUNNER__WORKER_POOL_SISE": "8"})
    message = str(error)
    assert message.startswith("AGENTFLOW__RUNNER__WORKER_POOL_SISE: unknown key 'runner.worker_pool_sise'")
    assert "did you mean 'runner.worker_pool_size'?" in message
    assert "unset the variable" in message
    assert error.source == "AGENTFLOW__RUNNER__WORKER_POOL_SISE"


def test_env_unknown_section_names_the_variable() -> None:
    message = str(config_error(None, env={"AGENTFLOW__RUNER__WORKER_POOL_SIZE": "8"}))
    assert message.startswith("AGENTFLOW__RUNER__WORKER_POOL_SIZE: unknown key 'runer'; did you mean 'runner'?")


def test_env_bad_value_names_the_variable_not_the_file(write_toml: WriteToml) -> None:
    path = write_toml("[runner]\nworker_pool_size = 8\n")
    error = config_error(path, env={"AGENTFLOW__RUNNER__WORKER_POOL_SIZE": "0"})
    assert str(error) == (
        "AGENTFLOW__RUNNER__WORKER_POOL_SIZE: key 'runner.worker_pool_size' expected an integer >= 1, got 0 "
        "(integer). Fix the value, or unset the variable to use the file's value or the default (64)."
    )
    assert error.key == "runner.worker_pool_size"


def test_env_bool_must_be_lowercase_toml() -> None:
    message = str(config_error(None, env={"AGENTFLOW__MONITORING__METRICS_ENABLED": "True"}))
    assert "key 'monitoring.metrics_enabled' expected true or false, got \"True\" (string)" in message


@pytest.mark.parametrize("name", ["AGENTFLOW__", "AGENTFLOW__RUNNER____WORKER_POOL_SIZE"])
def test_env_malformed_name(name: str) -> None:
    message = str(config_error(None, env={name: "1"}))
    assert message.startswith(f"{name}: environment variable names must look like AGENTFLOW__SECTION__KEY")


def test_env_cannot_descend_into_a_value_from_the_file(write_toml: WriteToml) -> None:
    path = write_toml("runner = 5\n")
    message = str(config_error(path, env={"AGENTFLOW__RUNNER__WORKER_POOL_SIZE": "8"}))
    assert message.startswith(
        "AGENTFLOW__RUNNER__WORKER_POOL_SIZE: cannot set a key under 'runner' because it is already set to 5"
    )


# --- unknown keys -----------------------------------------------------------------------------------------


def test_unknown_section_suggests_closest(write_toml: WriteToml) -> None:
    path = write_toml("[runnr]\nworker_pool_size = 3\n")
    error = config_error(path)
    assert str(error) == (
        f"{path}: unknown key 'runnr'; did you mean 'runner'? Valid keys at the top level: agents, bus, dlq, "
        "kafka, llm, mcp, memory, monitoring, retry, runner, tools, tracing, workflows. Rename or remove the key."
    )
    assert (error.source, error.key) == (str(path), "runnr")


def test_unknown_nested_key_suggests_closest(write_toml: WriteToml) -> None:
    path = write_toml("[runner]\nworker_pool_sise = 3\n")
    message = str(config_error(path))
    assert message.startswith(
        f"{path}: unknown key 'runner.worker_pool_sise'; did you mean 'runner.worker_pool_size'? "
        "Valid keys in [runner]: event_buffer_size, "
    )


def test_unknown_key_without_close_match_lists_valid_keys(write_toml: WriteToml) -> None:
    path = write_toml("[dlq]\nxyzzy = 1\n")
    assert str(config_error(path)) == (
        f"{path}: unknown key 'dlq.xyzzy'. Valid keys in [dlq]: enabled, max_entries, topic_suffix. "
        "Rename or remove the key."
    )


def test_key_one_level_too_high_suggests_its_section(write_toml: WriteToml) -> None:
    path = write_toml("worker_pool_size = 3\n")
    assert "did you mean 'runner.worker_pool_size'?" in str(config_error(path))


@pytest.mark.parametrize(
    ("toml", "key", "suggestion"),
    [
        ("[agents.summarize]\ntimeout = 3\n", "agents.summarize.timeout", "agents.summarize.timeout_s"),
        (
            "[agents.summarize]\nmax_attempts = 3\n",
            "agents.summarize.max_attempts",
            "agents.summarize.retry.max_attempts",
        ),
        (
            "[agents.summarize.retry]\nmax_atempts = 1\n",
            "agents.summarize.retry.max_atempts",
            "agents.summarize.retry.max_attempts",
        ),
    ],
)
def test_unknown_agent_key_suggests_closest(write_toml: WriteToml, toml: str, key: str, suggestion: str) -> None:
    path = write_toml(toml)
    error = config_error(path)
    assert str(error).startswith(f"{path}: unknown key '{key}'; did you mean '{suggestion}'?")
    assert error.key == key


# --- wrong types and ranges -------------------------------------------------------------------------------


def test_wrong_type(write_toml: WriteToml) -> None:
    path = write_toml('[runner]\nworker_pool_size = "64"\n')
    assert str(config_error(path)) == (
        f"{path}: key 'runner.worker_pool_size' expected an integer >= 1, got \"64\" (string). "
        "Fix the value or remove the key to use the default (64)."
    )


def test_out_of_range(write_toml: WriteToml) -> None:
    path = write_toml("[runner]\nworker_pool_size = -3\n")
    error = config_error(path)
    assert str(error) == (
        f"{path}: key 'runner.worker_pool_size' expected an integer >= 1, got -3 (integer). "
        "Fix the value or remove the key to use the default (64)."
    )
    assert (error.source, error.key) == (str(path), "runner.worker_pool_size")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[runner]\nevent_timeout_s = 0\n", "key 'runner.event_timeout_s' expected a number > 0, got 0"),
        (
            "[runner]\nmax_event_bytes = 63\n",
            "key 'runner.max_event_bytes' expected an integer >= 64, got 63",
        ),
        ("[runner]\nworker_pool_size = 1.5\n", "expected an integer >= 1, got 1.5 (float)"),
        ("[retry]\nmultiplier = 0.5\n", "key 'retry.multiplier' expected a number >= 1, got 0.5"),
        (
            "[monitoring]\nport = 70000\n",
            "key 'monitoring.port' expected an integer from 0 to 65535, got 70000",
        ),
        ('[dlq]\nenabled = "yes"\n', "key 'dlq.enabled' expected true or false, got \"yes\" (string)"),
        ("[dlq]\ntopic_suffix = 5\n", "key 'dlq.topic_suffix' expected a string, got 5 (integer)"),
        ('[bus]\nbackend = "redis"\n', 'key \'bus.backend\' expected one of "memory", "kafka", got "redis"'),
        ("runner = 5\n", "key 'runner' expected a table, got 5 (integer)"),
        ("[agents]\nsummarize = 5\n", "key 'agents.summarize' expected a table, got 5 (integer)"),
    ],
)
def test_bad_values(write_toml: WriteToml, toml: str, expected: str) -> None:
    path = write_toml(toml)
    message = str(config_error(path))
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert message.endswith(".")


def test_bad_agent_value_points_at_global_setting(write_toml: WriteToml) -> None:
    path = write_toml('[agents."my.agent".retry]\nmax_attempts = 0\n')
    assert str(config_error(path)) == (
        f"{path}: key 'agents.\"my.agent\".retry.max_attempts' expected an integer >= 1, got 0 (integer). "
        "Fix the value or remove the key to use the global setting."
    )


def test_kafka_backend_is_accepted_and_unknown_backends_are_refused(write_toml: WriteToml) -> None:
    path = write_toml('[bus]\nbackend = "kafka"\n[kafka]\nbootstrap_servers = "b1:9092,b2:9092"\nacks = "1"\n')
    config = load_config(path, env={})
    assert (config.bus.backend, config.kafka.bootstrap_servers, config.kafka.acks) == ("kafka", "b1:9092,b2:9092", "1")
    path = write_toml('[bus]\nbackend = "rabbit"\n')
    assert "bus.backend" in str(config_error(path))


def test_config_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^tests: key 'bus.partitions' expected an integer >= 1, got 0"):
        config_from_dict({"bus": {"partitions": 0}}, source="tests")
    with pytest.raises(ConfigError, match=r"^<dict>: key 'agents' expected names that are strings"):
        config_from_dict({"agents": {1: {}}})


def test_config_from_dict_does_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLOW__BUS__PARTITIONS", "3")
    assert config_from_dict({}).bus.partitions == 8


# --- file problems ----------------------------------------------------------------------------------------


def test_invalid_toml_names_file_and_line(write_toml: WriteToml) -> None:
    path = write_toml("[runner]\nworker_pool_size = = 3\n")
    error = config_error(path)
    assert str(error).startswith(f"{path}: invalid TOML: invalid value (at line 2, column 20).")
    assert error.source == str(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert str(config_error(path)) == (
        f"{path}: configuration file not found. Check the path, or call load_config() without a path to use "
        "the built-in defaults."
    )


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    assert str(config_error(tmp_path)).startswith(f"{tmp_path}: cannot read the configuration file (")


def test_msgspec_messages_are_translated() -> None:
    from agentflow.config.loader import _Reporter

    reporter = _Reporter("f.toml", {})
    assert str(reporter.from_validation_error("Expected `int` >= 1 - at `$.agents[...].concurrency`")) == (
        "f.toml: key 'agents.<name>.concurrency' is invalid: expected int >= 1. Fix the value or remove the "
        "key to use the default."
    )
    assert str(reporter.from_validation_error("Object contains unknown field `x`")) == (
        "f.toml: key '(top level)' is invalid: object contains unknown field x. Fix the value or remove the "
        "key to use the default."
    )


# --- [tools.NAME] and [mcp.NAME] ----------------------------------------------------------------------------


def test_commented_examples_of_the_shipped_file_load() -> None:
    # The shipped file's commented tables ([agents.NAME], [tools.NAME], [mcp.NAME] ...), uncommented, are valid.
    # Each commented key belongs to the table above it, whether that table's header is commented or not.
    tables: dict[str, list[str]] = {}
    table = ""
    for line in SHIPPED.read_text(encoding="utf-8").splitlines():
        header = re.match(r"(?:# )?(\[[^\]]+\])$", line)
        if header:
            table = header.group(1)
        elif re.match(r"# [a-z_]+ = ", line):
            tables.setdefault(table, []).append(line[2:])
    body = "\n".join(f"{name}\n" + "\n".join(keys) for name, keys in tables.items())
    config = config_from_dict(tomllib.loads(body))
    assert config.memory.default_ttl_s == 86400.0 and config.memory.conversation_ttl_s == 86400.0
    assert config.tools["get_weather"].concurrency == 8
    assert config.mcp["files"].env == {"ROOT": "/srv/data", "API_KEY_env": "FILES_API_KEY"}
    assert config.mcp["search"].headers == {"Authorization_env": "SEARCH_TOKEN"}
    assert config.agent("summarize").tools == ("get_weather", "search.*")


def test_tool_and_mcp_tables_load(write_toml: WriteToml) -> None:
    path = write_toml(
        '[tools."search.web"]\nidempotent = true\nretry = { max_attempts = 2 }\nbreaker = { minimum_calls = 4 }\n'
        '[mcp.search]\ntransport = "http"\nreplicas = ["http://a/mcp", "http://b/mcp"]\n'
        'headers = { Authorization_env = "T" }\n[agents.answer]\ntools = ["search.*"]\nmax_parallel_tools = 2\n'
    )
    config = load_config(path, env={"AGENTFLOW__MCP__SEARCH__CALL_TIMEOUT_S": "5"})
    web = config.tools["search.web"]
    assert web.idempotent is True and web.retry == RetryConfig(max_attempts=2)
    assert web.breaker == ToolBreakerConfig(minimum_calls=4)
    assert config.mcp["search"].replica_targets() == ("http://a/mcp", "http://b/mcp")
    assert config.mcp["search"].call_timeout_s == 5.0
    assert config.agent("answer") == AgentConfig(tools=("search.*",), max_parallel_tools=2)


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("[tools.t]\ntimeout = 1\n", "unknown key 'tools.t.timeout'; did you mean 'tools.t.timeout_s'?"),
        ("[tools.t]\nmax_result_bytes = 10\n", "key 'tools.t.max_result_bytes' expected an integer >= 64"),
        ("[tools.t.breaker]\nfailure_rate = 0.5\n", "did you mean 'tools.t.breaker.failure_rate_threshold'?"),
        ('[mcp.s]\ntransport = "ws"\n', 'key \'mcp.s.transport\' expected one of "stdio", "http"'),
        ('[mcp.s]\ntransport = "stdio"\n', '[mcp.s]: an MCP server with transport = "stdio" needs command'),
        ('[mcp.s]\ntransport = "http"\nurl = "http://x"\nisolate = true\n', "which needs affinity"),
        ('[mcp.s]\ntransport = "http"\nurl = "http://x"\nheaders = { A = 1 }\n', "key 'mcp.s.headers' expected"),
        ("[agents.a]\nmax_parallel_tools = 0\n", "key 'agents.a.max_parallel_tools' expected an integer >= 1"),
    ],
)
def test_bad_tool_and_mcp_keys_get_the_usual_sentence(write_toml: WriteToml, toml: str, says: str) -> None:
    path = write_toml(toml)
    message = str(config_error(path))
    assert message.startswith(f"{path}: ") and says in message


def test_the_tool_breaker_table_mirrors_the_resilience_breaker_config() -> None:
    # config is layer L1 and cannot import resilience/: its breaker table must not drift from BreakerConfig.
    from agentflow.resilience import BreakerConfig
    from agentflow.tools.config import breaker_config

    assert ToolBreakerConfig.__struct_fields__ == BreakerConfig.__struct_fields__
    assert msgspec.structs.asdict(ToolBreakerConfig()) == msgspec.structs.asdict(BreakerConfig())
    assert breaker_config(ToolBreakerConfig(minimum_calls=3), where="tools.t.breaker") == BreakerConfig(minimum_calls=3)
    with pytest.raises(ConfigError, match=r"^\[tools.t.breaker\]: Invalid BreakerConfig: open_wait_s"):
        breaker_config(ToolBreakerConfig(open_wait_s=10, max_open_wait_s=1), where="tools.t.breaker")
