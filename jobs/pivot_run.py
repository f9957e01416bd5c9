"""`ray-cora pivot run` as a `ray job submit` entrypoint: answer questions through the pivot database."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("pivot run"))
