"""Thin Ray layers (Ray Data pipelines) over the pure core; only these modules import ray."""
