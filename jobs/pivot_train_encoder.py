"""`ray-cora pivot train-encoder` as a `ray job submit` entrypoint: fine-tune the pivot's sentence encoder for MIPS with Ray Train."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("pivot train-encoder"))
