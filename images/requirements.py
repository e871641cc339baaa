"""Print the requirements of the given extras of pyproject.toml, one per line (stdlib only).

Image builds install dependencies from this list in a layer of their own, before the source is copied, so a
change to the code does not re-download the ML stack.
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extras = project.get("optional-dependencies", {})
seen: list[str] = list(project.get("dependencies", []))
for extra in sys.argv[2:]:
    seen += [req for req in extras[extra] if req not in seen]
print("\n".join(seen))
