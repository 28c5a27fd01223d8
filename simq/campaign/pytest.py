"""Fault campaigns as pytest tests: ``@campaign(seeds=50)`` over a scenario.

::

    from simq.campaign.pytest import campaign

    @campaign(seeds=50)
    @simq.scenario(app, workers=3, size=20)
    def test_checkout(sim, size):
        ...publish, sim.run(), assert with simq.invariants...

The test runs the scenario once per seed, each with the seed's random fault plan
(:func:`simq.explore`), and fails with the campaign's report: per distinct failure the
invariant, the first failing seed, its plan, the shrunk plan, and ONE command that
reruns the shrunk failure under pytest::

    python -m pytest 'tests/test_shop.py::test_checkout' --simq-replay='{"seed":3,"plan":[...],"size":2}'

``--simq-replay=JSON`` runs just that run (and fails the same way, with a timeline of
its history). The same campaign as a marker: ``@pytest.mark.simq_campaign(seeds=50)``
directly above ``@simq.scenario(...)``. Every campaign test carries the
``simq_campaign`` marker, so ``-m "not simq_campaign"`` leaves them out.

Command line and ini (registered by :mod:`simq.pytest_plugin`):

* ``--simq-seeds=N`` (ini ``simq_seeds``): every campaign runs N seeds (widen in CI).
* ``--simq-shard=K/N``: every campaign runs only the K-th of N interleaved slices of its
  seeds, to split campaigns across CI jobs; the N slices together are the whole run.
* ``shards=S`` in the decorator makes S test items (``[shard1of4]`` ...), one slice
  each, so ``pytest -n auto`` (xdist) spreads one campaign over its workers.

Each campaign item records what it ran as the user property ``simq_campaign`` (the
seeds it ran, and those that failed) and adds its report's first line to the test's
report (shown by ``-rA``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from simq import validate
from simq.campaign.explore import explore, parse_shard, select_seeds
from simq.campaign.plan import FaultPlan
from simq.campaign.scenario import Run, Scenario
from simq.exceptions import InvalidArgument

__all__ = [
    "MARKER",
    "MARKER_HELP",
    "REPLAY_DEST",
    "REPLAY_OPTION",
    "SEEDS_INI",
    "SEEDS_OPTION",
    "SHARD_DEST",
    "SHARD_OPTION",
    "Campaign",
    "Options",
    "Replay",
    "campaign",
    "configure",
    "replay_command",
]

SEEDS_OPTION = "--simq-seeds"
#: The ini setting, also the option's dest.
SEEDS_INI = "simq_seeds"
SHARD_OPTION = "--simq-shard"
SHARD_DEST = "simq_shard"
REPLAY_OPTION = "--simq-replay"
REPLAY_DEST = "simq_replay"
MARKER = "simq_campaign"
MARKER_HELP = (
    f"{MARKER}(seeds=20, shards=1, shrink=True): a simq fault campaign over the "
    "scenario it marks (put it directly above @simq.scenario(...)); every campaign test "
    f'carries it, so -m "not {MARKER}" leaves them out'
)
#: The pseudo-fixture a campaign with ``shards=S`` is parametrized over (1 to S).
SHARD_ARG = "simq_campaign_shard"
_OPTIONS_KEY = pytest.StashKey["Options"]()
_PLUGIN_NAME = "simq-campaign"
_CALL = "simq.campaign_test()"


@attrs.frozen
class Campaign:
    """What ``@campaign(...)`` made a test of: the scenario and how to explore it."""

    scenario: Scenario
    seeds: int = 20
    shards: int = 1
    shrink: bool = True


@attrs.frozen
class Replay:
    """One run to replay: what ``--simq-replay`` holds."""

    seed: int
    plan: FaultPlan
    size: int | None = None

    def to_json(self) -> str:
        data = {"seed": self.seed, "plan": self.plan.to_list(), "size": self.size}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Replay:
        example = f'{REPLAY_OPTION}=\'{{"seed":3,"plan":[{{"kind":"crash","at":0.5,"worker":"worker-1"}}],"size":2}}\''
        fix = f"; pass the JSON a failed campaign printed, e.g. {example}"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"{REPLAY_OPTION}: not JSON ({exc}){fix}") from None
        if not isinstance(data, dict) or not {"seed", "plan"} <= set(data):
            raise InvalidArgument(
                f"{REPLAY_OPTION}: expected a JSON object with seed, plan and size, got "
                f"{validate.shown(data)}{fix}"
            )
        unknown = sorted(set(data) - {"seed", "plan", "size"})
        if unknown:
            raise InvalidArgument(f"{REPLAY_OPTION}: unknown keys {', '.join(unknown)}{fix}")
        seed = data["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise validate.invalid(REPLAY_OPTION, "seed", "an int", seed, fix)
        size = data.get("size")
        if size is not None:
            validate.whole(REPLAY_OPTION, "size", size, minimum=1, fix=fix)
        return cls(seed, FaultPlan.from_json(data["plan"]), size)


@attrs.frozen
class Options:
    """The campaign options of a pytest run, read and checked once."""

    seeds: int | None = None
    shard: tuple[int, int] | None = None
    replay: Replay | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        """Read ``--simq-seeds`` (or ini ``simq_seeds``), ``--simq-shard``, ``--simq-replay``.

        Raises InvalidArgument, saying the fix, for a value that cannot be used.
        """
        seeds_text = config.getoption(SEEDS_INI, None)
        where = SEEDS_OPTION
        if seeds_text is None:
            try:
                seeds_text = config.getini(SEEDS_INI) or None
            except ValueError:  # simq's plugin is not loaded (-p no:simq): no ini setting
                seeds_text = None
            where = f"ini {SEEDS_INI}"
        seeds: int | None = None
        if seeds_text is not None:
            try:
                seeds = int(str(seeds_text).strip())
            except ValueError:
                seeds = None
            if seeds is None or seeds < 1:
                raise InvalidArgument(
                    f"{where} must be a number of seeds >= 1, got {seeds_text!r}; e.g. "
                    f"{SEEDS_OPTION}=200 runs every campaign over seeds 0 to 199 (leave it "
                    "out to run each campaign's own count)"
                )
        shard_text = config.getoption(SHARD_DEST, None)
        shard: tuple[int, int] | None = None
        if shard_text is not None:
            try:
                shard = parse_shard(str(shard_text))
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"{SHARD_OPTION}: {exc}; give K/N with 1 <= K <= N, e.g. "
                    f"{SHARD_OPTION}=2/4 runs the second of four slices of every "
                    "campaign's seeds (run 1/4 to 4/4 in four CI jobs to cover them all)"
                ) from None
        replay_text = config.getoption(REPLAY_DEST, None)
        replay = None if replay_text is None else Replay.from_json(str(replay_text))
        return cls(seeds, shard, replay)


def configure(config: pytest.Config) -> None:
    """Check the campaign options and enable the marker form (from ``pytest_configure``).

    A bad option stops the run before collection, as a usage error saying the fix.
    """
    try:
        config.stash[_OPTIONS_KEY] = Options.from_config(config)
    except InvalidArgument as exc:
        raise pytest.UsageError(f"simq: {exc}") from exc
    if not config.pluginmanager.has_plugin(_PLUGIN_NAME):
        config.pluginmanager.register(_MarkerPlugin(), _PLUGIN_NAME)


def _options(config: pytest.Config) -> Options:
    options = config.stash.get(_OPTIONS_KEY, None)
    if options is None:
        options = config.stash[_OPTIONS_KEY] = Options.from_config(config)
    return options


def campaign(
    seeds: int = 20, shards: int = 1, shrink: bool = True
) -> Callable[[Scenario], Callable[..., None]]:
    """Decorator: the :class:`~simq.Scenario` below becomes a pytest test running a campaign.

    Args:
        seeds: Seeds to run (0 to seeds-1); ``--simq-seeds`` overrides it.
        shards: Test items to split the seeds over (``[shard1ofS]`` ...), for xdist.
        shrink: Shrink each distinct failure to a 1-minimal plan and workload.
    """
    if isinstance(seeds, Scenario) or (callable(seeds) and not isinstance(seeds, int)):
        raise InvalidArgument(
            f"{_CALL}: call the decorator, with parentheses: @simq.campaign_test() or "
            "@simq.campaign_test(seeds=50), above @simq.scenario(...)"
        )
    seeds = validate.whole(_CALL, "seeds", seeds, minimum=1)
    shards = validate.whole(_CALL, "shards", shards, minimum=1)
    shrink = validate.flag(_CALL, "shrink", shrink)

    def wrap(scenario: Scenario) -> Callable[..., None]:
        if not isinstance(scenario, Scenario):
            raise InvalidArgument(
                f"{_CALL} goes on a simq scenario, got {validate.shown(scenario)}; put "
                "@simq.scenario(app, workers=3) directly below it, so the campaign knows "
                "the app and the simulation to run"
            )
        return _test_function(Campaign(scenario, seeds, shards, shrink))

    return wrap


def _test_function(spec: Campaign) -> Callable[..., None]:
    """A pytest test function running ``spec``, named and placed as the scenario's function."""
    fn = spec.scenario.fn
    test: Callable[..., None]
    if spec.shards == 1:

        def test(request: pytest.FixtureRequest) -> None:
            __tracebackhide__ = True
            _run(spec, request, None)

    else:

        def test(request: pytest.FixtureRequest, simq_campaign_shard: int) -> None:
            __tracebackhide__ = True
            _run(spec, request, simq_campaign_shard)

        count = spec.shards
        ids = [f"shard{k}of{count}" for k in range(1, count + 1)]
        test = pytest.mark.parametrize(SHARD_ARG, range(1, count + 1), ids=ids)(test)
    marks = [*getattr(fn, "pytestmark", []), *getattr(test, "pytestmark", [])]
    marker = getattr(pytest.mark, MARKER)(seeds=spec.seeds, shards=spec.shards, shrink=spec.shrink)
    t: Any = test
    t.pytestmark = [*marks, marker.mark]
    t.__name__ = fn.__name__
    t.__qualname__ = fn.__qualname__
    t.__module__ = fn.__module__
    t.__doc__ = fn.__doc__
    t.place_as = fn  # pytest reports the scenario function's file and line
    t.simq_campaign = spec
    t.scenario = spec.scenario
    return test


