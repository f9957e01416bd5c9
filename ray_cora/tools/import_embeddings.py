"""``ray-cora import-embeddings``: CORA/DPR released embedding pickles → a sharded index."""

from __future__ import annotations

from ray_cora.configs.import_embeddings import ImportEmbeddingsConfig
from ray_cora.encoders import encoder_record
from ray_cora.errors import StorageError
from ray_cora.index.cora_import import import_cora_embeddings
from ray_cora.storage import expand_pattern


def import_embeddings(config: ImportEmbeddingsConfig) -> dict:
    inputs = [uri for pattern in config.inputs for uri in expand_pattern(pattern)]
    try:  # what the model is: checkpoint sha256, options, the query format its questions need
        encoder = encoder_record(config.encoder)
    except StorageError as exc:
        print(f"import-embeddings: note: cannot read the encoder ({exc}); the index records it by its spec "
              "only, and retrieval checks no more than the spec and the vector size")
        encoder = {"spec": config.encoder, "normalized": False}
    manifest = import_cora_embeddings(inputs, config.out, shard_size=config.shard_size, encoder=encoder,
                                      lang=config.lang, passages=config.passages,
                                      spec=config.index_spec())
    languages = ", ".join(f"{lang} {count}" for lang, count in manifest.get("per_language", {}).items())
    print(f"imported {manifest['num_vectors']} vectors (dim {manifest['encoder']['dim']}) into "
          f"{len(manifest['shards'])} shards at {config.out}; passage languages: {languages}")
    return manifest
