"""Entrypoint for `ray job submit -- python jobs/generate.py [...]`; same options as `ray-cora generate`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("generate"))
