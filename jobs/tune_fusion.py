"""`ray job submit` entrypoint of `ray-cora tune fusion` (same options)."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("tune fusion"))
