"""Gather the docstrings of the Python standard library: modules, classes, functions, methods.

Run as a script in a child process (`corpus.gather` does), so that importing some 600 modules
touches neither the caller's state nor its stdout; it imports nothing but the standard library:

    python -I docstrings.py OUT.json      writes [[module, qualified name, raw docstring], ...]

Deterministic: modules in sorted order (`sys.stdlib_module_names` and their public submodules), their
members in sorted order; an object is listed once, under the first public module that defines or
re-exports it from a private implementation module (`functools.reduce` lives in `_functools`).
"""

import importlib
import inspect
import io
import json
import pkgutil
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout

# modules that act when imported (open a browser, print, start a GUI), and test/demo packages
SKIPPED = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
    "pydoc_data", "xxlimited", "xxlimited_35", "xxsubtype", "__phello__", "__hello__", "distutils",
}


def public(name: str) -> bool:
    """Not private (`_x`, `__main__`), not a test module, not skipped."""
    parts = name.split(".")
    return (parts[0] not in SKIPPED
            and not any(p.startswith("_") or p.startswith("test") or p in ("tests", "idle_test") for p in parts))


def quiet_import(name: str):
    """The module, or None if it fails to import (platform modules, missing C libraries)."""
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - ImportError, OSError, SystemExit from odd modules
        return None


def module_names() -> list[str]:
    """Public standard-library modules and their public submodules, sorted."""
    names = []
    pending = sorted(n for n in sys.stdlib_module_names if public(n))
    while pending:  # importing a package only to list its submodules; private/test ones never
        name = pending.pop()
        module = quiet_import(name)
        if module is None:
            continue
        names.append(name)
        for info in pkgutil.iter_modules(getattr(module, "__path__", None) or [], prefix=name + "."):
            if public(info.name):
                pending.append(info.name)
    return sorted(names)


def owner_ok(obj, module_name: str) -> bool:
    """Defined in this module, or in a private implementation module it re-exports."""
    owner = getattr(obj, "__module__", None)
    return isinstance(owner, str) and (owner == module_name or owner.split(".")[-1].startswith("_"))


def documented(obj) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None


def members(module) -> list[tuple[str, object]]:
    """(qualified name, object) of the module, its classes, functions, and the classes' own methods."""
    out = [(module.__name__, module)]
    try:
        names = sorted(vars(module))
    except TypeError:
        return out
    for name in names:
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not owner_ok(obj, module.__name__):
            continue
        out.append((f"{module.__name__}.{name}", obj))
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if attr.startswith("_") and attr != "__init__":
                    continue
                value = vars(obj)[attr]
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if inspect.isroutine(value) or isinstance(value, property):
                    out.append((f"{module.__name__}.{name}.{attr}", value))
    return out


def gather() -> list[list[str]]:
    seen, rows = set(), []
    for name in module_names():
        module = quiet_import(name)
        if module is None:
            continue
        for qualified, obj in members(module):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if (doc := documented(obj)) is not None:
                rows.append([name, qualified, doc])
    return rows


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # deprecated modules warn when their members are touched
    rows = gather()
    with open(sys.argv[1], "w", encoding="utf-8") as file:
        json.dump(rows, file, ensure_ascii=False)
