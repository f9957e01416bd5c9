"""Entrypoint for `ray job submit -- python jobs/embed_corpus.py --passages URI --out URI [...]`;
same options as `ray-cora embed`."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("embed"))
