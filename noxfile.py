"""Developer sessions: `nox -s tests lint typecheck docs bench`."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
# Reuse session virtualenvs between runs; `nox -R` or `--reuse-venv=no` override this.
nox.options.reuse_venv = "yes"
# `bench` is slow and measures rather than checks, so it runs only when asked for.
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

LINT_PATHS = ["simq", "conformance", "tests", "bench", "examples", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on all cores; extra arguments go to pytest."""
    session.install(".[test]")
    session.run("pytest", "-n", "auto", *session.posargs)


@nox.session(name="tests-celery55")
def tests_celery55(session: nox.Session) -> None:
    """The in-process tests on Celery 5.5, the oldest release simq supports."""
    session.install("-e", ".[test]", "celery[redis]==5.5.3")
    session.run(
        "pytest",
        "-n",
        "auto",
        "-m",
        "not services",
        "tests/unit",
        "tests/faults",
        "tests/determinism",
        "tests/properties",
        *session.posargs,
    )


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
    # The docs' complete non-kombu adapter, checked against simq_conformance's types.
    session.run("mypy", "examples/tinyq/tinyq", env={"MYPYPATH": "conformance:examples/tinyq"})


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning."""
    session.install(".[docs]")
    # Silences Material for MkDocs' end-of-life banner, which is not a build warning.
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks; extra arguments go to `python -m bench`."""
    session.install(".[test]")
    session.run("python", "-m", "bench", *session.posargs)


#: The long conformance runs: generated workloads per adapter. Real brokers take seconds
#: a run; CI runs the same suite with a few examples (tests/conformance/).
CONFORMANCE_EXAMPLES = {
    "simq": 1000,
    "celery-redis": 60,
    "celery-rabbitmq": 60,
    "celery-memory": 60,
}
#: Real adapters the simulator is run beside, for the differential check.
CONFORMANCE_DIFFERENTIAL = ("celery-redis", "celery-rabbitmq")


def _conformance_session(adapter: str, examples: int) -> None:
    adapters = f"simq,{adapter}" if adapter in CONFORMANCE_DIFFERENTIAL else adapter

    @nox.session(name=f"conformance-{adapter}")
    def conformance(session: nox.Session) -> None:
        session.install("-e", ".[test]")
        session.run(
            "pytest",
            f"--conformance={adapters}",
            f"--conformance-examples={examples}",
            f"--conformance-report=conformance-report/{adapter}",
            *session.posargs,
        )

    conformance.__doc__ = (
        f"Certify {adapter} against Celery's guarantees, {examples} workloads"
        + (" (and the differential check against simq)" if adapter != adapters else "")
        + "; extra arguments go to pytest."
    )


for _adapter, _examples in CONFORMANCE_EXAMPLES.items():
    _conformance_session(_adapter, _examples)


#: Third-party kombu transports certified by URL (``--conformance=celery``): session
#: name -> (URL, generated workloads).
CONFORMANCE_URLS = {
    "filesystem": ("filesystem://", 60),
    "sqla-sqlite": ("sqla+sqlite:///conformance-report/sqla-broker.db", 60),
}


def _conformance_url_session(name: str, url: str, examples: int) -> None:
    @nox.session(name=f"conformance-{name}")
    def conformance(session: nox.Session) -> None:
        session.install("-e", ".[test]")
        session.run("mkdir", "-p", "conformance-report", external=True)
        session.run(
            "pytest",
            "--conformance=celery",
            f"--conformance-url={url}",
            f"--conformance-examples={examples}",
            f"--conformance-report=conformance-report/{name}",
            *session.posargs,
        )

    conformance.__doc__ = (
        f"Certify kombu's {url} transport by URL with real Celery workers, {examples} "
        "workloads; extra arguments go to pytest (e.g. --conformance-transport-options=JSON)."
    )


for _name, (_url, _examples) in CONFORMANCE_URLS.items():
    _conformance_url_session(_name, _url, _examples)


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation testing of the conformance suite: every planted bug, on the simulator and
    on real Redis, must be killed; writes the kill matrix into docs/mutants.md."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "simq_conformance.mutants",
        "--adapters",
        "simq,celery-redis",
        "--matrix",
        "docs/mutants.md",
        *session.posargs,
    )
