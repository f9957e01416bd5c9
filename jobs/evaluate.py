"""`ray job submit` entrypoint of `ray-cora evaluate all` (same options): retrieve for every requested
language in parallel and score it."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("evaluate all"))
