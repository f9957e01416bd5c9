"""Entrypoint for `ray job submit -- python jobs/iterate.py [...]`; same options as `ray-cora iterate`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("iterate"))
