"""The conformance suite's pytest plugin: ``pytest --conformance=ADAPTER``.

Registered through the ``pytest11`` entry point ``simq_conformance``. Without
``--conformance`` it does nothing: the suite is not collected and loading it patches
nothing. With it, the suite (``simq_conformance/suite/``) is collected even when no test
path is given, one test per guarantee and adapter, plus a differential test per real
adapter when the simulator is selected too::

    pytest --conformance=simq
    pytest --conformance=simq,celery-redis --conformance-report=out/conformance
    pytest --conformance=my_package.conformance:MyAdapter --conformance-url=amqp://...
    pytest --conformance=celery --conformance-url=filesystem://
    pytest --conformance=celery --conformance-url=sqla+sqlite:///conformance.db \
        --conformance-transport-options='{"polling_interval": 0.2}'
    pytest --conformance=simq,celery-redis --conformance-mutant=eta-ignored

Skips name the adapter, the capability and the reason. Under ``CI=true`` an adapter
whose broker is unreachable fails instead of skipping, and ``--conformance-strict`` is
on unless ``--no-conformance-strict`` is given.

The suite needs Hypothesis (the ``test`` extra): without it ``--conformance`` is a usage
error that says so, and without ``--conformance`` nothing is imported.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from simq_conformance.session import ConformanceSession

__all__ = [
    "BASELINE_OPTION",
    "CONFORMANCE_OPTION",
    "EXAMPLES_OPTION",
    "MUTANT_OPTION",
    "REPLAY_OPTION",
    "REPORT_OPTION",
    "SEED_OPTION",
    "STRICT_OPTION",
    "SUITE",
    "TRANSPORT_OPTIONS_OPTION",
    "URL_OPTION",
    "reproduce_options",
]

CONFORMANCE_OPTION = "--conformance"
URL_OPTION = "--conformance-url"
REPORT_OPTION = "--conformance-report"
EXAMPLES_OPTION = "--conformance-examples"
SEED_OPTION = "--conformance-seed"
TRANSPORT_OPTIONS_OPTION = "--conformance-transport-options"
STRICT_OPTION = "--conformance-strict"
MUTANT_OPTION = "--conformance-mutant"
BASELINE_OPTION = "--conformance-baseline"
REPLAY_OPTION = "--conformance-replay"

#: The suite's test module, collected when ``--conformance`` is given.
SUITE = Path(__file__).resolve().parent / "suite" / "test_guarantees.py"

#: Examples per adapter without ``--conformance-examples``: a simulated run takes
#: milliseconds, a real one seconds.
SIMULATED_EXAMPLES = 30
REAL_EXAMPLES = 5

_STATE: pytest.StashKey[ConformanceSession] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("simq", "simq deterministic simulation")
    group.addoption(
        CONFORMANCE_OPTION,
        action="append",
        default=[],
        dest="simq_conformance",
        metavar="ADAPTER",
        help="run the conformance suite against ADAPTER (repeatable or comma-separated): "
        "simq, simq-redis, celery-redis, celery-rabbitmq, celery-memory, an entry "
        "point of 'simq_conformance.adapters', or module:object",
    )
    group.addoption(
        URL_OPTION,
        dest="simq_conformance_url",
        default=None,
        metavar="URL",
        help="broker URL for the conformance adapters that take one; with "
        "--conformance=celery, any kombu transport (filesystem://, sqla+sqlite:///PATH, ...)",
    )
    group.addoption(
        TRANSPORT_OPTIONS_OPTION,
        dest="simq_conformance_transport_options",
        default=None,
        metavar="JSON",
        help="kombu transport options (a JSON object) for the conformance adapters that "
        "take them, e.g. '{\"polling_interval\": 0.2}'",
    )
    group.addoption(
        STRICT_OPTION,
        dest="simq_conformance_strict",
        action="store_true",
        default=None,
        help="a guarantee no run exercised fails (default: on under CI=true)",
    )
    group.addoption(
        "--no-conformance-strict",
        dest="simq_conformance_strict",
        action="store_false",
        help="a guarantee no run exercised is reported, not failed (even under CI=true)",
    )
    group.addoption(
        REPORT_OPTION,
        dest="simq_conformance_report",
        default=None,
        metavar="PATH",
        help="write the conformance report to PATH.json and PATH.md",
    )
    group.addoption(
        EXAMPLES_OPTION,
        dest="simq_conformance_examples",
        type=int,
        default=None,
        metavar="N",
        help=f"generated workloads per adapter (default "
        f"{SIMULATED_EXAMPLES} simulated, {REAL_EXAMPLES} on a real broker)",
    )
    group.addoption(
        REPLAY_OPTION,
        dest="simq_conformance_replay",
        default=None,
        metavar="FILE",
        help="run exactly the stored workload in FILE (a failure's 'replay:' line names "
        "it) once per adapter, instead of a campaign",
    )
    group.addoption(
        BASELINE_OPTION,
        dest="simq_conformance_baseline",
        default=None,
        metavar="ADAPTERS",
        help="run each failing workload of a real adapter again on these (comma-separated, "
        "e.g. celery-redis,celery-rabbitmq): a failure they all show is labelled Celery's "
        "behaviour (an xfail), not the transport's",
    )
    group.addoption(
        MUTANT_OPTION,
        dest="simq_conformance_mutant",
        default=None,
        metavar="NAME",
        help="plant a bug of simq_conformance.mutants in the deployments under test "
        "(the suite must fail: mutation testing of the suite itself)",
    )
    group.addoption(
        SEED_OPTION,
        dest="simq_conformance_seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of workload generation (default 0)",
    )


def selected(config: pytest.Config) -> list[str]:
    """The adapter names given to ``--conformance``, in order, without repeats."""
    names: list[str] = []
    for value in config.getoption("simq_conformance") or ():
        for name in str(value).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    names = selected(config)
    if not names:
        return
    _require_hypothesis()
    from simq_conformance.registry import UnknownAdapter, resolve
    from simq_conformance.session import ConformanceSession

    if config.getoption("numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError(
            f"{CONFORMANCE_OPTION} runs in one process (each adapter's workloads run once "
            "and every guarantee test reads them); drop -n/--numprocesses"
        )
    url = config.getoption("simq_conformance_url")
    options = transport_options(config)
    try:
        adapters = {name: resolve(name, url, options) for name in names}
    except (UnknownAdapter, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    baselines = {}
    for base in str(config.getoption("simq_conformance_baseline") or "").split(","):
        base = base.strip()
        if base and base not in baselines:
            try:
                baselines[base] = resolve(base, None, None)
            except (UnknownAdapter, ValueError) as exc:
                raise pytest.UsageError(f"{BASELINE_OPTION}: {exc}") from None
    replay = _replay(config.getoption("simq_conformance_replay"))
    mutant = config.getoption("simq_conformance_mutant")
    if mutant:
        for name, adapter in adapters.items():
            _plant(name, adapter, mutant)
    again = reproduce_options(url, options, mutant)
    if again:
        for adapter in adapters.values():
            _carry(adapter, again)
    examples = config.getoption("simq_conformance_examples")
    if examples is not None and examples < 1:
        raise pytest.UsageError(f"{EXAMPLES_OPTION} must be at least 1, got {examples}")
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    strict = config.getoption("simq_conformance_strict")
    config.stash[_STATE] = ConformanceSession(
        adapters,
        examples=examples,
        seed=config.getoption("simq_conformance_seed"),
        ci=ci,
        defaults=(SIMULATED_EXAMPLES, REAL_EXAMPLES),
        strict=ci if strict is None else bool(strict),
        baselines=baselines,
        replay=replay,
    )
    suite = str(SUITE)
    # Collect the suite even when no path was named (testpaths would collect the
    # project's own tests instead); with named paths, collect it as well.
    if config.args_source is not pytest.Config.ArgsSource.ARGS:
        config.args[:] = [suite]
    elif not any(
        Path(a.split("::")[0]).resolve() == SUITE
        for a in config.args
        if Path(a.split("::")[0]).exists()
    ):
        config.args.append(suite)


def _require_hypothesis() -> None:
    """A one-line usage error when the suite's own dependency is missing."""
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise pytest.UsageError(
            f"{CONFORMANCE_OPTION} needs Hypothesis, which is not installed: "
            "pip install 'celery-simq[test]' (or pip install hypothesis)"
        ) from None


