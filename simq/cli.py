"""The ``simq`` command line: fault campaigns, replays, timelines and the demo.

::

    simq explore myapp.campaigns:checkout --seeds 500 --jobs auto --out failures/
    simq replay failures/failure-1.json
    simq replay myapp.campaigns:checkout --seed 8 --plan '[{"kind":"crash",...}]'
    simq show failures/failure-1.history.jsonl --html timeline.html
    simq demo

Exit codes: 0 nothing failed; 1 a failure was found (or replayed); 2 a usage error;
3 a replayed history differs from the one recorded.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from simq import __version__
from simq.campaign.explore import explore as run_campaign
from simq.campaign.explore import select_seeds
from simq.campaign.files import load_scenario, read_failure, write_failure
from simq.campaign.plan import FaultPlan
from simq.campaign.scenario import Run, Scenario
from simq.exceptions import InvalidArgument
from simq.history import History

__all__ = ["demo", "main"]

#: Exit codes.
OK, FAILED, USAGE, DIFFERENT = 0, 1, 2, 3

#: The demo's campaign: ``simq.examples.campaign:orders``.
DEMO_REF = "simq.examples.campaign:orders"
#: Seeds the demo explores by default: the first double charge is on seed 8.
DEMO_SEEDS = 10


class UsageError(Exception):
    """A command line simq cannot act on: printed as one line, exit code 2."""


# -- argument types -----------------------------------------------------------------------


def _count(text: str) -> int:
    """A whole number >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _jobs(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        return _count(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or 'auto' for one process per core") from None


def _bounds(text: str, whole: bool) -> tuple[float, float]:
    number = r"\d+" if whole else r"\d+(?:\.\d*)?|\.\d+"
    match = re.fullmatch(rf"\s*({number})\s*(?:-\s*({number})\s*)?", text)
    if not match:
        example = "1-3" if whole else "0-12.5"
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH such as {example}, got {text!r}")
    low = float(match[1])
    high = float(match[2]) if match[2] is not None else low
    if low > high:
        raise argparse.ArgumentTypeError(f"LOW-HIGH needs LOW <= HIGH, got {text!r}")
    return low, high


def _fault_count(text: str) -> tuple[int, int]:
    low, high = _bounds(text, whole=True)
    return int(low), int(high)


def _window(text: str) -> tuple[float, float]:
    return _bounds(text, whole=False)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    if not kinds:
        raise argparse.ArgumentTypeError("name at least one fault kind, e.g. crash,kill-child")
    return kinds


def _plan(text: str) -> FaultPlan:
    try:
        return FaultPlan.from_json(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- progress -----------------------------------------------------------------------------


class Progress:
    """The live bars of a campaign on stderr: seeds swept, then the shrinker's runs."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.failures = 0
        self.shrinks = 0
        self._sweep: Any = tqdm(
            total=total,
            desc="seeds",
            unit="seed",
            file=self.stream,
            disable=not enabled,
            dynamic_ncols=True,
        )
        self._shrink: Any = None
        if enabled:
            self._sweep.set_postfix(failures=0, refresh=False)

    def __call__(self, run: Run) -> None:
        if self.done < self.total:
            self.done += 1
            self.failures += run.failed
            if self.enabled:
                self._sweep.set_postfix(failures=self.failures, refresh=False)
            self._sweep.update(1)
            if self.done == self.total:
                self._sweep.close()
            return
        self.shrinks += 1
        if self._shrink is None:
            self._shrink = self._tqdm(
                desc="shrinking",
                bar_format="{desc}: {n} simulations [{elapsed}, {rate_fmt}]",
                unit="sim",
                file=self.stream,
                disable=not self.enabled,
            )
        self._shrink.update(1)

    def close(self) -> None:
        self._sweep.close()
        if self._shrink is not None:
            self._shrink.close()


def _show_progress(args: argparse.Namespace) -> bool:
    return bool(args.progress) or sys.stderr.isatty()


# -- shared output --------------------------------------------------------------------------


def _digest_line(run: Run, history: History) -> str:
    return f"history: {len(history)} events, sha256 {run.digest}"


def _verdict(run: Run) -> str:
    return f"FAILED {run.failure}" if run.failure is not None else "passed"


def _task_table(history: History) -> list[str]:
    """Final states per task name: the demo's summary of one run."""
    names: dict[str, str] = {}
    finals: dict[str, str] = {}
    for event in history.where(kind="published"):
        names[event.task_id or ""] = event["task"]
    for event in history.where(kind="state"):
        finals[event.task_id or ""] = event["state"]
    by_task: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for task_id, name in names.items():
        by_task[name][finals.get(task_id, "PENDING")] += 1
    lines = [f"{'task':<32} states"]
    for name in sorted(by_task):
        counts = ", ".join(f"{state} {n}" for state, n in sorted(by_task[name].items()))
        lines.append(f"{name:<32} {counts}")
    return lines


def _write_outputs(args: argparse.Namespace, run: Run, title: str, notes: list[str]) -> None:
    """``--timeline``, ``--history`` and ``--html`` of a replay."""
    from simq.timeline import render_text, write_html

    history: History = run.history
    if getattr(args, "timeline", False):
        print()
        print(render_text(history))
    if getattr(args, "history", None):
        Path(args.history).write_text(history.to_jsonl(), encoding="utf-8")
        print(f"history written: {args.history}")
    if getattr(args, "html", None):
        write_html(history, args.html, title=title, notes=notes)
        print(f"timeline written: {args.html}")


# -- simq explore ----------------------------------------------------------------------------


def _explore(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    changes: dict[str, Any] = {}
    if args.kinds is not None:
        changes["kinds"] = args.kinds
    if args.faults is not None:
        changes["faults"] = args.faults
    if args.window is not None:
        changes["window"] = args.window
    faults = attrs.evolve(scenario.faults, **changes) if changes else None
    seeds = select_seeds(args.seeds, args.shard)
    progress = Progress(len(seeds), _show_progress(args))
    try:
        report = run_campaign(
            scenario,
            args.seeds,
            faults=faults,
            shard=args.shard,
            jobs=args.jobs,
            shrink=not args.no_shrink,
            progress=progress,
        )
    finally:
        progress.close()
    shard = f" (shard {args.shard} of seeds 0-{args.seeds - 1})" if args.shard else ""
    print(f"seeds run: {_ranges(r.seed for r in report.runs)}{shard}")
    print(report)
    if args.out and report.found:
        out = Path(args.out)
        print()
        for index, found in enumerate(report.found, 1):
            path = write_failure(scenario, found, out, index)
            base = path.with_suffix("")
            print(f"failure {index} written: {path}, {base}.history.jsonl, {base}.html")
            print(f"  replay: simq replay {shlex.quote(str(path))}")
    return FAILED if report.found else OK


def _ranges(seeds: Any) -> str:
    """``0-4, 7, 9-10``: a sorted seed list, consecutive runs collapsed."""
    values = sorted(seeds)
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    if len(parts) > 8:
        parts = [*parts[:4], "...", *parts[-2:]]
    return ", ".join(parts) or "none"


# -- simq replay ----------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    target: str = args.target
    is_file = target.endswith(".json") or (":" not in target and Path(target).is_file())
    if is_file:
        if args.seed is not None or args.plan is not None or args.size is not None:
            raise UsageError(
                "replay FILE.json reruns the recorded failure; --seed, --plan and --size "
                "go with replay MODULE:SCENARIO instead"
            )
        scenario, run, record = read_failure(target)
        recorded = record["shrunk"]["digest"]
        print(f"replaying {target}: {scenario.ref}, seed {run.seed}" + _size(run))
        print(f"plan: {run.plan.describe()}")
        print(_verdict(run))
        print(_digest_line(run, run.history))
        if run.digest == recorded:
            print(f"identical history: yes (sha256 {recorded})")
        else:
            print(f"identical history: NO (recorded sha256 {recorded}, this run {run.digest})")
            print(f"recorded: FAILED {record['invariant']}: {record['message']}")
        _write_outputs(args, run, f"simq replay: {target}", _notes(run, f"simq replay {target}"))
        if run.digest != recorded:
            return DIFFERENT
        return FAILED if run.failed else OK
    if args.seed is None:
        raise UsageError(
            f"replay {target}: give --seed S (and --plan JSON from the report), or a "
            "failure-N.json file"
        )
    scenario = load_scenario(target)
    run = scenario.run(args.seed, args.plan, args.size, keep=True)
    command = scenario.replay_command(run.seed, run.plan, run.size)
    return _print_run(args, scenario, run, command)


def _size(run: Run) -> str:
    return "" if run.size is None else f", size {run.size}"


def _notes(run: Run, command: str) -> list[str]:
    return [
        _verdict(run),
        f"seed {run.seed}{_size(run)}; plan: {run.plan.describe()}",
        f"replay: {command}",
    ]


def _print_run(args: argparse.Namespace, scenario: Scenario, run: Run, command: str) -> int:
    print(f"replaying {scenario.ref}: seed {run.seed}" + _size(run))
    print(f"plan: {run.plan.describe()}")
    print(_verdict(run))
    print(_digest_line(run, run.history))
    _write_outputs(args, run, f"simq replay: {scenario.name}", _notes(run, command))
    return FAILED if run.failed else OK


# -- simq show ------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    from simq.timeline import render_text, write_html

    path = Path(args.history_file)
    try:
        history = History.from_jsonl(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not a simq history (JSON Lines): {exc}") from None
    if args.html:
        write_html(history, args.html, title=f"simq: {path.name}", notes=[str(path)])
        print(f"timeline written: {args.html}")
    else:
        print(render_text(history))
    return OK


# -- simq demo ------------------------------------------------------------------------------


def _demo_scenario(orders: int, workers: int, concurrency: int) -> Scenario:
    from simq.examples.campaign import orders as base

    return attrs.evolve(
        base,
        simulation={**base.simulation, "workers": workers, "concurrency": concurrency},
        size=orders,
    )


def _demo_defaults() -> tuple[int, int, int]:
    from simq.examples.campaign import orders as base

    return base.size or 20, base.simulation["workers"], base.simulation["concurrency"]


def _demo_replay_command(scenario: Scenario, run: Run) -> str:
    """The line that reruns ``run`` exactly: ``simq replay`` when the settings are the
    scenario's own, else ``simq demo --replay`` with the settings that differ."""
    orders, workers, concurrency = _demo_defaults()
    settings = scenario.simulation
    if settings["workers"] == workers and settings["concurrency"] == concurrency:
        return scenario.replay_command(run.seed, run.plan, run.size)
    words = ["simq", "demo", "--replay", str(run.seed), "--plan", run.plan.to_json()]
    if run.size is not None and run.size != orders:
        words += ["--orders", str(run.size)]
    if settings["workers"] != workers:
        words += ["--workers", str(settings["workers"])]
    if settings["concurrency"] != concurrency:
        words += ["--concurrency", str(settings["concurrency"])]
    return shlex.join(words)


def _double_charge(history: History, ledger: list[tuple[float, str, int]]) -> list[str]:
    """Which order was charged more than once, and how the crash did it."""
    from simq.examples.campaign import charged

    counts = collections.Counter(charged(ledger))
    twice = sorted(order for order, n in counts.items() if n > 1)
    if not twice:
        return []
    start = history.first().time if len(history) else 0.0
    order = twice[0]
    at = [t - start for t, what, o in ledger if what == "charged" and o == order]
    lines = [
        f"double charge: order {order} was charged {counts[order]} times "
        f"(at {', '.join(f'+{t:.1f} s' for t in at)})"
    ]
    if len(twice) > 1:
        lines[0] += f"; so were orders {', '.join(map(str, twice[1:]))}"
    # The charge_payment task of that order: its stored result names the order.
    task_id = next(
        (
            e.task_id
            for e in history.where(kind="state")
            if isinstance(e["result"], dict) and e["result"].get("order_id") == order
        ),
        None,
    )
    events = [e for e in history if task_id is not None and e.task_id == task_id]
    started = {e["attempt"]: e for e in events if e.kind == "started"}
    for event in events:
        if event.kind != "requeued" or event.details.get("reason") != "worker-crashed":
            continue
        begun = started.get(event["attempt"])
        if begun is None:  # requeued before it started: not this charge
            continue
        again = next(
            (e for e in events if e.kind == "started" and e.time >= event.time and e is not begun),
            None,
        )
        lines += [
            f"  its charge_payment started on {begun.worker} at +{begun.time - start:.1f} s "
            "and charged;",
            f"  {begun.worker} crashed at +{event.time - start:.1f} s, before the receipt "
            "was written and the message acked (acks_late),",
        ]
        if again is not None:
            lines.append(
                f"  so the message went again to {again.worker} at +{again.time - start:.1f} s, "
                "which charged the order again" + (f" at +{at[1]:.1f} s" if len(at) > 1 else "")
            )
        break
    return lines


def demo(
    seeds: int = DEMO_SEEDS,
    orders: int | None = None,
    workers: int | None = None,
    concurrency: int | None = None,
    jobs: int | str = 1,
    html: str | Path | None = None,
    out: str | Path | None = None,
    progress: Callable[[Run], Any] | None = None,
) -> str:
    """Run the demo campaign and return what ``simq demo`` prints.

    A campaign over the order workflow (``simq.examples.campaign:orders``): one random
    worker crash per seed, each order must be charged exactly once. The first failure
    is shrunk to the crash that causes it; with ``html`` its timeline is written there,
    with ``out`` the failure files too.
    """
    from simq.examples import orders as example
    from simq.timeline import write_html

    default_orders, default_workers, default_concurrency = _demo_defaults()
    orders = default_orders if orders is None else orders
    workers = default_workers if workers is None else workers
    concurrency = default_concurrency if concurrency is None else concurrency
    _check_demo_counts(seeds=seeds, orders=orders, workers=workers, concurrency=concurrency)
    scenario = _demo_scenario(orders, workers, concurrency)
    report = run_campaign(scenario, seeds, jobs=jobs, progress=progress)
    lines = [
        f"simq {__version__} demo: a fault campaign over the order workflow ({DEMO_REF})",
        f"{orders} orders, {workers} workers x {concurrency} children; seeds 0-{seeds - 1}, "
        "one random worker crash each",
        "every order must be charged exactly once",
        "",
    ]
    if not report.found:
        lines += [
            str(report),
            "",
            f"no double charge in {seeds} seeds with these settings; try more: "
            f"simq demo --seeds {seeds * 10}" + _settings_args(orders, workers, concurrency),
        ]
        return "\n".join(lines)
    found = report.found[0]
    rerun = scenario.run(found.shrunk.seed, found.shrunk.plan, found.shrunk.size, keep=True)
    command = _demo_replay_command(scenario, rerun)
    shown = attrs.evolve(
        report,
        found=tuple(attrs.evolve(f, replay=command) if f is found else f for f in report.found),
    )
    history: History = rerun.history
    lines += [str(shown), ""]
    lines += _double_charge(history, list(example.LEDGER))
    lines += [f"  the crash, after shrinking: {found.shrunk.plan.describe()}", ""]
    lines += [f"the shrunk run, seed {rerun.seed}{_size(rerun)}: history sha256 {rerun.digest}"]
    lines += ["  " + line for line in _task_table(history)]
    lines.append("")
    notes = _notes(rerun, command)
    written: list[str] = []
    if out is not None:
        path = write_failure(scenario, found, Path(out), 1)
        base = path.with_suffix("")
        written.append(f"failure written: {path}, {base}.history.jsonl, {base}.html")
        if command == found.replay:  # the scenario's own settings: the file replays it
            written.append(f"replay the file: simq replay {shlex.quote(str(path))}")
    if html is not None:
        write_html(history, html, title="simq demo: a double charge, shrunk", notes=notes)
        written.append(f"timeline written: {html}")
    lines += written
    lines.append(f"replay: {command}")
    return "\n".join(lines)


def _settings_args(orders: int, workers: int, concurrency: int) -> str:
    default_orders, default_workers, default_concurrency = _demo_defaults()
    words: list[str] = []
    if orders != default_orders:
        words += ["--orders", str(orders)]
    if workers != default_workers:
        words += ["--workers", str(workers)]
    if concurrency != default_concurrency:
        words += ["--concurrency", str(concurrency)]
    return "".join(f" {w}" for w in words)


def _check_demo_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    if counts["workers"] < 2:
        raise UsageError(
            "--workers 1: the demo crashes a worker, and the crash of the only worker "
            "cannot be survived (nothing is left to finish the orders); use --workers 2 or more"
        )


def _demo(args: argparse.Namespace) -> int:
    default_orders, default_workers, default_concurrency = _demo_defaults()
    orders = args.orders or default_orders
    workers = args.workers or default_workers
    concurrency = args.concurrency or default_concurrency
    _check_demo_counts(seeds=args.seeds, orders=orders, workers=workers, concurrency=concurrency)
    if args.replay is not None:
        if args.plan is None:
            raise UsageError("demo --replay SEED needs --plan JSON (from the replay line)")
        scenario = _demo_scenario(orders, workers, concurrency)
        run = scenario.run(args.replay, args.plan, orders, keep=True)
        return _print_run(args, scenario, run, _demo_replay_command(scenario, run))
    if args.plan is not None or args.timeline or args.history:
        raise UsageError("demo --plan, --timeline and --history go with --replay SEED")
    html = args.html
    if html is None and args.out is None:
        html = "simq-demo.html"
    progress = Progress(args.seeds, _show_progress(args))
    try:
        text = demo(
            args.seeds,
            orders,
            workers,
            concurrency,
            jobs=args.jobs,
            html=html,
            out=args.out,
            progress=progress,
        )
    finally:
        progress.close()
    print(text)
    return OK


# -- the parser -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simq",
        description="Deterministic simulation of Celery apps: fault campaigns, replays, timelines.",
    )
    parser.add_argument("--version", action="version", version=f"simq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    explore = sub.add_parser(
        "explore",
        help="run a scenario over many seeds with random faults; shrink what fails",
        description="Run MODULE:SCENARIO once per seed, each with the seed's random fault "
        "plan; shrink each distinct failure and print the command that replays it. "
        "Exit 1 when something failed.",
    )
    explore.add_argument("scenario", metavar="MODULE:SCENARIO")
    explore.add_argument("--seeds", type=_count, default=100, help="seeds 0 to N-1 (default 100)")
    explore.add_argument(
        "--jobs", type=_jobs, default="auto", help="processes: K or auto, one per core (default)"
    )
    explore.add_argument("--shard", metavar="K/N", help="only the K-th of N interleaved slices")
    explore.add_argument("--out", metavar="DIR", help="write each failure's files here")
    explore.add_argument("--no-shrink", action="store_true", help="report failures unshrunk")
    explore.add_argument(
        "--kinds", type=_kinds, help="fault kinds, comma-separated: crash,kill-child,..."
    )
    explore.add_argument("--faults", type=_fault_count, metavar="MIN-MAX", help="faults per plan")
    explore.add_argument(
        "--window", type=_window, metavar="A-B", help="when faults strike, seconds from the start"
    )
    explore.add_argument(
        "--progress", action="store_true", help="show the progress bar even when not a terminal"
    )
    explore.set_defaults(run=_explore)

    replay = sub.add_parser(
        "replay",
        help="rerun one run exactly: a failure file, or a scenario with a seed and plan",
        description="Rerun a recorded failure (FILE.json) and compare its history with the "
        "recorded one byte for byte, or rerun MODULE:SCENARIO with --seed and --plan. "
        "Exit 1 when the run fails, 3 when the history differs from the record.",
    )
    replay.add_argument("target", metavar="FILE.json | MODULE:SCENARIO")
    replay.add_argument("--seed", type=int, help="the run's seed")
    replay.add_argument(
        "--plan", type=_plan, help="the fault plan as JSON (default: the seed's random plan)"
    )
    replay.add_argument("--size", type=_count, help="the workload size")
    _replay_outputs(replay)
    replay.set_defaults(run=_replay)

    show = sub.add_parser(
        "show",
        help="a history file's timeline, in the terminal or as HTML",
        description="Print the timeline of a history written as JSON Lines, or write it "
        "as a self-contained HTML page.",
    )
    show.add_argument("history_file", metavar="HISTORY.jsonl")
    show.add_argument("--html", metavar="OUT.html", help="write the HTML timeline instead")
    show.set_defaults(run=_show)

    orders, workers, concurrency = _demo_defaults()
    demo_cmd = sub.add_parser(
        "demo",
        help="a fault campaign over the bundled order workflow: find a double charge",
        description=f"Explore {DEMO_REF} (orders placed on several workers, one random "
        "worker crash per seed), shrink the double charge it finds to the crash that "
        "causes it, print the replay line and write the HTML timeline.",
    )
    demo_cmd.add_argument(
        "--seeds", type=_count, default=DEMO_SEEDS, help=f"seeds to explore (default {DEMO_SEEDS})"
    )
    demo_cmd.add_argument("--orders", type=_count, help=f"orders to place (default {orders})")
    demo_cmd.add_argument("--workers", type=_count, help=f"workers, 2 or more (default {workers})")
    demo_cmd.add_argument(
        "--concurrency", type=_count, help=f"children per worker (default {concurrency})"
    )
    demo_cmd.add_argument("--jobs", type=_jobs, default="auto", help="processes: K or auto")
    demo_cmd.add_argument(
        "--out", metavar="DIR", help="write the failure's JSON, history and HTML here"
    )
    demo_cmd.add_argument(
        "--html", metavar="PATH", help="where the timeline goes (default simq-demo.html)"
    )
    demo_cmd.add_argument("--progress", action="store_true", help="show progress when not a tty")
    demo_cmd.add_argument(
        "--replay", type=int, metavar="SEED", help="rerun one run of the demo (with --plan)"
    )
    demo_cmd.add_argument("--plan", type=_plan, help="with --replay: the fault plan as JSON")
    demo_cmd.add_argument("--timeline", action="store_true", help="with --replay: print it")
    demo_cmd.add_argument("--history", metavar="OUT.jsonl", help="with --replay: write it")
    demo_cmd.set_defaults(run=_demo)
    return parser


def _replay_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--html", metavar="OUT.html", help="write the run's HTML timeline")
    parser.add_argument("--history", metavar="OUT.jsonl", help="write the run's history")
    parser.add_argument("--timeline", action="store_true", help="print the run's timeline")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's usage errors exit 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (UsageError, InvalidArgument) as exc:
        print(f"simq {args.command}: error: {exc}", file=sys.stderr)
        return USAGE
    except BrokenPipeError:  # `simq show ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK


if __name__ == "__main__":
    sys.exit(main())
