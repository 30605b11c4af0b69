"""The ``xai-feedback`` command: the demo, and the benchmarks of a checkout.

The benchmarks are scripts in the repository's ``benchmarks/`` folder, not part of the installed
package. ``xai-feedback bench NAME`` finds that folder (``$XAI_FEEDBACK_BENCHMARKS``, or a
``benchmarks/`` folder beside the ``pyproject.toml`` of this project in the current directory or
one above it) and runs ``main(argv)`` of ``benchmarks/NAME.py``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from xai_feedback.data.confounds import CONFOUND_FAMILIES
from xai_feedback.demo import DEMO_FIGURE
from xai_feedback.errors import XAIFeedbackError

__all__ = [
    "BENCHMARKS_ENV",
    "BenchmarkNotFoundError",
    "find_benchmarks",
    "list_benchmarks",
    "load_benchmark",
    "main",
]

BENCHMARKS_ENV = "XAI_FEEDBACK_BENCHMARKS"
"""Environment variable naming the benchmarks folder (overrides the search from the cwd)."""

_PROJECT = re.compile(r"""^\s*name\s*=\s*["']xai[-_]feedback["']""", re.MULTILINE)

NOT_FOUND = (
    "xai-feedback bench: cannot find the benchmarks. They are not part of the installed package:"
    " they are the scripts in the `benchmarks/` folder of the xai-feedback repository.\n"
    "Run this command inside a checkout of the repository (or below it), or set"
    f" {BENCHMARKS_ENV}=/path/to/xai-feedback/benchmarks."
)


class BenchmarkNotFoundError(XAIFeedbackError, FileNotFoundError):
    """No benchmarks folder was found, or it holds no benchmark of that name."""


def find_benchmarks(start: str | Path | None = None) -> Path | None:
    r"""The benchmarks folder of a checkout, or ``None``.

    ``$XAI_FEEDBACK_BENCHMARKS`` wins when set (``None`` if it is not a folder); otherwise the
    first of ``start`` (default: the current directory) and its parents holding both a
    ``benchmarks/`` folder and a ``pyproject.toml`` whose project is ``xai-feedback``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = Path(tmp)
        ...     (root / "benchmarks").mkdir()
        ...     (root / "src").mkdir()
        ...     _ = (root / "pyproject.toml").write_text('[project]\nname = "xai-feedback"\n')
        ...     found = find_benchmarks(root / "src")
        ...     found == (root / "benchmarks").resolve() or BENCHMARKS_ENV in os.environ
        True
    """
    env = os.environ.get(BENCHMARKS_ENV)
    if env:
        folder = Path(env).expanduser()
        return folder if folder.is_dir() else None
    here = Path.cwd() if start is None else Path(start)
    for root in (here.resolve(), *here.resolve().parents):
        pyproject = root / "pyproject.toml"
        if (
            (root / "benchmarks").is_dir()
            and pyproject.is_file()
            and _PROJECT.search(pyproject.read_text(encoding="utf-8", errors="replace"))
        ):
            return root / "benchmarks"
    return None


def _defines_main(path: Path) -> bool:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main"
        for node in tree.body
    )


def list_benchmarks(folder: str | Path) -> dict[str, Path]:
    r"""Benchmark name -> script: every ``folder/*.py`` not starting with ``_`` that has ``main``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "decoy.py").write_text("def main(argv):\n    return 0\n")
        ...     _ = (Path(tmp) / "_common.py").write_text("def main(argv):\n    return 0\n")
        ...     _ = (Path(tmp) / "notes.py").write_text("x = 1\n")
        ...     sorted(list_benchmarks(tmp))
        ['decoy']
    """
    return {
        path.stem: path
        for path in sorted(Path(folder).glob("*.py"))
        if not path.name.startswith("_") and _defines_main(path)
    }


def load_benchmark(name: str, folder: str | Path | None = None) -> ModuleType:
    """Import ``benchmarks/NAME.py`` by its path and return the module.

    The folder goes first on ``sys.path`` (the scripts import their shared ``_common`` helper,
    and worker processes started with ``spawn`` import the benchmark again by its name).

    Raises:
        BenchmarkNotFoundError: No benchmarks folder was found (the message says where they
            are), or it has no benchmark ``name`` (the message lists those it has).
        ImportError: Another module named ``name`` is already imported.
    """
    found = find_benchmarks() if folder is None else Path(folder)
    if found is None:
        raise BenchmarkNotFoundError(NOT_FOUND)
    scripts = list_benchmarks(found)
    if name not in scripts:
        raise BenchmarkNotFoundError(
            f"`name` must be one of the benchmarks {sorted(scripts)} in {found}, got {name!r}"
        )
    path = scripts[name].resolve()
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        raise ImportError(f"cannot load benchmark {path}: a module {name!r} is already imported")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise FileNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _demo(args: argparse.Namespace) -> int:
    from xai_feedback.demo import ConfoundSetup, demo

    setup = ConfoundSetup(family=args.family, size=args.size, epochs=args.epochs, width=args.width)
    demo(
        setup,
        seed=args.seed,
        vanilla_only=args.vanilla_only,
        threads=args.threads,
        figure=None if args.no_figure else args.figure,
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    folder = find_benchmarks()
    if folder is None:
        print(NOT_FOUND, file=sys.stderr)
        return 2
    scripts = list_benchmarks(folder)
    if args.list or args.name is None:
        for name, path in scripts.items():
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            print(f"{name:12s} {doc.splitlines()[0] if doc else ''}")
        return 0 if args.list else 2
    if args.name not in scripts:
        print(
            f"unknown benchmark {args.name!r}; choose from {sorted(scripts)} (in {folder})",
            file=sys.stderr,
        )
        return 2
    return int(load_benchmark(args.name, folder).main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``xai-feedback`` command."""
    parser = argparse.ArgumentParser(
        prog="xai-feedback", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show a CNN learning a shortcut on confounded digits")
    demo.add_argument("--family", default="frame", choices=CONFOUND_FAMILIES)
    demo.add_argument("--size", type=int, default=None, help="frame width / swatch side")
    demo.add_argument("--epochs", type=int, default=12)
    demo.add_argument("--width", type=int, default=16)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    demo.add_argument(
        "--vanilla-only",
        action="store_true",
        help="plain cross-entropy only (skip the CAM-penalty and counterexample runs)",
    )
    demo.add_argument("--figure", default=DEMO_FIGURE, help="where to save the maps (PNG)")
    demo.add_argument("--no-figure", action="store_true", help="do not save the maps")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser(
        "bench",
        help="run a benchmark of a checkout (the repository's benchmarks/ folder)",
        description=f"Run benchmarks/NAME.py of a checkout (or of ${BENCHMARKS_ENV}).",
    )
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument("name", nargs="?", help="benchmark name (see --list)")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the benchmark")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xai-feedback`` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
