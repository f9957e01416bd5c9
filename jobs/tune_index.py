"""`ray job submit` entrypoint of `ray-cora tune-index` (same options)."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("tune-index"))
