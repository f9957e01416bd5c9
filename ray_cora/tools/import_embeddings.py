"""``ray-cora import-embeddings``: CORA/DPR released embedding pickles → a sharded index."""

from __future__ import annotations

from ray_cora.configs.import_embeddings import ImportEmbeddingsConfig
from ray_cora.index.cora_import import import_cora_embeddings


def import_embeddings(config: ImportEmbeddingsConfig) -> dict:
    manifest = import_cora_embeddings(config.inputs, config.out, shard_size=config.shard_size,
                                      encoder_spec=config.encoder)
    print(f"imported {manifest['num_vectors']} vectors (dim {manifest['encoder']['dim']}) into "
          f"{len(manifest['shards'])} shards at {config.out}")
    return manifest