def replay_command(nodeid: str, run: Run) -> str:
    """The command line that reruns ``run`` as the pytest test ``nodeid``."""
    payload = Replay(run.seed, run.plan, run.size).to_json()
    return f"python -m pytest {shlex.quote(nodeid)} {REPLAY_OPTION}={shlex.quote(payload)}"


def _run(spec: Campaign, request: pytest.FixtureRequest, shard: int | None) -> None:
    __tracebackhide__ = True
    node = request.node
    options = _options(request.config)
    if options.replay is not None:
        _replay(spec, node, options.replay)
        return
    chosen = select_seeds(options.seeds or spec.seeds, options.shard)
    slices = [] if options.shard is None else ["shard {}/{}".format(*options.shard)]
    if shard is not None:
        chosen = chosen[shard - 1 :: spec.shards]
        slices.append(f"shard {shard}/{spec.shards} of the test")
    if not chosen:
        pytest.skip(f"simq: no seed falls in this slice of the campaign ({', '.join(slices)})")
    report = explore(spec.scenario, chosen, shrink=spec.shrink)
    node.user_properties.append(
        (
            "simq_campaign",
            {
                "seeds": [run.seed for run in report.runs],
                "failed": [run.seed for run in report.failures],
            },
        )
    )
    head = str(report).splitlines()[0]
    where = f" ({'; '.join(slices)}: seeds {_span(chosen)})" if slices else ""
    node.add_report_section("call", "simq campaign", f"{head}{where}\n")
    if report.found:
        found = [
            attrs.evolve(f, replay=replay_command(node.nodeid, f.shrunk)) for f in report.found
        ]
        text = str(attrs.evolve(report, found=tuple(found)))
        lines = text.splitlines()
        lines[0] += where
        raise AssertionError("simq campaign failed: " + "\n".join(lines))


