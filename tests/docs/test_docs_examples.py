"""The documentation's code examples run, so the docs cannot drift from the code.

Every fenced ``python`` block in ``README.md`` and ``docs/*.md`` whose first line is
``# test: NAME`` is one test, with id ``NAME``. It runs as a fresh ``__main__`` module,
the way a reader runs it as a script, so its tasks are named ``<app main>.<function>`` and its
exception classes can be found again when results are decoded; like a script in a process
of its own, it sees none of the shared tasks earlier examples defined. Each example asserts
what it shows by itself; the test adds that it leaves no simulation active. A module-level
``test_*`` function in an example (the pytest page's test file) is called too, with a
``simulation`` factory that behaves like the plugin's fixture. The ``simq demo`` output
shown on the getting-started and command-line pages is compared with what the demo prints.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celery._state as celery_state
import pytest

import simq
from simq import simulation as simulation_module
from simq.engine import vtime

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(
    r"^```python[ \t]*\n(# test: *(?P<name>\S+)[ \t]*\n.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)


class Example:
    """One executable code block: where it is and what it says."""

    def __init__(self, path: Path, line: int, name: str, code: str) -> None:
        self.path = path
        self.line = line
        self.name = name
        self.code = code

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def collect() -> list[Example]:
    """Every ``# test:`` block of the sources, in file order."""
    found = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the block's first code line
            found.append(Example(path, line, match["name"], match.group(1)))
    return found


EXAMPLES = collect()


@pytest.fixture
def fresh_main() -> Iterator[types.ModuleType]:
    """A new, empty ``__main__`` module for the example; the real one is put back after.

    As a script runs in a process of its own, the example starts with none of the shared
    tasks that earlier examples defined: Celery's ``@app.task`` (``shared=True``)
    registers each task with every app finalized later in the process.
    """
    original = sys.modules["__main__"]
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    finalizers = set(celery_state._on_app_finalizers)
    try:
        yield module
    finally:
        sys.modules["__main__"] = original
        celery_state._on_app_finalizers.clear()
        celery_state._on_app_finalizers.update(finalizers)


def _simulation_factory(made: list[simq.Simulation]) -> Callable[..., simq.Simulation]:
    # The plugin's contract: seed 0 unless given, started at once, closed after the test.
    def factory(app: Any, **options: Any) -> simq.Simulation:
        options.setdefault("seed", 0)
        sim = simq.Simulation(app, **options)
        made.append(sim)
        return sim.start()

    return factory


def _call_test_functions(namespace: dict[str, Any]) -> int:
    """Call the example's ``test_*`` functions, as pytest would; return how many ran."""
    count = 0
    for name, function in list(namespace.items()):
        if not (name.startswith("test_") and inspect.isfunction(function)):
            continue
        made: list[simq.Simulation] = []
        arguments: dict[str, Any] = {}
        for parameter in inspect.signature(function).parameters:
            if parameter != "simulation":
                raise AssertionError(f"{name}() asks for fixture {parameter!r}, unknown here")
            arguments[parameter] = _simulation_factory(made)
        try:
            function(**arguments)
        finally:
            for sim in reversed(made):
                sim.close()
        count += 1
    return count


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: Example, fresh_main: types.ModuleType) -> None:
    """The example runs clean as a script and leaves no simulation active."""
    namespace = fresh_main.__dict__
    namespace["__file__"] = str(example.path)
    code = compile(
        "\n" * (example.line - 1) + example.code, str(example.path), "exec", dont_inherit=True
    )
    try:
        exec(code, namespace)
        called = _call_test_functions(namespace)
        # Module-level test functions only: an indented one may be text the example writes.
        defines_tests = re.search(r"^def test_", example.code, re.MULTILINE)
        assert called or not defines_tests, f"{example.where}: no test ran"
    finally:
        leaked = _close_leaked_simulations(namespace)
    assert not leaked, f"{example.where}: example {example.name!r} left a simulation active"


def _close_leaked_simulations(namespace: dict[str, Any]) -> bool:
    """Close what an example left active, so one bad example cannot break the next."""
    leaked = False
    for value in list(namespace.values()):
        if isinstance(value, simq.Simulation) and value.active:
            value.close()
            leaked = True
    active = simulation_module._ACTIVE[0]
    if active is not None:
        active.close()
        leaked = True
    clock = vtime._active
    if clock is not None:
        clock.stop()
        leaked = True
    return leaked


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_asserts_what_it_shows(example: Example) -> None:
    """Each example checks its own claims with at least one assert statement."""
    assert re.search(r"^\s*assert\b", example.code, re.MULTILINE), (
        f"{example.where}: example {example.name!r} asserts nothing"
    )


def test_example_names_are_unique() -> None:
    """No two documentation examples share a test name."""
    names = [e.name for e in EXAMPLES]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate example names: {duplicates}"


@pytest.mark.parametrize(
    "page",
    [
        "README.md",
        "getting-started.md",
        "celery.md",
        "api.md",
        "simulation.md",
        "faults.md",
        "history.md",
        "pytest.md",
        "testing-your-app.md",
        "migrate-from-eager.md",
        "migrate-from-contrib-pytest.md",
        "migrate-from-mocking.md",
        "campaigns.md",
        "campaigns-reference.md",
    ],
)
def test_page_has_an_executed_example(page: str) -> None:
    """Each user-facing page carries at least one example that this module runs."""
    assert any(e.path.name == page for e in EXAMPLES), f"{page} has no `# test:` example"


def test_readme_and_getting_started_examples_are_present() -> None:
    """The README's and the getting-started page's headline examples are executed."""
    names = {e.name for e in EXAMPLES}
    assert {"readme", "getting-started"} <= names


@functools.cache
def _demo_output() -> str:
    """What `simq demo` prints, run in a scratch folder (it writes simq-demo.html)."""
    from simq.cli import demo

    with tempfile.TemporaryDirectory() as folder:
        return demo(html=Path(folder, "simq-demo.html")).replace(f"{folder}/", "")


@pytest.mark.parametrize("page", ["getting-started.md", "cli.md"])
def test_demo_output_matches_the_docs(page: str) -> None:
    """The `simq demo` output shown on the page is what the demo prints, line for line
    (the demo is a deterministic campaign: nothing in its output varies)."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    shown = re.search(r"^```text\n(simq \S+ demo:.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert shown, f"docs/{page} shows no `simq demo` output"
    assert _demo_output().strip().splitlines() == shown.group(1).strip().splitlines()
