"""``python -m bench``: run every benchmark and print a table (figures for docs/benchmarks.md)."""

from __future__ import annotations

import platform
import sys

from bench import roundtrip


def main() -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    r = roundtrip.main()
    t = r["throughput"]
    print("\n## Round trip per task (median of 5 rounds, measured side by side)")
    print("| measure | µs per task | ratio to Celery eager apply() |")
    print("|---|---|---|")
    print(f"| Celery 5.7 eager `Task.apply()` | {r['celery_eager_us']:.1f} | 1.00 |")
    print(
        f"| simq round trip, 20,000 queued then `sim.run()` | {r['simq_batch_us']:.1f} "
        f"| {r['ratio_batch']:.2f} |"
    )
    print(
        f"| simq round trip, `delay().get()` each | {r['simq_get_each_us']:.1f} "
        f"| {r['ratio_get_each']:.2f} |"
    )
    print(f"\n## {t['tasks']:,} queued trivial tasks")
    print(f"- {t['tasks_per_second']:,.0f} tasks per second")
    print(f"- peak traced memory {t['peak_mib']:.1f} MiB ({t['events']:,} history events)")
    try:
        from bench import timepatch
    except ImportError:
        return
    print("\n## Virtual time: time-machine vs freezegun")
    timepatch.main()


if __name__ == "__main__":
    main()
