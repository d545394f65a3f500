"""The parts of the benchmark; ``bench/run.py`` is the command (docs/benchmarks.md).

- :mod:`harness.constants`: paths, addresses, sizes and the servers' labels;
- :mod:`harness.tools`: the log line and what the run installs when it is missing (wrk, Node.js
  and the comparators' npm packages, py-spy, gunicorn);
- :mod:`harness.processes`: child processes in their own groups, free ports, readiness;
- :mod:`harness.workload`: generated mappings, identities, tokens and form bodies;
- :mod:`harness.database`: a fresh database with the mappings applied;
- :mod:`harness.wrk`: one wrk run and its result;
- :mod:`harness.servers`: how each server configuration and comparator is started;
- :mod:`harness.client`: requests to a started server (first answer, warm-up, exchanging bodies);
- :mod:`harness.stack`: :class:`~harness.stack.Bench`, the emulators and the measurement;
- :mod:`harness.scenarios`, :mod:`harness.head_to_head`, :mod:`harness.isolation`,
  :mod:`harness.single_flight`: the scenarios;
- :mod:`harness.report`: the results, the table and the summary;
- :mod:`harness.cli`: the options and the whole run.

Importing the package puts the repository root on ``sys.path``, so ``sts`` imports from a
checkout as well as from an installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
