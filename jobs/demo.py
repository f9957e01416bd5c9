"""Entrypoint for `ray job submit -- python jobs/demo.py [options]`; same options as `ray-cora demo`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("demo"))
