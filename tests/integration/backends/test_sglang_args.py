"""Every engine command line the operator writes for SGLang, in every serving mode and over both transports,
judged by SGLang 0.5.23's own code: its argument parser (with an exact-flag check, since argparse expands
abbreviations), and its server-args resolution as far as a machine without an accelerator gets (the
pipeline up to the device lookup, then the disaggregation and data-parallel steps that judge the operator's
flags). SGLang runs in its own venv (`hack/backend-venv sglang`) through `tests/backends/sglang_check.py`.

Opt-in (marker ``backends``): `make test-backends`, or ``TRIPTYCH_BACKENDS=1``; with it and no venv the
tests fail naming the command that makes it.

The commands come from the operator's builders (`build_children`) on specs made here and on the sglang
examples, never written by hand. Resolution reads each model's config.json: the checker gets stand-ins
(transformers' config class with the published sizes of the model, no weights), laid out as an offline hub
cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from triptych_operator.api import parse_spec
from triptych_operator.builders import build_children
from triptych_operator.naming import Owner
from triptych_operator.settings import OperatorSettings

from tests.backend_cases import serving_specs, uncovered
from tests.conftest import REPO
from tests.integration.backends.conftest import run_checker

pytestmark = [pytest.mark.backends, pytest.mark.slow]

CHECKER = REPO / "tests" / "backends" / "sglang_check.py"
SETTINGS = OperatorSettings.from_env({})
NAME = "d"
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
QWEN25_VL = {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"]}


def _qwen25_vl(*, hidden: int, intermediate: int, heads: int, kv_heads: int, layers: int, vocab: int) -> Any:
    """A Qwen2.5-VL stand-in: transformers' config class with a published checkpoint's text sizes (its
    defaults are the 72B's) and the vision tower's output width to match."""
    text = {"hidden_size": hidden, "intermediate_size": intermediate, "num_attention_heads": heads}
    text |= {"num_key_value_heads": kv_heads, "num_hidden_layers": layers, "vocab_size": vocab}
    config = {"text_config": text, "vision_config": {"out_hidden_size": hidden}}
    return {**QWEN25_VL, "config": config}


# Stand-in configs for the hub ids the specs load (sizes from the models' published config.json).
MODELS: dict[str, Any] = {
    MODEL: _qwen25_vl(hidden=3584, intermediate=18944, heads=28, kv_heads=4, layers=28, vocab=152064),
    "Qwen/Qwen2.5-VL-3B-Instruct": _qwen25_vl(
        hidden=2048, intermediate=11008, heads=16, kv_heads=2, layers=36, vocab=151936
    ),
}
EXAMPLES = sorted((REPO / "examples").glob("sglang-*.yaml"))
# Cases SGLang refuses, with the flag, SGLang's message and the right flag (the operator is fixed elsewhere).
KNOWN_REFUSALS: dict[str, str] = {}


def engine_commands(spec_raw: dict[str, Any], *, rdma_available: bool) -> dict[str, list[str]]:
    """Each worker role's engine command, as the operator's Deployments carry it."""
    spec = parse_spec(spec_raw)
    children = build_children(Owner(NAME, "ns", "u"), spec, SETTINGS, rdma_available=rdma_available)
    commands = {}
    for child in children:
        if child["kind"] != "Deployment":
            continue
        containers = child["spec"]["template"]["spec"]["containers"]
        engine = next((c for c in containers if c["name"] == "engine"), None)
        if engine is not None:
            commands[child["metadata"]["name"].removeprefix(f"{NAME}-")] = engine["command"]
    return commands


def generated_cases() -> dict[str, list[str]]:
    return {
        f"{prefix}-{role}": command
        for prefix, raw, rdma in serving_specs("sglang", MODEL, EXAMPLES)
        for role, command in engine_commands(raw, rdma_available=rdma).items()
    }


CASES = generated_cases()


def _with_tp_abbreviated(command: list[str]) -> list[str]:
    """A wrong command line argparse alone would take: `--tp` is a unique prefix of `--tp-size`."""
    return [("--tp" if token == "--tp-size" else token) for token in command]


def _with_misspelt_flag(command: list[str]) -> list[str]:
    return [("--tp-sise" if token == "--tp-size" else token) for token in command]


def _encoder_with_disaggregation_mode(command: list[str]) -> list[str]:
    """Flags that each parse but that SGLang's resolution refuses together."""
    return [*command, "--disaggregation-mode", "prefill"]


BAD_CASES = {
    "bad-abbreviated-tp": (_with_tp_abbreviated(CASES["E/P/D-tcp-prefill"]), "flags", "--tp (abbreviates"),
    "bad-misspelt-flag": (_with_misspelt_flag(CASES["E/P/D-tcp-prefill"]), "parse", "unrecognized arguments"),
    "bad-encoder-with-pd-mode": (
        _encoder_with_disaggregation_mode(CASES["E/P/D-tcp-encode"]),
        "resolution",
        "Cannot set --encoder-only and --disaggregation-mode",
    ),
}


@pytest.fixture(scope="module")
def verdicts(sglang_python: Path) -> dict[str, dict[str, Any]]:
    """SGLang's verdict on every case, good and bad, from one run of the checker."""
    commands = [{"id": i, "command": c} for i, c in CASES.items()]
    commands += [{"id": i, "command": c} for i, (c, _, _) in BAD_CASES.items()]
    answer = run_checker(sglang_python, CHECKER, {"models": MODELS, "commands": commands})
    return {r["id"]: r for r in answer["results"]}


def test_every_mode_and_example_is_generated() -> None:
    """The cases cover each mode's roles over both transports, and each example's roles."""
    assert uncovered(CASES) == []
    assert [p.stem for p in EXAMPLES] == ["sglang-ep-d-rdma", "sglang-epd-tcp"]
    flags = {token for command in CASES.values() for token in command if token.startswith("--")}
    assert {"--encoder-only", "--language-only", "--disaggregation-mode", "--dp-size"} <= flags


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=KNOWN_REFUSALS[c]))
        if c in KNOWN_REFUSALS
        else c
        for c in CASES
    ],
)
def test_sglang_accepts_the_generated_command(case: str, verdicts: dict[str, dict[str, Any]]) -> None:
    verdict = verdicts[case]
    assert verdict["unknown_flags"] == [], verdict
    assert verdict["abbreviated_flags"] == [], verdict
    assert verdict["accepted"], (
        f"{case}: {' '.join(CASES[case])}\nrefused at {verdict['stage']}: {verdict['message']}"
    )
    # The steps that judge the operator's flags ran; where the pipeline stopped is only for want of a GPU.
    resolution = verdict["resolution"]
    assert resolution["flag_hooks"] == [
        "handle_pd_disaggregation",
        "handle_encoder_disaggregation",
        "handle_data_parallelism",
    ]
    assert resolution["pipeline"] == "complete" or resolution["pipeline"].startswith(
        "stopped at handle_missing_default_values on this machine: RuntimeError: No accelerator"
    )


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_a_wrong_command_line_is_refused(case: str, verdicts: dict[str, dict[str, Any]]) -> None:
    """The check can fail: an abbreviation argparse would expand, a misspelt flag, flags SGLang's
    resolution refuses together."""
    _, stage, message = BAD_CASES[case]
    verdict = verdicts[case]
    assert not verdict["accepted"]
    assert verdict["stage"] == stage, verdict
    assert message in verdict["message"], verdict
