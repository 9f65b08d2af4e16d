"""`make bench`: every figure beside its baseline, measured in the same run on this machine.

Starts its own sandbox, prints one table, and writes it as JSON to build/bench.json.
Usage: python bench/run.py [--quick] [--only NAME[,NAME...]]
       python bench/run.py --peers [--quick] [--rounds N]   (this project beside its peers,
       on a server with the binary log on: see peers.py; written to build/bench-peers.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import bench_console
import bench_outbox
import bench_worker
import peers
from common import ROOT, Figure, progress, spread

from workerhost.sandbox.options import GEARMAN_QUEUES, GEARMAN_THREADS, MEMORY_QUEUE
from workerhost.sandbox.stack import Sandbox

UDF_SO = ROOT / "udf" / "build" / "gearman_udf.so"


def sections(box: Sandbox, work: Path, database: str, quick: bool
             ) -> dict[str, Callable[[], list[Figure]]]:
    found: dict[str, Callable[[], list[Figure]]] = {}
    try:
        import bench_udf

        found["udf"] = lambda: _udf_figures(bench_udf.run(box, quick))
    except ImportError:
        pass
    found.update({
        "outbox": lambda: bench_outbox.trigger_overhead(box, database, quick),
        "relay": lambda: bench_outbox.relay_rate(box, database, quick),
        "worker": lambda: bench_worker.empty_handler(box, work, database, quick),
        "e2e": lambda: bench_worker.end_to_end(box, work, database, quick),
        "latency": lambda: bench_worker.latency(box, work, database, quick),
        "memory": lambda: bench_worker.memory(box, work, database, quick),
        "console": lambda: bench_console.run(box, work, quick),
    })
    return found


def _udf_figures(result: dict[str, Any]) -> list[Figure]:
    """bench_udf's result as figures: trigger overhead per row beside the plain INSERT's cost
    per row (the old gearman-mysql-udf 0.6 measured about 270 us bulk, 200 us single)."""
    figures = [
        Figure(f"UDF delivery, trigger overhead, {result['bulk_rows']}-row INSERT", "us/row",
               result["bulk_runs_us_per_row"], "the same INSERT, no trigger (us/row)",
               result["bulk_plain_runs_us_per_row"], "<= 130 us/row", higher_is_better=False),
        Figure(f"UDF delivery, trigger overhead, {result['single_rows']} autocommit INSERTs",
               "us/row", result["single_runs_us_per_row"], "the same, no trigger (us/row)",
               result["single_plain_runs_us_per_row"], "<= 130 us/row",
               higher_is_better=False),
    ]
    figures.append(Figure(
        "  single-row: a trigger building the same payload, no UDF (floor)", "us/row",
        result["single_floor_runs_us_per_row"], target="(bound)", higher_is_better=False))
    figures.append(Figure(
        "  one gearmand round trip, submit + JOB_CREATED (floor)", "us",
        result["round_trip_runs_us"], target="(bound)", higher_is_better=False))
    if "persistent_queue_bulk_overhead_us_per_row" in result:
        figures.append(Figure(
            "UDF delivery, bulk, gearmand with libsqlite3 queue", "us/row",
            [result["persistent_queue_bulk_overhead_us_per_row"]], target="(gearmand's fsync)",
            higher_is_better=False))
    if "default_threads_single_runs_us_per_row" in result:
        threads = result["default_threads"]
        figures.append(Figure(
            f"UDF delivery, single-row, gearmand with its default {threads} I/O threads",
            "us/row", result["default_threads_single_runs_us_per_row"],
            target="(gearmand's threads)", higher_is_better=False))
        figures.append(Figure(
            f"  one round trip to that gearmand ({threads} I/O threads)", "us",
            result["default_threads_round_trip_runs_us"], target="(bound)",
            higher_is_better=False))
    return figures


def table(figures: list[Figure]) -> str:
    rows = [("figure", "median", "spread", "baseline (same run)", "base median", "ratio",
             "target")]
    for f in figures:
        base = f.baseline
        rows.append((
            f.name, f"{f.value:.4g} {f.unit}", spread(f.runs), f.baseline_name or "-",
            f"{base:.4g}" if base is not None else "-",
            f"{f.ratio:.2f}x" if f.ratio is not None else "-", f.target or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a sanity check")
    parser.add_argument("--only", help="comma-separated sections")
    parser.add_argument("--gearman-queue", choices=GEARMAN_QUEUES, default=MEMORY_QUEUE,
                        help="gearmand's queue (default builtin: libsqlite3 fsyncs every job, "
                             "which bounds every figure at gearmand's disk)")
    parser.add_argument("--gearman-threads", type=int, default=GEARMAN_THREADS, metavar="N",
                        help=f"gearmand's I/O threads (default {GEARMAN_THREADS}, the sandbox's)")
    parser.add_argument("--peers", action="store_true",
                        help="only this project's deliveries beside a polling outbox and a "
                             "binlog CDC reader, on a server with its binary log on")
    parser.add_argument("--stack", choices=sorted(peers.STACKS), default="mariadb",
                        help="with --peers: the server and client shapes (see bench/peers.py)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="--peers: rounds, the systems taking turns in each (default 3)")
    args = parser.parse_args()
    if args.gearman_threads < 0:
        parser.error(f"--gearman-threads: {args.gearman_threads} is negative; give 0 or more")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds}; give 1 or more")
    if args.peers:
        if args.only:
            parser.error("--peers runs on a server of its own settings: not with --only")
        return _peers(args)

    with tempfile.TemporaryDirectory(prefix="workerhost-bench-") as tmp:
        box = Sandbox(Path(tmp) / "sandbox")
        progress(f"starting a sandbox in {box.dir}")
        box.up(gearman_queue=args.gearman_queue, gearman_threads=args.gearman_threads)
        try:
            if UDF_SO.exists():
                box.install_udf(UDF_SO)
            database = "bench"
            admin = box.connect()
            admin.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {database}")
            admin.close()
            figures: list[Figure] = []
            chosen = sections(box, Path(tmp), database, args.quick)
            wanted = args.only.split(",") if args.only else list(chosen)
            unknown = [name for name in wanted if name not in chosen]
            if unknown:
                parser.error(f"--only: no section {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(chosen)}")
            for name in wanted:
                started = time.monotonic()
                figures.extend(chosen[name]())
                progress(f"{name} done in {time.monotonic() - started:.0f}s")
        finally:
            box.down()

    print(table(figures))
    out = ROOT / "build" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(),
        "quick": args.quick, "gearman_queue": args.gearman_queue,
        "gearman_threads": args.gearman_threads,
        "figures": [f.as_dict() for f in figures],
    }, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


def _peers(args: argparse.Namespace) -> int:
    for system, reason in peers.unavailable().items():
        print(f"{system} peer skipped: {reason}", flush=True)
    stack = peers.STACKS[args.stack]
    if args.quick:
        stack = stack.quick()
    with tempfile.TemporaryDirectory(prefix="workerhost-bench-peers-") as tmp:
        box = peers.BinlogSandbox(Path(tmp) / "sandbox", server=stack.server)
        progress(f"starting a sandbox with the binary log on in {box.dir}")
        box.up(gearman_queue=args.gearman_queue, gearman_threads=args.gearman_threads)
        try:
            if not UDF_SO.exists():
                raise SystemExit(f"{UDF_SO} is missing: immediate delivery needs the UDF "
                                 "(make udf)")
            box.install_udf(UDF_SO)
            database = "bench"
            admin = box.connect()
            admin.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {database}")
            admin.close()
            started = time.monotonic()
            results, skipped = peers.run(box, Path(tmp), database, stack, args.rounds)
            progress(f"peers done in {time.monotonic() - started:.0f}s")
        finally:
            box.down()
    settings = ", ".join(f"{name}={value}" for name, value in peers.DURABLE.items())
    print(f"medians of {args.rounds} rounds; {stack.server} with {settings}")
    print(peers.table(results, stack))
    for system, why in skipped.items():
        print(f"{system} skipped: {why}")
    print()
    print("\n".join(peers.verdict(results)))
    name = "" if args.stack == "mariadb" else "-" + args.stack.replace(":", "-")
    out = ROOT / "build" / f"bench-peers{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(),
        "quick": args.quick, "rounds": args.rounds, "stack": vars(stack),
        "server_options": peers.DURABLE, "skipped": skipped, "runs": peers.as_dict(results),
    }, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


def _machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Python {python}"


if __name__ == "__main__":
    sys.exit(main())
