"""Every `trtllm-serve` command line and `engine.yaml` the operator writes for TensorRT-LLM, in every serving
mode and over both transports, checked flag by flag and key by key (exact match) against a pinned snapshot of
TensorRT-LLM's interface (`tests/data/trtllm/main-00209af-schema.json`: the CLI options of `trtllm-serve
serve` and `mm_embedding_serve`, and the LLM-API keys, copied from the public source at named commits).

No TensorRT-LLM wheel is installable here (PyPI has a placeholder), so this is a snapshot, not the package's
own parser: it catches a misspelt or unknown flag or key, not a change TensorRT-LLM makes after the snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from triptych_contract import CONFIG_DIR
from triptych_operator.api import parse_spec
from triptych_operator.builders import build_children
from triptych_operator.naming import Owner
from triptych_operator.settings import OperatorSettings

from tests.backend_cases import serving_specs, uncovered

REPO = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO / "tests" / "data" / "trtllm" / "main-00209af-schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
SETTINGS = OperatorSettings.from_env({})
NAME = "d"
ENGINE_FILE = "engine.yaml"
EXAMPLES = sorted((REPO / "examples").glob("trtllm-*.yaml"))


@dataclass
class Generated:
    """One worker role's engine command and the engine.yaml its ConfigMap carries (if any)."""

    command: list[str]
    engine_yaml: dict[str, Any] | None
    config_map_keys: set[str] = field(default_factory=set)


def generate(spec_raw: dict[str, Any], *, rdma_available: bool) -> dict[str, Generated]:
    spec = parse_spec(spec_raw)
    children = build_children(Owner(NAME, "ns", "u"), spec, SETTINGS, rdma_available=rdma_available)
    config_maps = {c["metadata"]["name"]: c for c in children if c["kind"] == "ConfigMap"}
    out = {}
    for child in children:
        if child["kind"] != "Deployment":
            continue
        pod = child["spec"]["template"]["spec"]
        engine = next((c for c in pod["containers"] if c["name"] == "engine"), None)
        if engine is None:
            continue
        config_map_name = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
        data = config_maps[config_map_name]["data"]
        raw = data.get(ENGINE_FILE)
        role = child["metadata"]["name"].removeprefix(f"{NAME}-")
        out[role] = Generated(engine["command"], yaml.safe_load(raw) if raw else None, set(data))
    return out


def generated_cases() -> dict[str, Generated]:
    return {
        f"{prefix}-{role}": generated
        for prefix, raw, rdma in serving_specs("trtllm", "org/m", EXAMPLES)
        for role, generated in generate(raw, rdma_available=rdma).items()
    }


CASES = generated_cases()


# ------------------------------------------------------------------------------------------------ checks


def cli_problems(command: list[str]) -> list[str]:
    """What the snapshot's trtllm-serve would refuse in `command`, one line each (empty: accepted)."""
    program, *rest = command
    commands = SCHEMA["cli"]["commands"]
    if program != SCHEMA["cli"]["program"]:
        return [f"program {program!r} is not {SCHEMA['cli']['program']!r}"]
    # The group runs `serve` when the first argument is not a subcommand.
    name = rest[0] if rest and rest[0] in commands else "serve"
    args = rest[1:] if rest and rest[0] in commands else rest
    schema = commands[name]
    options = {o: spec for o, spec in schema["options"].items()}
    options |= {alias: spec for spec in schema["options"].values() for alias in spec.get("aliases", [])}
    problems: list[str] = []
    positional: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if not token.startswith("-"):
            positional.append(token)
            continue
        flag, has_value, value = token.partition("=")
        spec = options.get(flag)
        if spec is None:
            problems.append(f"{name}: no such option {flag}")
            # Click stops here; to go on, read a following non-option token as its value.
            if not has_value and index < len(args) and not args[index].startswith("-"):
                index += 1
            continue
        if spec["takes_value"] and not has_value:
            value = args[index] if index < len(args) else ""
            index += 1
        choices = spec.get("choices")
        if choices is not None and value not in choices:
            problems.append(f"{name} {flag}: {value!r} is not one of {choices}")
        upper = spec.get("choices_upper")
        if upper is not None and value.upper() not in upper:
            problems.append(f"{name} {flag}: {value!r} is not one of {upper}")
        if spec.get("type") == "int" and not value.lstrip("-").isdigit():
            problems.append(f"{name} {flag}: {value!r} is not an int")
    if len(positional) != len(schema["arguments"]):
        problems.append(f"{name}: arguments {positional} where it takes {schema['arguments']}")
    return problems


