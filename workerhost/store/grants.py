"""What the server's grant tables say, read the way the server reads them."""

from __future__ import annotations

import re


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a GRANT's database pattern (`shop\\_%`, `shop%`) covers the database `name`:
    `%` any run of characters, `_` any one, a backslash escapes the next."""
    regex = "".join(".*" if part == "%" else "." if part == "_" else re.escape(part[-1])
                    for part in re.findall(r"\\.|%|_|[^\\%_]", pattern))
    return re.fullmatch(regex, name) is not None
