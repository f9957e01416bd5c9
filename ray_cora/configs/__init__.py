"""The job configs: one frozen pydantic model per job, loaded from YAML and overridden on the
command line (:mod:`.arguments`). They sit at the bottom of the import order, above only the core
modules whose validators they call: every layer imports them, they import no layer."""

from ray_cora.configs.base import JobConfig, RayJobConfig, TrainRunConfig
from ray_cora.configs.demo import DemoConfig
from ray_cora.configs.embed import EmbedConfig
from ray_cora.configs.evaluate import EvaluateAllConfig, EvaluateRetrievalConfig
from ray_cora.configs.evaluate_qa import ConvertPredictionsConfig, EvaluateQAConfig
from ray_cora.configs.fusion import TuneFusionConfig
from ray_cora.configs.generate import GenerateConfig
from ray_cora.configs.import_embeddings import ImportEmbeddingsConfig
from ray_cora.configs.iterate import IterateConfig
from ray_cora.configs.lexical import LexicalIndexConfig
from ray_cora.configs.options import ActorPoolOptions, DecodingOptions, IndexOptions, OptionGroup, TaskOptions
from ray_cora.configs.passages import PassagesConfig
from ray_cora.configs.pivot import (
           PivotBuildConfig,
           PivotCalibrateConfig,
           PivotRunConfig,
           PivotTrainRerankerConfig,
)
from ray_cora.configs.retrieve import RetrieveConfig
from ray_cora.configs.serve import ServeAppOptions, ServeConfig
from ray_cora.configs.train import TrainMDPRConfig, TrainMGENConfig
from ray_cora.configs.tune_index import TuneIndexConfig
from ray_cora.configs.validate import ValidateConfig
from ray_cora.configs.wikidata import WikidataLabelsConfig

__all__ = ["ActorPoolOptions", "ConvertPredictionsConfig", "DecodingOptions", "DemoConfig", "EmbedConfig",
           "EvaluateAllConfig", "EvaluateQAConfig", "EvaluateRetrievalConfig", "GenerateConfig", "ImportEmbeddingsConfig",
           "IndexOptions", "IterateConfig", "JobConfig", "LexicalIndexConfig", "OptionGroup", "PassagesConfig", "PivotBuildConfig",
           "PivotCalibrateConfig", "PivotRunConfig", "PivotTrainRerankerConfig", "RayJobConfig",
           "RetrieveConfig", "ServeAppOptions", "ServeConfig", "TaskOptions", "TrainMDPRConfig",
           "TrainMGENConfig", "TrainRunConfig", "TuneFusionConfig", "TuneIndexConfig", "ValidateConfig", "WikidataLabelsConfig"]
