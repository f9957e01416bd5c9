"""`ray-cora wikidata labels` as a `ray job submit` entrypoint: Wikidata dump to label and sitelink tables."""

import sys

from ray_cora.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("wikidata labels"))