def engine_yaml_problems(engine: dict[str, Any]) -> list[str]:
    """What the snapshot's LLM-API (the PyTorch backend's TorchLlmArgs, extra='forbid') would refuse in
    engine.yaml."""
    llm_args = SCHEMA["llm_args"]
    known = set(llm_args["base"]) | set(llm_args["torch"])
    problems = [f"engine.yaml: unknown key {key!r}" for key in engine if key not in known]
    for key, value in engine.items():
        if llm_args["base"].get(key, llm_args["torch"].get(key)) == "bool" and not isinstance(value, bool):
            problems.append(f"engine.yaml {key}: {value!r} is not a bool")
    transceiver = engine.get("cache_transceiver_config")
    if transceiver is not None:
        fields = llm_args["cache_transceiver_config"]
        for key, value in transceiver.items():
            if key not in fields:
                problems.append(f"engine.yaml cache_transceiver_config: unknown key {key!r}")
            elif "choices" in fields[key] and value not in fields[key]["choices"]:
                choices = fields[key]["choices"]
                problems.append(f"engine.yaml cache_transceiver_config.{key}: {value!r} not in {choices}")
    return problems


def config_path_problems(generated: Generated) -> list[str]:
    """--config names the engine.yaml the role's ConfigMap carries (mounted at CONFIG_DIR)."""
    command = generated.command
    if "--config" not in command:
        return ["engine.yaml written but no --config"] if generated.engine_yaml is not None else []
    path = command[command.index("--config") + 1]
    if path != f"{CONFIG_DIR}/{ENGINE_FILE}" or ENGINE_FILE not in generated.config_map_keys:
        return [f"--config {path} is not the ConfigMap's {ENGINE_FILE} at {CONFIG_DIR}"]
    return []


def problems_of(generated: Generated) -> list[str]:
    out = cli_problems(generated.command) + config_path_problems(generated)
    if generated.engine_yaml is not None:
        out += engine_yaml_problems(generated.engine_yaml)
    return out


# ------------------------------------------------------------------------------------------------- tests


def test_the_snapshot_says_what_it_is() -> None:
    header = SCHEMA["_snapshot"]
    assert "NOT the live package" in header["what"]
    assert header["repository"].startswith("NVIDIA/TensorRT-LLM")
    for source in header["sources"].values():
        path, _, commit = source.partition(" @ ")
        assert path.startswith("tensorrt_llm/")
        assert len(commit.split()[0]) == 40


def test_every_mode_and_example_is_generated() -> None:
    assert uncovered(CASES) == []
    assert [p.stem for p in EXAMPLES] == ["trtllm-e-p-d-tcp", "trtllm-e-pd-auto"]
    written = {k for g in CASES.values() if g.engine_yaml for k in g.engine_yaml}
    assert written == {"enable_attention_dp", "cache_transceiver_config", "disable_overlap_scheduler"}


@pytest.mark.parametrize("case", list(CASES))
def test_generated_command_and_engine_yaml_match_the_snapshot(case: str) -> None:
    problems = problems_of(CASES[case])
    assert problems == [], f"{case}: {' '.join(CASES[case].command)}\nengine.yaml: {CASES[case].engine_yaml}"


def test_the_served_name_is_not_a_flag_trtllm_serve_lacks() -> None:
    """`trtllm-serve serve` (serve.py @ 00209af) has no --served_model_name (click: 'No such option'): its
    served name is the positional MODEL. The operator once wrote the flag; the snapshot refuses it."""
    assert not any("--served_model_name" in g.command for g in CASES.values())
    some = next(g for g in CASES.values() if g.command[:2] == ["trtllm-serve", "serve"])
    assert any(p.endswith("no such option --served_model_name") for p in problems_of(_swap(some, "--backend",
               "--served_model_name")))  # fmt: skip


def _swap(generated: Generated, old: str, new: str) -> Generated:
    command = [new if token == old else token for token in generated.command]
    return Generated(command, generated.engine_yaml, generated.config_map_keys)


def _with_yaml(generated: Generated, **keys: Any) -> Generated:
    return Generated(generated.command, {**(generated.engine_yaml or {}), **keys}, generated.config_map_keys)


MUTATIONS: dict[str, tuple[Callable[[Generated], Generated], str]] = {
    "hyphenated-flag": (lambda g: _swap(g, "--tp_size", "--tp-size"), "no such option --tp-size"),
    "abbreviated-flag": (lambda g: _swap(g, "--tp_size", "--tp"), "no such option --tp"),
    "unknown-server-role": (
        lambda g: _swap(g, "CONTEXT", "PREFILL"),
        "--server_role: 'PREFILL' is not one of",
    ),
    "unknown-yaml-key": (
        lambda g: _with_yaml(g, enable_attention_data_parallel=True),
        "unknown key 'enable_attention_data_parallel'",
    ),
    "lowercase-backend": (
        lambda g: _with_yaml(g, cache_transceiver_config={"backend": "nixl"}),
        "cache_transceiver_config.backend: 'nixl' not in",
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_flag_or_key_is_refused(mutation: str) -> None:
    """The check can fail: each mutation of a generated prefill role is caught, naming what is wrong."""
    mutate, problem = MUTATIONS[mutation]
    problems = problems_of(mutate(CASES["E/P/D-tcp-prefill"]))
    assert any(problem in p for p in problems), problems
