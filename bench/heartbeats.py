"""800 supervisors heartbeating against PostgreSQL: the database load of 100 hosts x 8 slots.

Each simulated supervisor issues exactly the statements a real one issues (captured from the
ORM, see runs/supervisor.py): every TUNIXRT_HEARTBEAT_SECONDS the heartbeat
`UPDATE runs_tunixrun SET heartbeat_at = ... WHERE id = ... AND status = 'running'`, and
every TUNIXRT_LOG_FLUSH_SECONDS the cancel check (`SELECT status, cancel_requested_at ...
WHERE id = ...`). The 800 supervisors are spread over a few processes and threads, each
thread holding one connection (a real supervisor holds its own; see the README's sizing for
the connection count). Two phases, each bounded in time:

  paced      every supervisor at its real cadence: latency (p50/p99) and the CPU the
             postgres processes used, per second of wall time;
  saturated  as fast as the client can send: the most updates/s this server took.

Then EXPLAIN of the claim, heartbeat, reaper and requeue queries on the bench data.

The database is the 100,000-run bench database (bench/_bench_data.py) in a throwaway
server on loopback (.ci/throwaway-postgres: fsync and synchronous_commit are off there;
see the README for what that changes). The machine is shared: the figures are a floor.

Usage: python bench/heartbeats.py [--supervisors 800] [--processes 4] [--threads 8]
                                  [--seconds 20] [--runs 100000] [--database NAME --keep]
"""

import argparse
import multiprocessing
import statistics
import threading
import time
from pathlib import Path

from _bench_data import BenchDatabase, add_arguments

HEARTBEAT = "UPDATE runs_tunixrun SET heartbeat_at = now() WHERE id = %s AND status = 'running'"
CANCEL_CHECK = "SELECT status, cancel_requested_at FROM runs_tunixrun WHERE id = %s LIMIT 1"


def postgres_cpu(data_dir: Path | None) -> float:
    """CPU seconds (user + system) of the postmaster and all its children so far."""
    import psutil

    if data_dir is None:
        return float("nan")
    pid = int((data_dir / "data" / "postmaster.pid").read_text().split()[0])
    total = 0.0
    master = psutil.Process(pid)
    for proc in [master, *master.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            continue
    return total


def worker(url, ids, threads, seconds, beat, flush, paced, out):
    """One client process: `threads` connections, each driving its share of `ids`."""
    import psycopg

    latencies, updates = [], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def drive(mine):
        mine_lat, done = [], 0
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.cursor()
            next_beat = {i: time.monotonic() + beat * k / len(mine) for k, i in enumerate(mine)}
            next_check = {i: time.monotonic() + flush * k / len(mine) for k, i in enumerate(mine)}
            while time.monotonic() < deadline:
                now = time.monotonic()
                for run_id in mine:
                    if not paced or now >= next_beat[run_id]:
                        started = time.perf_counter()
                        cur.execute(HEARTBEAT, (run_id,))
                        mine_lat.append(time.perf_counter() - started)
                        done += 1
                        next_beat[run_id] += beat
                    if paced and now >= next_check[run_id]:
                        cur.execute(CANCEL_CHECK, (run_id,))
                        cur.fetchone()
                        next_check[run_id] += flush
                if paced:
                    time.sleep(0.01)
        with lock:
            latencies.extend(mine_lat)
            updates[0] += done

    shares = [ids[k::threads] for k in range(threads)]
    pool = [threading.Thread(target=drive, args=(share,)) for share in shares if share]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put((updates[0], latencies))


def phase(name, url, ids, args, data_dir, paced):
    out = multiprocessing.Queue()
    shares = [ids[k :: args.processes] for k in range(args.processes)]
    cpu_before, started = postgres_cpu(data_dir), time.perf_counter()
    procs = [
        multiprocessing.Process(
            target=worker,
            args=(url, share, args.threads, args.seconds, args.beat, args.flush, paced, out),
        )
        for share in shares
    ]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    wall = time.perf_counter() - started
    cpu = postgres_cpu(data_dir) - cpu_before
    updates = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan")
    print(
        f"{name:9} {len(ids)} supervisors, {wall:.1f} s: {updates / wall:,.0f} heartbeat "
        f"updates/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, postgres CPU {cpu / wall:.2f} cores",
        flush=True,
    )


def explain_all() -> None:
    from django.db import connection

    statements = {
        "claim (run_claim)": "UPDATE runs_tunixrun SET status = 'running', started_at = now(), "
        "heartbeat_at = now() WHERE id = %s AND status = 'pending'",
        "heartbeat": HEARTBEAT,
        "reaper: stale running runs": "SELECT id FROM runs_tunixrun WHERE status = 'running' "
        "AND heartbeat_at < now() - interval '60 seconds' LIMIT 100",
        "reaper: pending runs to requeue": "SELECT id FROM runs_tunixrun WHERE status = "
        "'pending' AND mode = 'local' AND enqueued_at < now() - interval '600 seconds' LIMIT 100",
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM runs_tunixrun WHERE status = 'running' LIMIT 1")
        some_id = cursor.fetchone()[0]
        for name, sql in statements.items():
            params = (some_id,) if "%s" in sql else ()
            cursor.execute("BEGIN")
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
            lines = [row[0] for row in cursor.fetchall()]
            cursor.execute("ROLLBACK")
            print(f"\n-- {name}\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--supervisors", type=int, default=800)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--beat", type=float, default=5.0, help="TUNIXRT_HEARTBEAT_SECONDS")
    parser.add_argument("--flush", type=float, default=1.0, help="TUNIXRT_LOG_FLUSH_SECONDS")
    parser.set_defaults(chunks=0)
    args = parser.parse_args()
    with BenchDatabase(args) as bench:
        from django.db import connection

        with connection.cursor() as cursor:
            # The 800 busiest rows: running, with a heartbeat, among 100,000 others.
            cursor.execute("UPDATE runs_tunixrun SET status = 'completed' WHERE status = 'running'")
            cursor.execute(
                "UPDATE runs_tunixrun SET status = 'running', heartbeat_at = now() WHERE id IN "
                "(SELECT id FROM runs_tunixrun ORDER BY id LIMIT %s)",
                [args.supervisors],
            )
            cursor.execute("VACUUM ANALYZE runs_tunixrun")
            cursor.execute("SELECT id FROM runs_tunixrun WHERE status = 'running'")
            ids = [str(row[0]) for row in cursor.fetchall()]
        url = bench.url.replace("postgres://", "postgresql://")
        clients = args.processes * args.threads
        print(f"{len(ids)} running runs among {args.runs:,}; {clients} client connections")
        phase("paced", url, ids, args, bench.throwaway, paced=True)
        phase("saturated", url, ids, args, bench.throwaway, paced=False)
        explain_all()


if __name__ == "__main__":
    main()
