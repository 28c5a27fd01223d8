"""The celery.contrib.pytest suite (tests/contrib_suite) on simq's worker vs a real one.

Runs the same 13 tests as ``python -m pytest`` subprocesses, alternating: with
``--simq-worker`` (simq's simulated worker; celery_config's Redis is a closed port) and
without (Celery's own fixtures: a real worker thread, Redis broker and backend). Two
figures per run:

* **tests**: the sum of each test's setup, call and teardown (pytest's junit XML), that is
  the time the tests take once pytest has started;
* **process**: wall time of the whole ``python -m pytest`` process, including starting
  Python and importing pytest, Celery, kombu and redis, which is the same both ways.

Both run with Python's default bytecode cache (``PYTHONDONTWRITEBYTECODE`` removed from
the children's environment, one warm-up run each first). This project's machines set
that variable, and then every process compiles the modules it imports that have no
cached bytecode yet (this project's, the suite's) again, and pytest rewrites the
assertions of every module of a plugin's distribution again.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

SUITE = Path(__file__).resolve().parents[1] / "tests" / "contrib_suite"
REDIS = "redis://127.0.0.1:6379/15"
#: A real run takes 20 to 40 s here; one that takes this long is hung.
TIMEOUT = 150


def _run(simq: bool) -> tuple[float, float, int]:
    """One run: (process seconds, tests seconds, tests passed)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["CONTRIB_SUITE_REDIS"] = "redis://127.0.0.1:1/0" if simq else REDIS
        env["CONTRIB_SUITE_QUEUE"] = f"bench-{uuid.uuid4().hex[:8]}"
        args = [sys.executable, "-m", "pytest", "-q", f"--junitxml={xml}", str(SUITE)]
        if simq:
            args.insert(3, "--simq-worker")
        for attempt in (1, 2):
            start = time.perf_counter()
            try:
                proc = subprocess.run(
                    args, cwd=SUITE, env=env, capture_output=True, text=True,
                    timeout=TIMEOUT, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                # Celery's own test worker (contrib.testing.worker.start_worker) now and
                # then never comes up; the run is taken again once, and said so.
                print(f"- a {'simq' if simq else 'real'} run timed out; taken again", flush=True)
                if attempt == 2:
                    raise
                continue
            break
        process = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"the suite failed ({'simq' if simq else 'real'}):\n{proc.stdout}")
        cases = list(ET.parse(xml).getroot().iter("testcase"))
        tests = sum(float(case.get("time") or 0) for case in cases)
    return process, tests, len(cases)


def _redis_up() -> bool:
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except Exception:
        return False
    return True


def main(rounds: int = 3) -> dict[str, Any]:
    """Alternate ``rounds`` runs each way; medians and ratios."""
    if not _redis_up():
        return {"skipped": f"Redis at {REDIS} does not answer"}
    _run(simq=True)  # warm the bytecode caches of both
    _run(simq=False)
    simq_runs, real_runs = [], []
    for _ in range(rounds):
        simq_runs.append(_run(simq=True))
        real_runs.append(_run(simq=False))
    simq_process = statistics.median(r[0] for r in simq_runs)
    simq_tests = statistics.median(r[1] for r in simq_runs)
    real_process = statistics.median(r[0] for r in real_runs)
    real_tests = statistics.median(r[1] for r in real_runs)
    return {
        "tests": simq_runs[0][2],
        "rounds": rounds,
        "simq_tests_s": simq_tests,
        "real_tests_s": real_tests,
        "simq_process_s": simq_process,
        "real_process_s": real_process,
        "ratio_tests": real_tests / simq_tests,
        "ratio_process": real_process / simq_process,
    }


def report(r: dict[str, Any]) -> None:
    print("\n## celery.contrib.pytest suite: simq's worker vs a real worker with Redis")
    if "skipped" in r:
        print(f"- skipped: {r['skipped']}")
        return
    print(f"{r['tests']} tests (tests/contrib_suite), median of {r['rounds']} alternating runs")
    print("| measure | real worker + Redis | simq --simq-worker | ratio |")
    print("|---|---|---|---|")
    print(
        f"| tests (setup + call + teardown) | {r['real_tests_s']:.2f} s "
        f"| {r['simq_tests_s']:.3f} s | {r['ratio_tests']:.0f} x |"
    )
    print(
        f"| whole `python -m pytest` process | {r['real_process_s']:.2f} s "
        f"| {r['simq_process_s']:.2f} s | {r['ratio_process']:.1f} x |"
    )
    print(f"- target: simq >= 50 x faster: tests {r['ratio_tests']:.0f} x")


if __name__ == "__main__":
    report(main())
