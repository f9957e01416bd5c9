"""Entrypoint for `ray job submit -- python jobs/build_passages.py [options]`; same options as
`ray-cora passages`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("passages"))
