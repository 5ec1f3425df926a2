"""The size of LiteQ's code: no module over 500 lines, no class over 400, no function
over 60, in liteq/ and liteqd/ (outside the benchmark, liteq/bench.py).

ALLOWLIST names today's oversized pieces with their sizes. A new violation fails,
and so does an allowlisted piece that no longer violates: the list only shrinks.
A listed piece may change size while it stays over its limit.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("liteq", "liteqd")
SKIPPED = frozenset({"liteq/bench.py"})
LIMITS = {"module": 500, "class": 400, "function": 60}

# "kind path[:qualified name]" -> its size (lines) when it was listed.
ALLOWLIST: dict[str, int] = {
    "class liteq/backends/base.py:Backend": 414,
    "function liteq/app_loader.py:load_app": 64,
    "function liteq/scheduler.py:register_schedule": 74,
    "function liteqd/config.py:resolve": 93,
    "function liteqd/ctl.py:run": 63,
    "module liteq/backends/base.py": 503,
}


def _pieces(tree: ast.AST, prefix: str = "") -> list[tuple[str, str, int]]:
    """(kind, qualified name, lines) of every class and function, nested ones too."""
    found: list[tuple[str, str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}{node.name}"
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            size = (node.end_lineno or node.lineno) - start + 1
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            found.append((kind, name, size))
            found.extend(_pieces(node, name + "."))
        else:
            found.extend(_pieces(node, prefix))
    return found


def measure(root: Path, packages: tuple[str, ...]) -> dict[str, int]:
    """Every module, class and function over its limit: "kind path[:name]" -> lines."""
    over: dict[str, int] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in SKIPPED:
                continue
            text = path.read_text(encoding="utf-8")
            lines = len(text.splitlines())
            if lines > LIMITS["module"]:
                over[f"module {rel}"] = lines
            for kind, name, size in _pieces(ast.parse(text)):
                if size > LIMITS[kind]:
                    over[f"{kind} {rel}:{name}"] = size
    return over


def check(over: dict[str, int], allowed: dict[str, int]) -> list[str]:
    """The complaints: new violations, and allowlisted pieces now within their limit."""
    new = [f"{key} has {size} lines (limit {LIMITS[key.split()[0]]}): split it"
           for key, size in sorted(over.items()) if key not in allowed]
    fixed = [f"{key} is within its limit now: remove it from ALLOWLIST"
             for key in sorted(allowed) if key not in over]
    return new + fixed


def test_code_shape() -> None:
    complaints = check(measure(ROOT, PACKAGES), ALLOWLIST)
    assert not complaints, "\n".join(complaints)


def test_checker_sees_new_and_fixed_violations(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(61))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "big.py").write_text(
        f"class C:\n    def method(self):\n{body.replace('    ', '        ')}"
        f"\n@staticmethod\ndef ok():\n    pass\n", encoding="utf-8")
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 501, encoding="utf-8")
    over = measure(tmp_path, ("pkg",))
    assert over == {"function pkg/big.py:C.method": 62, "module pkg/long.py": 501}
    assert check(over, {**over}) == []
    complaints = check(over, {"module pkg/long.py": 501, "function pkg/gone.py:f": 70})
    assert complaints == [
        "function pkg/big.py:C.method has 62 lines (limit 60): split it",
        "function pkg/gone.py:f is within its limit now: remove it from ALLOWLIST"]
