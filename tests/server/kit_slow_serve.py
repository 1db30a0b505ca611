"""`steer serve` with every decode step slowed by a runner double:
`python -m tests.server.kit_slow_serve SECONDS serve ...` (from the repo root).

The drain test (test_lifecycle) needs requests in flight when SIGTERM arrives; production code has no
delay setting, so the delay comes from the test side (`kit_doubles.runner_double`).
"""

from __future__ import annotations

import sys

import steer_cli
from server.engine.model import LoadedModel
from tests.server.kit_doubles import runner_double

if __name__ == "__main__":
    LoadedModel.runner_class = runner_double(step_delay_s=float(sys.argv[1]))
    raise SystemExit(steer_cli.main(sys.argv[2:]))
