"""Entrypoint for `ray job submit -- python jobs/serve.py [options]`; same options as `ray-cora serve`.
(On a long-lived cluster prefer `serve deploy cluster/serve_config.yaml`.)"""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("serve"))
