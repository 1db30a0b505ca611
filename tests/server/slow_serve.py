"""`steer serve` with every decode step slowed by a runner double: `python slow_serve.py SECONDS serve ...`.

The drain test (test_srv_lifecycle) needs requests in flight when SIGTERM arrives; production code has no
delay setting, so the delay comes from the test side (`engine_doubles.runner_double`).
"""

from __future__ import annotations

import sys

from engine_doubles import runner_double

import steer_cli
from server.engine.model import LoadedModel

if __name__ == "__main__":
    LoadedModel.runner_class = runner_double(step_delay_s=float(sys.argv[1]))
    raise SystemExit(steer_cli.main(sys.argv[2:]))
