"""`ray-cora pivot build` as a `ray job submit` entrypoint: build an English pivot database."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("pivot build"))
