"""``python -m bench``: run every benchmark and print a table (figures for docs/benchmarks.md)."""

from __future__ import annotations

import platform
import sys

from bench import roundtrip


def main() -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    r = roundtrip.main()
    t = r["throughput"]
    print("\n## Per task, a trivial task (median of 5 rounds, measured side by side)")
    print("| measure | µs per task |")
    print("|---|---|")
    print(
        f"| (a) simq: `delay().get()` on a real Celery app in a simulation | {r['simq_us']:.1f} |"
    )
    print(
        f"| (b) Celery's own code path alone (message, kombu, tracer, KV backend, get) | {r['celery_path_us']:.1f} |"
    )
    print(f"| (c) Celery eager `Task.apply()` | {r['eager_us']:.1f} |")
    print(
        f"| (d) Celery's in-process memory:// worker, `delay().get()` | {r['memory_worker_us']:.1f} |"
    )
    print(f"\n- (a) / (c) = {r['ratio_eager']:.2f} (target <= 3)")
    print(f"- (a) / (d) = {r['ratio_memory_worker']:.3f} (target <= 0.5)")
    print(f"- simq's own overhead (a) - (b) = {r['overhead_us']:.1f} µs (target <= 20)")
    print(
        f"- enter + leave an empty simulation: {r['enter_leave_us']:.1f} µs; "
        f"new Celery app + one eager call: {r['new_app_eager_us']:.1f} µs"
    )
    print(f"\n## {t['tasks']:,} queued trivial tasks")
    print(f"- {t['tasks_per_second']:,.0f} tasks per second")
    print(f"- peak traced memory {t['peak_mib']:.1f} MiB ({t['events']:,} history events)")
    from bench import campaign, contrib

    contrib.report(contrib.main())
    campaign.report(campaign.main())
    try:
        from bench import timepatch
    except ImportError:
        return
    print("\n## Virtual time: time-machine vs freezegun")
    timepatch.main()


if __name__ == "__main__":
    main()
