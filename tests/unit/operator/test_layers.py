"""Every module of the operator and of the workers sits in an import-linter layer (`.importlinter`), so no
module can slip between the layers and import in both directions unnoticed."""

from __future__ import annotations

import configparser
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest
import triptych_operator
import triptych_workers

ROOT = Path(__file__).resolve().parents[3]


def _layered(contract: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    lines = config[f"importlinter:contract:{contract}"]["layers"].split("\n")
    return {name.strip() for line in lines for name in line.split("|") if name.strip()}


@pytest.mark.parametrize(
    ("package", "contract"), [(triptych_operator, "operator-layers"), (triptych_workers, "worker-layers")]
)
def test_every_top_level_module_is_in_a_layer(package: ModuleType, contract: str) -> None:
    modules = {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
    assert modules - _layered(contract) == set()
