"""Developer sessions: `nox -s tests lint typecheck docs bench`."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
# Reuse session virtualenvs between runs; `nox -R` or `--reuse-venv=no` override this.
nox.options.reuse_venv = "yes"
# `bench` is slow and measures rather than checks, so it runs only when asked for.
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

LINT_PATHS = ["simq", "tests", "bench", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on all cores; extra arguments go to pytest."""
    session.install(".[test]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting without changing files."""
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the simq package under mypy's strict mode."""
    # The test extra brings mypy plus pytest and celery, which simq's plugin and adapters import.
    session.install("-e", ".[test]")
    session.run("mypy", "simq", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning."""
    session.install(".[docs]")
    # Silences Material for MkDocs' end-of-life banner, which is not a build warning.
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks; extra arguments go to `python -m bench`."""
    session.install(".[celery]")
    session.run("python", "-m", "bench", *session.posargs)
