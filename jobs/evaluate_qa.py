"""Entrypoint for `ray job submit -- python jobs/evaluate_qa.py [options]`; same options as `ray-cora evaluate qa`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("evaluate qa"))
