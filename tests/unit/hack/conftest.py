"""hack/lib is not an installed package: its modules are imported as hack/ imports them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "hack" / "lib"))
