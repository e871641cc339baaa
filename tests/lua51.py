"""Running an Argo CD health check (a Lua script) under a real Lua 5.1 interpreter (Debian's ``lua5.1``), the
language version Argo CD's gopher-lua implements, on an object given as JSON (a dict)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

LUA = "lua5.1"


def available() -> bool:
    return shutil.which(LUA) is not None


def literal(value: Any) -> str:
    """A JSON value as a Lua 5.1 expression, as Argo CD hands an object to the script: objects become tables
    with string keys, arrays tables with 1-based indices, null nil."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A decimal escape for every byte outside printable ASCII, and for the quote and the backslash.
        raw = value.encode()
        return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03d}" for b in raw) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{literal(str(k))}] = {literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    """The script's (status, message) for ``obj``: ``obj`` a global, as in Argo CD, and the script the body
    of a function (its ``return`` statements are at its top level)."""
    program = (
        f"obj = {literal(obj)}\n"
        f"local function health()\n{script.read_text()}\nend\n"
        'local hs = health()\nio.write(hs.status, "\\n", hs.message or "")\n'
    )
    done = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{LUA}: {done.stderr.strip()}")
    status, _, message = done.stdout.partition("\n")
    return status, message