def transport_options(config: pytest.Config) -> dict[str, Any] | None:
    """``--conformance-transport-options`` as a dict (None when not given).

    Raises:
        pytest.UsageError: the value is not a JSON object.
    """
    raw = config.getoption("simq_conformance_transport_options")
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise pytest.UsageError(
            f"{TRANSPORT_OPTIONS_OPTION} must be a JSON object, e.g. "
            f"'{{\"polling_interval\": 0.2}}': {exc} in {raw!r}"
        ) from None
    if not isinstance(value, dict):
        raise pytest.UsageError(
            f"{TRANSPORT_OPTIONS_OPTION} must be a JSON object, got {type(value).__name__}: {raw!r}"
        )
    return value


def reproduce_options(
    url: str | None, options: dict[str, Any] | None, mutant: str | None = None
) -> tuple[str, ...]:
    """The options that select the same deployment again, shell-quoted, for the
    ``reproduce:`` line of a failure."""
    out = []
    if url:
        out.append(shlex.quote(f"{URL_OPTION}={url}"))
    if options:
        text = json.dumps(options, sort_keys=True, separators=(",", ":"))
        out.append(shlex.quote(f"{TRANSPORT_OPTIONS_OPTION}={text}"))
    if mutant:
        out.append(shlex.quote(f"{MUTANT_OPTION}={mutant}"))
    return tuple(out)


