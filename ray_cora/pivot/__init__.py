"""The RM-MIPS cross-lingual pivot (Montero et al., "Pivot Through English"): a question in any
language is matched to an English question→answer database by MIPS, optionally reranked by a
cross-encoder, and the English answer is translated back (Wikidata labels, then MT).

Front door: :class:`PivotPipeline` (single-query and batch API), :func:`build_database`,
:class:`PivotDatabase`; ``ray-cora pivot build|run|calibrate|train-reranker`` are the jobs.
"""

from ray_cora.pivot.calibrate import Calibration, pick_threshold
from ray_cora.pivot.database import PivotDatabase, build_database, iter_db_records
from ray_cora.pivot.pipeline import PivotPipeline
from ray_cora.pivot.rerank import CrossEncoder, build_tiny_cross_encoder
from ray_cora.pivot.translate import AnswerTranslator, HFTranslator, LabelTable

__all__ = ["AnswerTranslator", "Calibration", "CrossEncoder", "HFTranslator", "LabelTable", "PivotDatabase",
           "PivotPipeline", "build_database", "build_tiny_cross_encoder", "iter_db_records", "pick_threshold"]
