"""The UDF's functions are listed once (GMU_FUNCTIONS in udf/src/gearman_udf.h): the install and
uninstall scripts and the symbols the library exports must name exactly those."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT, UDF_SO

SQL = ROOT / "workerhost" / "sql"


def listed() -> dict[str, str]:
    """name -> STRING or AGGREGATE, from the list in the C source."""
    source = (ROOT / "udf" / "src" / "gearman_udf.h").read_text()
    body = source.split("#define GMU_FUNCTIONS(STRING, AGGREGATE)", 1)[1].split("\n\n", 1)[0]
    found = dict((name, kind) for kind, name in re.findall(r"(STRING|AGGREGATE)\((\w+)\)", body))
    assert found, "no functions listed"
    return found


def test_install_sql_creates_every_listed_function_with_its_kind() -> None:
    text = (SQL / "install.sql").read_text()
    created = {name: ("AGGREGATE" if aggregate else "STRING", returns) for aggregate, name, returns
               in re.findall(r"^CREATE (AGGREGATE )?FUNCTION (\w+) RETURNS (\w+) SONAME "
                             r"'gearman_udf\.so';", text, re.MULTILINE)}
    dropped_first = re.findall(r"^DROP FUNCTION IF EXISTS (\w+);", text, re.MULTILINE)
    assert {name: kind for name, (kind, _) in created.items()} == listed()
    assert all(returns == ("INTEGER" if kind == "AGGREGATE" else "STRING")
               for kind, returns in created.values())
    assert sorted(dropped_first) == sorted(listed()), "re-runnable: each dropped first"


def test_uninstall_sql_drops_every_listed_function() -> None:
    text = (SQL / "uninstall.sql").read_text()
    assert sorted(re.findall(r"^DROP FUNCTION IF EXISTS (\w+);", text, re.MULTILINE)) \
        == sorted(listed())


def test_the_library_exports_the_listed_entry_points_and_nothing_else() -> None:
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(UDF_SO)], check=True,
                             capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    wanted = set()
    for name, kind in listed().items():
        wanted |= {name, f"{name}_init", f"{name}_deinit"}
        if kind == "AGGREGATE":
            wanted |= {f"{name}_clear", f"{name}_add"}
    assert exported == wanted