def _replay(path: str | None) -> Any:
    """The workload stored in ``path`` (``--conformance-replay``), or None.

    Raises:
        pytest.UsageError: the file cannot be read or holds no stored workload.
    """
    if not path:
        return None
    from simq_conformance.adapter import Workload

    try:
        return Workload.from_json(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(
            f"{REPLAY_OPTION}={path}: {exc}; give the file a failure's 'replay:' line "
            "names (a workload stored by Workload.to_json)"
        ) from None


def _plant(name: str, adapter: Any, mutant: str) -> None:
    """Give ``adapter`` the mutant to plant (``adapter.mutant``), if it can be planted there.

    Raises:
        pytest.UsageError: an unknown mutant, one with no patches for the adapter's
            deployment, or an adapter that takes no mutant.
    """
    from simq_conformance.mutants import UnknownMutant, get

    if adapter.capabilities.simulated:
        where = "simq"
    elif getattr(adapter, "in_process", False) or not hasattr(adapter, "driver"):
        where = ""
    else:
        where = str(adapter.driver)
    if not where or not hasattr(adapter, "mutant"):
        raise pytest.UsageError(
            f"{MUTANT_OPTION}={mutant}: adapter {name!r} takes no mutant (mutants are "
            "planted in simq's simulator and in real Celery worker processes)"
        )
    try:
        get(mutant, where)
    except UnknownMutant as exc:
        raise pytest.UsageError(f"{MUTANT_OPTION}: adapter {name!r}: {exc}") from None
    adapter.mutant = mutant


def _carry(adapter: Any, options: tuple[str, ...]) -> None:
    """Put ``options`` in the adapter's capabilities (``Capabilities.reproduce``)."""
    import attrs

    caps = adapter.capabilities
    try:
        adapter.capabilities = attrs.evolve(caps, reproduce=(*caps.reproduce, *options))
    except (AttributeError, TypeError):  # a read-only attribute: the line stays shorter
        pass


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without ``--conformance`` the suite is never collected."""
    if _STATE not in config.stash and collection_path.resolve() in (SUITE, SUITE.parent):
        return True
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return None
    if state.replay is not None:
        path = config.getoption("simq_conformance_replay")
        return f"simq_conformance: adapters={','.join(state.adapters)} replay={path}"
    return (
        f"simq_conformance: adapters={','.join(state.adapters)} "
        f"seed={state.seed} examples={state.describe_examples()} "
        f"({SEED_OPTION}=N, {EXAMPLES_OPTION}=N to change)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    state = metafunc.config.stash.get(_STATE, None)
    if "conformance_adapter" in metafunc.fixturenames:
        names = list(state.adapters) if state else []
        metafunc.parametrize("conformance_adapter", names, ids=names)
    if "differential_adapter" in metafunc.fixturenames:
        pairs = state.differential_names() if state else []
        if pairs:
            metafunc.parametrize("differential_adapter", pairs, ids=pairs)
        else:
            reason = (
                "differential: select the simulator (simq) and a real adapter on "
                "amqp or redis, e.g. --conformance=simq,celery-redis"
            )
            metafunc.parametrize(
                "differential_adapter",
                [pytest.param(None, marks=pytest.mark.skip(reason=reason))],
                ids=["none"],
            )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    # Only the guarantees selected (e.g. with -k) are worth shrinking.
    selected: dict[str, set[str]] = {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "conformance_adapter" in params and "guarantee" in params:
            selected.setdefault(params["conformance_adapter"], set()).add(params["guarantee"])
    state.selected = selected


@pytest.fixture(scope="session")
def conformance(pytestconfig: pytest.Config) -> Any:
    """The conformance session: adapters, their campaigns, their verdicts."""
    state = pytestconfig.stash.get(_STATE, None)
    if state is None:
        pytest.skip(f"the conformance suite runs with {CONFORMANCE_OPTION}=ADAPTER")
    return state


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or not state.campaigns:
        return
    from simq_conformance.report import to_markdown

    terminalreporter.section("simq conformance")
    table = to_markdown(list(state.campaigns.values())).split("\n## ")[0]
    terminalreporter.write(table)
    for path in state.written:
        terminalreporter.write_line(f"report written: {path}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    state.teardown()
    path = session.config.getoption("simq_conformance_report")
    if path and state.campaigns:
        from simq_conformance.report import write_report

        state.written = list(write_report(path, list(state.campaigns.values())))
