"""Entrypoint for `ray job submit -- python jobs/train_mgen.py [...]`; same options as `ray-cora train-mgen`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("train-mgen"))
