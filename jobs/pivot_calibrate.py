"""`ray-cora pivot calibrate` as a `ray job submit` entrypoint: calibrate the pivot abstention threshold."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("pivot calibrate"))