def _span(seeds: list[int]) -> str:
    shown = ", ".join(map(str, seeds[:8]))
    return shown + (f", ... ({len(seeds)} seeds)" if len(seeds) > 8 else "")


def _replay(spec: Campaign, node: Any, replay: Replay) -> None:
    __tracebackhide__ = True
    run = spec.scenario.run(replay.seed, replay.plan, replay.size, keep=True)
    timeline = _timeline(run)
    node.add_report_section("call", "simq timeline", timeline + "\n")
    if run.failure is None:
        return
    node.add_report_section("call", "simq scenario traceback", run.failure.traceback)
    size = "" if run.size is None else f", size {run.size}"
    raise AssertionError(
        "\n".join(
            [
                f"simq replay failed: {run.failure}",
                f"  seed {run.seed}{size}; plan: {run.plan.describe()}",
                f"  history: {_timeline(run, width=10_000).splitlines()[0]} "
                f"(sha256 {run.digest[:16]})",
                f"  replay: {replay_command(node.nodeid, run)}",
            ]
        )
    )


def _timeline(run: Run, width: int = 100) -> str:
    """The run's history as a terminal timeline, its first line a summary."""
    from simq.timeline import render_text

    return render_text(run.history, width=width)


class _MarkerPlugin:
    """The marker form: ``@pytest.mark.simq_campaign(...)`` directly above a scenario."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(
        self, collector: pytest.Module | pytest.Class, name: str, obj: object
    ) -> Any:
        if not isinstance(obj, pytest.MarkDecorator) or obj.name != MARKER:
            return None
        if len(obj.args) != 1 or not isinstance(obj.args[0], Scenario):
            return None
        if not collector.funcnamefilter(name):
            return None
        test = campaign(**obj.kwargs)(obj.args[0])
        # pytest finds a test's function on its module (or class) by name: the campaign
        # test takes the marker's place there, as the decorator form's does.
        setattr(collector.obj, name, test)
        return collector.ihook.pytest_pycollect_makeitem(collector=collector, name=name, obj=test)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        marker = item.get_closest_marker(MARKER)
        if marker is not None and not hasattr(getattr(item, "obj", None), "simq_campaign"):
            raise InvalidArgument(
                f"{item.nodeid}: @pytest.mark.{MARKER} marks a simq scenario, and this test "
                "is not one; put it directly above @simq.scenario(app, workers=3) (or use "
                "@simq.campaign_test(...) there)"
            )
