"""Failures on disk, and finding a scenario again by its ``module:qualname``.

A campaign with an output folder writes, per distinct failure ``N``:
``failure-N.json`` (the scenario, seed, plan, shrunk plan, invariant, the history's
sha256 and the replay command), ``failure-N.history.jsonl`` (the shrunk run's history)
and ``failure-N.html`` (its timeline). ``simq replay failure-N.json`` reruns the shrunk
run and compares its history with the recorded one, byte for byte.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import attrs

from simq import __version__
from simq.campaign.explore import Found
from simq.campaign.plan import FaultPlan
from simq.campaign.scenario import Run, Scenario
from simq.exceptions import InvalidArgument

__all__ = ["load_scenario", "read_failure", "write_failure"]


def load_scenario(ref: str) -> Scenario:
    """The :class:`Scenario` named ``module:qualname`` or ``path/to/script.py:qualname``.

    The current folder is importable, as with ``python -m``. A script is loaded as a
    module, not run: its ``if __name__ == "__main__":`` block does not run. Give its
    tasks explicit names (``@app.task(name=...)``) so they are named alike both ways and
    a replay's history matches the original byte for byte.
    """
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise InvalidArgument(
            f"scenario {ref!r}: name it as MODULE:NAME, e.g. myapp.campaigns:checkout"
        )
    if module_name == "__main__":
        raise InvalidArgument(
            f"scenario {ref!r} was defined in code run as __main__ with no file, which "
            "another process cannot import; move it into a module and name it as MODULE:NAME"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = _import(module_name)
    except ImportError as exc:
        raise InvalidArgument(
            f"scenario {ref!r}: cannot import module {module_name!r} ({exc}); run from the "
            "folder it is importable from, or set PYTHONPATH"
        ) from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidArgument(
                f"scenario {ref!r}: module {module_name!r} has no {qualname!r}"
            ) from None
    # A pytest campaign (``@simq.campaign_test``) is a test function holding its scenario.
    obj = getattr(obj, "scenario", obj) if not isinstance(obj, Scenario) else obj
    if not isinstance(obj, Scenario):
        raise InvalidArgument(
            f"scenario {ref!r} is not a simq scenario; decorate it with "
            "@simq.scenario(app, workers=...) so simq knows its app and simulation"
        )
    return obj


def _import(name: str) -> Any:
    """A module by dotted name, or a script by its path (``scripts/campaign.py``)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = Path(name).resolve()
    if not path.is_file():
        raise ImportError(f"no file {name}")
    module_name = f"simq_scenario_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__simq_script__ = True  # type: ignore[attr-defined]  # its ref stays the path
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _settings(scenario: Scenario) -> dict[str, Any] | None:
    """The scenario's Simulation keywords as JSON values (None: not all are, e.g. callables)."""
    try:
        return json.loads(json.dumps(scenario.simulation))  # type: ignore[no-any-return]
    except (TypeError, ValueError):
        return None


def write_failure(scenario: Scenario, found: Found, out: Path, index: int) -> Path:
    """Write failure ``index`` of a campaign into ``out``; returns the JSON file's path."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"failure-{index}"
    run = scenario.run(found.shrunk.seed, found.shrunk.plan, found.shrunk.size, keep=True)
    history = run.history
    (base.with_suffix(".history.jsonl")).write_text(history.to_jsonl(), encoding="utf-8")
    record = {
        "simq": __version__,
        "scenario": scenario.ref,
        "simulation": _settings(scenario),
        "invariant": found.failure.invariant,
        "message": (run.failure or found.failure).message,
        "seed": found.seed,
        "seeds": list(found.seeds),
        "plan": found.plan.to_list(),
        "size": found.size,
        "shrunk": {
            "plan": found.shrunk.plan.to_list(),
            "size": found.shrunk.size,
            "simulations": found.simulations,
            "digest": run.digest,
        },
        "replay": f"simq replay {base.with_suffix('.json')}",
        "replay_args": found.replay,
    }
    path = base.with_suffix(".json")
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    from simq.timeline import write_html

    write_html(
        history,
        base.with_suffix(".html"),
        title=f"simq: {found.failure.invariant} in {scenario.name}",
        notes=[
            f"{found.failure.invariant}: {record['message']}",
            f"seed {found.seed}; shrunk plan: {found.shrunk.plan.describe()}",
            f"replay: {found.replay}",
        ],
    )
    return path


def read_failure(path: str | Path) -> tuple[Scenario, Run, dict[str, Any]]:
    """Rerun the shrunk failure recorded in ``path``: (scenario, the new run, the record)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        ref, seed = record["scenario"], record["seed"]
        shrunk = record["shrunk"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            f"{path}: not a failure file a campaign wrote (failure-N.json): {exc}"
        ) from None
    scenario = load_scenario(ref)
    settings = record.get("simulation")
    if settings is not None and settings != _settings(scenario):
        scenario = attrs.evolve(scenario, simulation=settings)  # e.g. `simq demo --workers 4`
    run = scenario.run(seed, FaultPlan.from_json(shrunk["plan"]), shrunk["size"], keep=True)
    return scenario, run, record
