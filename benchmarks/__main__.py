"""``python -m benchmarks``: run the matrix, print the tables, write JSON / PNG / Markdown on request."""

from __future__ import annotations

import argparse
import sys
import time

from . import report, runner, transports, workloads

MODES = ("batch", "objects", "inplace")


def _csv(value: str, known) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; known: {', '.join(known)}")
    return items


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short CI run (under a minute): 0.4 s, 1 repetition, 500 round trips")
    p.add_argument("--transports", type=lambda v: _csv(v, transports.NAMES), default=list(transports.NAMES),
                   help=f"comma-separated subset of {','.join(transports.NAMES)}")
    p.add_argument("--modes", type=lambda v: _csv(v, MODES), default=["batch", "objects"],
                   help="batch,objects,inplace (inplace: each transport's own zero-copy send, where it has one)")
    p.add_argument("--workloads", type=lambda v: _csv(v, workloads.WORKLOAD_NAMES), default=list(workloads.WORKLOAD_NAMES),
                   help=f"comma-separated subset of {','.join(workloads.WORKLOAD_NAMES)}")
    p.add_argument("--seconds", type=float, default=None, help="time budget per run (default 2, quick 0.4)")
    p.add_argument("--max-packets", type=int, default=None, help="packet budget per run (default 50M, quick 5M)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per cell, median reported (default 3, quick 1)")
    p.add_argument("--round-trips", type=int, default=None, help="latency ping-pong round trips (default 2000, quick 500)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--plot", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH", help="rewrite the results section of this Markdown file")
    args = p.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (0.4 if quick else 2.0)
    args.max_packets = args.max_packets if args.max_packets is not None else (5_000_000 if quick else 50_000_000)
    args.repeat = args.repeat if args.repeat is not None else (1 if quick else 3)
    args.round_trips = args.round_trips if args.round_trips is not None else (500 if quick else 2000)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    available, skipped = {}, {}
    for name in args.transports:
        try:
            available[name] = transports.load(name)
        except transports.Unavailable as exc:
            skipped[name] = str(exc)
            say(f"skipping transport {name}: {exc}")

    works = []
    for w in workloads.build(args.workloads):
        if w.skipped:
            skipped[f"workload {w.name}"] = w.skipped
            say(f"skipping workload {w.name}: {w.skipped}")
        else:
            works.append(w)

    memcpy = runner.run_memcpy(0.2 if args.quick else 1.0)
    memcpy["cache_resident"] = runner.run_memcpy(0.1 if args.quick else 0.5, size=1 << 20)
    say(f"memcpy: {memcpy['gb_per_s']:.2f} GB/s (64 MiB), {memcpy['cache_resident']['gb_per_s']:.2f} GB/s (1 MiB)")

    cells = {}
    for rep in range(args.repeat):
        for w in works:
            for mode in args.modes:
                for name, cls in available.items():
                    if mode == "inplace" and not cls.inplace:
                        continue  # no zero-copy send of its own
                    r = runner.run_throughput(cls, mode, w, args.seconds, args.max_packets)
                    cells.setdefault((name, mode, w.name), []).append(r)
                    figure = f"{r['pps'] / 1e6:8.3f} Mpkt/s" if r["status"] == "ok" else f"FAILED: {r['reason']}"
                    say(f"[{rep + 1}/{args.repeat}] {mode:7s} {w.name:5s} {name:10s} {figure}")

    throughput = []
    for (name, mode, wname), reps in cells.items():
        w = next(x for x in works if x.name == wname)
        row = runner.median_result(reps)
        row.update(transport=name, label=available[name].label, mode=mode, workload=wname,
                   workload_label=w.label, mean_packet_bytes=w.mean_size)
        throughput.append(row)
    order = {n: i for i, n in enumerate(transports.NAMES)}
    worder = {n: i for i, n in enumerate(workloads.WORKLOAD_NAMES)}
    throughput.sort(key=lambda r: (r["mode"], worder[r["workload"]], order[r["transport"]]))

    latency = []
    if not args.no_latency:
        for name, cls in available.items():
            r = runner.run_latency(cls, args.round_trips, warmup=50 if args.quick else 200)
            r.update(transport=name, label=cls.label)
            latency.append(r)
            say(f"latency {name:10s} " + (f"p50 {r['p50_us']:.1f} us p99 {r['p99_us']:.1f} us" if r["status"] == "ok" else f"FAILED: {r['reason']}"))

    doc = {
        "machine": runner.machine_info(),
        "settings": {"seconds": args.seconds, "max_packets": args.max_packets, "repeat": args.repeat,
                     "round_trips": args.round_trips, "quick": args.quick, "batch_packets": workloads.BATCH_PACKETS,
                     "capacity_bytes": transports.CAPACITY_BYTES},
        "memcpy": memcpy,
        "skipped": skipped,
        "methods": {n: c.method for n, c in available.items()},
        "workloads": {w.name: {"pool_packets": w.pool_packets, "mean_packet_bytes": w.mean_size} for w in works},
        "throughput": throughput,
        "latency": latency,
        "elapsed_s": None,
    }
    report.add_ratios(doc)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    report.print_report(doc)
    if args.json:
        report.write_json(doc, args.json)
    if args.plot:
        report.plot(doc, args.plot)
    if args.markdown:
        report.rewrite_markdown(doc, args.markdown)
    say(f"done in {doc['elapsed_s']} s")
    failed = [r for r in throughput + latency if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
