"""Runs SGLang's own argument parser and server-args resolution over engine command lines.

Executed by the python of the separate SGLang venv (`hack/backend-venv sglang`), never imported by the
project's tests: `tests/integration/backends/test_sglang_args.py` sends it JSON on stdin and reads JSON back.

Input: ``{"models": {MODEL_PATH: {"model_type": ..., "architectures": [...], "config": {...}}},
"commands": [{"id": ..., "command": ["python3", "-m", "sglang.launch_server", ...]}]}``. ``models`` are
stand-in ``config.json`` files (no weights) laid out as a Hugging Face hub cache, offline, for the hub ids the
commands load: resolution reads the model's config.

Output: ``{"sglang": VERSION, "results": [{"id", "accepted", "stage", "message", "unknown_flags",
"abbreviated_flags", "resolution"}]}`` where ``stage`` is the first check that refused (``program``,
``parse``, ``flags``, ``resolution``), or ``None`` when accepted. The checks, in order:

1. ``program``: the command is ``python3 -m sglang.launch_server``, and that module exists in this SGLang.
2. ``parse``: ``sglang.srt.server_args.prepare_server_args(argv)``, what ``sglang.launch_server`` calls on
   ``sys.argv[1:]`` (argparse with ``allow_abbrev``, then ``ServerArgs.from_cli_args``); a refusal carries
   argparse's message.
3. ``flags``: every ``--flag`` is exactly one of that parser's option strings; a unique prefix, which argparse
   silently expands, is refused here as abbreviated.
4. ``resolution``: ``ServerArgs.resolve_once()``, SGLang's whole resolution pipeline. Without an accelerator
   it stops at the step that asks for the device (``handle_missing_default_values``): every step before it
   has run for real, and where it stopped is reported in ``resolution.pipeline``, not as a refusal. Then the
   resolution steps that judge the flags the operator writes (``handle_pd_disaggregation``,
   ``handle_encoder_disaggregation``, ``handle_data_parallelism``) run on a fresh record through SGLang's own
   ``run_hook``, prepared the way ``run_resolution_pipeline`` prepares it; any error they raise refuses.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

PROGRAM = ["python3", "-m", "sglang.launch_server"]
# Errors that say what this machine lacks (no accelerator, no CUDA driver for the kernels), not what the
# command asked for.
ENVIRONMENT_ERRORS = (ImportError, OSError)
NO_ACCELERATOR = "No accelerator"
FLAG_HOOKS = (
    ("sglang.srt.arg_groups.pd_disaggregation_hook", "handle_pd_disaggregation"),
    ("sglang.srt.arg_groups.pd_disaggregation_hook", "handle_encoder_disaggregation"),
    ("sglang.srt.arg_groups.parallel_hook", "handle_data_parallelism"),
)
SNAPSHOT = "0" * 40


def lay_out_models(cache: Path, models: dict[str, Any]) -> None:
    """A hub cache with one stand-in config.json per model id (what `HF_HUB_OFFLINE` reads)."""
    auto_config = importlib.import_module("transformers").AutoConfig
    for repo_id, model in models.items():
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / SNAPSHOT
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(SNAPSHOT)
        config = auto_config.for_model(model["model_type"], **model.get("config", {}))
        config.architectures = list(model["architectures"])
        config.save_pretrained(snapshot)


def option_strings(parser: Any) -> set[str]:
    return set(parser._option_string_actions)


def classify_flags(args: list[str], known: set[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """(unknown, abbreviated) among the `--flag` tokens of `args` (`--flag=value` counts as `--flag`)."""
    unknown: list[str] = []
    abbreviated: list[dict[str, Any]] = []
    for token in args:
        if not token.startswith("--") or token == "--":
            continue
        flag = token.split("=", 1)[0]
        if flag in known:
            continue
        expansions = sorted(option for option in known if option.startswith(flag))
        if expansions:
            abbreviated.append({"flag": flag, "expands_to": expansions})
        else:
            unknown.append(flag)
    return unknown, abbreviated


def failed_step(tb: TracebackType | None) -> str | None:
    """The resolution step (`run_hook`'s built-in) that was running when an error left the pipeline."""
    step = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "run_hook":
            builtin = tb.tb_frame.f_locals.get("builtin")
            step = getattr(builtin, "__name__", None)
        tb = tb.tb_next
    return step


def is_environment_error(error: BaseException) -> bool:
    return isinstance(error, ENVIRONMENT_ERRORS) or (
        isinstance(error, RuntimeError) and str(error).startswith(NO_ACCELERATOR)
    )


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def parse(server_args_module: Any, args: list[str]) -> tuple[Any, str | None]:
    """SGLang's own parse of `args`: (record, None), or (None, argparse's message)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return server_args_module.prepare_server_args(args), None
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        return None, lines[-1] if lines else "argparse exited"


def resolve(server_args_module: Any, args: list[str]) -> tuple[dict[str, Any], str | None]:
    """(what resolution did, the refusal or None)."""
    record, _ = parse(server_args_module, args)
    report: dict[str, Any] = {"pipeline": "complete", "flag_hooks": []}
    try:
        record.resolve_once()
    except Exception as error:
        step = failed_step(error.__traceback__)
        if not is_environment_error(error):
            return report, f"{step}: {describe(error)}"
        report["pipeline"] = f"stopped at {step} on this machine: {describe(error)}"

    record, _ = parse(server_args_module, args)
    arg_utils = importlib.import_module("sglang.srt.arg_groups.arg_utils")
    run_hook = importlib.import_module("sglang.srt.arg_groups.resolution_hooks").run_hook
    record._raw_input = {
        field.name: getattr(record, field.name) for field in arg_utils.record_fields(type(record))
    }
    record._resolved_overrides = []
    record._input_frozen = True
    for module, name in FLAG_HOOKS:
        try:
            run_hook(getattr(importlib.import_module(module), name), record)
        except Exception as error:
            return report, f"{name}: {describe(error)}"
        report["flag_hooks"].append(name)
    return report, None


def check(server_args_module: Any, known: set[str], item: dict[str, Any]) -> dict[str, Any]:
    command: list[str] = item["command"]
    args = command[len(PROGRAM) :]
    unknown, abbreviated = classify_flags(args, known)
    result: dict[str, Any] = {
        "id": item["id"],
        "accepted": False,
        "stage": None,
        "message": None,
        "unknown_flags": unknown,
        "abbreviated_flags": abbreviated,
        "resolution": None,
    }

    def refuse(stage: str, message: str) -> dict[str, Any]:
        result.update(stage=stage, message=message)
        return result

    if command[: len(PROGRAM)] != PROGRAM or importlib.util.find_spec(PROGRAM[2]) is None:
        return refuse("program", f"not `{' '.join(PROGRAM)}`: {command[: len(PROGRAM)]}")
    record, message = parse(server_args_module, args)
    if record is None:
        return refuse("parse", message or "")
    if unknown or abbreviated:
        names = unknown + [f"{a['flag']} (abbreviates {', '.join(a['expands_to'])})" for a in abbreviated]
        return refuse("flags", "not exact option strings: " + ", ".join(names))
    report, refusal = resolve(server_args_module, args)
    result["resolution"] = report
    if refusal is not None:
        return refuse("resolution", refusal)
    result["accepted"] = True
    return result


def main() -> int:
    request = json.load(sys.stdin)
    out, sys.stdout = sys.stdout, sys.stderr  # SGLang's own prints must not corrupt the answer
    with tempfile.TemporaryDirectory(prefix="sglang-check-") as cache:
        # Before transformers or huggingface_hub are imported: they read these once.
        os.environ["HF_HUB_CACHE"] = cache
        os.environ["HF_HUB_OFFLINE"] = "1"
        lay_out_models(Path(cache), request.get("models", {}))
        server_args_module = importlib.import_module("sglang.srt.server_args")
        parser = importlib.import_module("argparse").ArgumentParser(prog="sglang serve")
        server_args_module.ServerArgs.add_cli_args(parser)
        known = option_strings(parser)
        results = [check(server_args_module, known, item) for item in request["commands"]]
    version = importlib.import_module("importlib.metadata").version("sglang")
    json.dump({"sglang": version, "results": results}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
