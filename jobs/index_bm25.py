"""Entrypoint for `ray job submit -- python jobs/index_bm25.py --passages URI --out URI [...]`;
same options as `ray-cora index-bm25`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("index-bm25"))
