#!/usr/bin/env python3
"""What ``sts mappings plan`` costs at scale (docs/benchmarks.md, "Planning a mapping change"):
wall time and peak memory of the real command, as an operator or a CI job runs it.

    python bench/plan.py [--count 100000] [--identities 50000] [--database sqlite|postgres]

Setup (in a child process, so that the measured command does not inherit its memory): a fresh
database (an SQLite file in a temporary directory, or a new PostgreSQL schema dropped afterwards)
holding ``--count`` generated mappings (bench/run.py's, 8 per account) and an audit trail of
``--identities`` distinct identities, each the caller of one mapping, inserted directly as rows.
One identity in 50 also has a row with a mapping that does not bind it (it named it), one in 10
is ``pending``, one in 20 refused. The file is the same mappings with one in 100 deleted, one in
100 pointed at another role, one in 100 disabled and, for one in 100, a new mapping on the
caller's exact deployment (so 4 in 100 callers change: loses, moves with the target, loses, moves).

Then it runs ``sts mappings plan FILE --prune --since 30d`` (text) and the same with ``--json``,
each as its own process, and reports the seconds and peak resident memory (``ru_maxrss`` of that
process, from ``wait4``) with the last line of its output.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness.constants import WIPS  # noqa: E402
from run import caller_claims, mapping_document, postgres_schema  # noqa: E402

from sts.db import Database  # noqa: E402
from sts.db.models import IssuanceEvent, MappingRevision, RoleMapping  # noqa: E402
from sts.mappings import store  # noqa: E402
from sts.mappings.document import spec_from_dict  # noqa: E402

BATCH = 5000


def tag(j: int) -> str:
    return f"{j:06d}"


def mapping_of(j: int) -> int:
    """The mapping identity ``j`` calls: every other one, production and preview in turn."""
    return 2 * j + j % 2


def setup(url: str, file: Path, count: int, identities: int) -> None:
    """Migrate, insert the mappings and the audit trail as rows, write the planned file."""
    database = Database(url)
    database.upgrade()
    now = datetime.now(UTC)
    documents = [mapping_document(i) for i in range(count)]
    with database.engine.begin() as conn:
        for start in range(0, count, BATCH):
            rows = []
            for i in range(start, min(start + BATCH, count)):
                spec = spec_from_dict(documents[i], f"bench[{i}]")
                rows.append({**store.row_values(spec), "created_at": now, "updated_at": now})
            conn.execute(sa.insert(RoleMapping), rows)
        conn.execute(sa.update(MappingRevision).values(revision=1))
        events: list[dict[str, Any]] = []
        for j in range(identities):
            i = mapping_of(j) % count
            claims = caller_claims(i, tag(j))
            outcome = "issued"
            if j % 10 == 9:
                outcome = "pending"
            elif j % 20 == 7:
                outcome = "invalid_target:AccessDenied"
            named = [documents[i]["name"]]
            if j % 50 == 11:
                named.append(documents[i ^ 1]["name"])
            for name in named:
                events.append(
                    {
                        "created_at": now - timedelta(days=j % 7, seconds=j % 86400),
                        "issuer": "https://issuer.bench.example",
                        "sub": claims["sub"],
                        "account": claims["account"],
                        "project": claims["project"],
                        "deployment": claims["deployment"],
                        "environment_type": claims["environment_type"],
                        "mapping": name,
                        "provider": "aws",
                        "target": "arn:aws:iam::123456789012:role/bench",
                        "outcome": outcome,
                    }
                )
            if len(events) >= BATCH:
                conn.execute(sa.insert(IssuanceEvent), events)
                events = []
        if events:
            conn.execute(sa.insert(IssuanceEvent), events)
    database.dispose()

    # What the file does to the mapping of identity j, by j % 100.
    edits = {mapping_of(j) % count: (j % 100, tag(j)) for j in range(identities) if j % 100 < 4}
    planned = []
    for i, original in enumerate(documents):
        edit, caller = edits.get(i, (None, ""))
        if edit == 0:
            continue  # deleted
        # Copies: a document shared by two entries would be dumped as a YAML alias (refused).
        doc = copy.deepcopy(original)
        if edit == 1:
            # Another target: what the callers of this mapping now obtain.
            if "aws" in doc:
                doc["aws"]["role_arn"] += "-moved"
            elif "service_account" in doc["gcp"]:
                doc["gcp"]["service_account"] = "moved-" + doc["gcp"]["service_account"]
            else:
                wip = WIPS.index(doc["gcp"]["workload_identity_provider"])
                doc["gcp"]["workload_identity_provider"] = WIPS[(wip + 1) % len(WIPS)]
        if edit == 2:
            doc["enabled"] = False
        planned.append(doc)
        if edit == 3:
            exact = copy.deepcopy(doc)
            exact.update(
                name=f"x{i:06d}-exact",
                deployment=caller_claims(i, caller)["deployment"],
                description="exact deployment",
            )
            planned.append(exact)
    with file.open("w") as handle:
        yaml.dump({"mappings": planned}, handle, Dumper=yaml.CSafeDumper, sort_keys=False)


def sts(*args: str, env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user + system), peak resident KiB and the last line of
    standard output of ``sts ARGS`` (for ``--json``, the counts)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "sts", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert process.stdout is not None
        out = process.stdout.read()
        # wait4, not wait: the child's own rusage, not that of every child so far.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"sts {' '.join(args)} failed: {errors.read()[-500:]}")
    lines = out.splitlines()
    last = lines[-1] if lines else ""
    if args[-1] == "--json":
        last = json.dumps(json.loads(out)["counts"], separators=(",", ":"))
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, last


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--identities", type=int, default=50_000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--setup", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.identities * 2 > args.count:
        parser.error("--identities may be at most half of --count (one mapping each)")
    if args.setup:
        setup(args.setup[0], Path(args.setup[1]), args.count, args.identities)
        return
    print(machine())
    with tempfile.TemporaryDirectory(prefix="sts-plan-") as scratch:
        work = Path(scratch)
        file = work / "planned.yaml"
        sqlite = contextlib.nullcontext(f"sqlite:///{work / 'sts.db'}")
        with postgres_schema() if args.database == "postgres" else sqlite as database_url:
            started = time.perf_counter()
            subprocess.run(
                [
                    *(sys.executable, __file__, "--setup", database_url, str(file)),
                    *("--count", str(args.count), "--identities", str(args.identities)),
                ],
                check=True,
            )
            print(
                f"{args.count:,} mappings, {args.identities:,} identities, {args.database}; "
                f"setup {time.perf_counter() - started:.1f} s; "
                f"file {file.stat().st_size / 1e6:.1f} MB"
            )
            env = {**os.environ, "STS_DATABASE_URL": database_url}
            print("| command | wall s | CPU s | peak MB | load before | last line |")
            print("|---|---|---|---|---|---|")
            for extra in ((), ("--json",)):
                command = ("mappings", "plan", str(file), "--prune", "--since", "30d", *extra)
                # Wall time depends on what else the machine runs; CPU time much less.
                load = os.getloadavg()[0]
                seconds, cpu, peak_kib, last = sts(*command, env=env)
                shown = " ".join(("sts", *command)).replace(str(file), "FILE")
                print(
                    f"| `{shown}` | {seconds:.1f} | {cpu:.1f} | {peak_kib / 1024:.0f} | "
                    f"{load:.1f} | {last} |"
                )


if __name__ == "__main__":
    main()
