"""Option groups the job configs inherit, so that each option is declared once: one name, one help
text, one set of bounds. A job that needs another default re-declares only the default::

    class DemoConfig(ActorPoolOptions, RayJobConfig):
        actor_cpus: float = ActorPoolOptions.option("actor_cpus", 0.5)

Names: ``actors`` is the size of a job's one actor pool (``<pool>_actors`` where a job has several
pools, as ``retrieve``'s ``encoder_actors``/``writer_actors``/``search_actors`` and ``evaluate
all``'s ``generate_actors``); ``actor_cpus``/``actor_gpus`` what each actor reserves; ``tasks`` and
``task_cpus`` for Ray tasks; ``cpus_per_worker`` for Ray Train workers
(:class:`~ray_cora.configs.base.TrainRunConfig`, Ray Train's own term); ``decoding``,
``num_beams``, ``max_source_length`` and ``max_target_length`` for mGEN's decoding (``generate``,
``evaluate all``, ``serve``). The old names stay
accepted as aliases, in YAML and on the command line (see :func:`~ray_cora.configs.base.aliases`):
``concurrency`` and ``num_actors`` for ``actors``, ``concurrency`` for ``tasks``,
``num_cpus_per_task`` for ``task_cpus``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic.fields import FieldInfo

from ray_cora.configs.base import ConfigModel, OptionForms, aliases
from ray_cora.data.passages import MAX_PASSAGE_CHARS
from ray_cora.encoders import check_encoder_spec
from ray_cora.index.spec import IndexSpec, IndexType
from ray_cora.languages import normalize_lang
from ray_cora.models.mgen import DecodingName


def _optional(check: Any) -> Any:
    return lambda value: check(value) if value else None


# Option types checked where they are declared, so a job config needs no validator of its own:
# an encoder spec (``muse``, ``hf:…``, ``dpr:…``; one line naming what is wrong) and a language
# code (canonical: ``zh-Hans`` → ``zh_cn``). The ``Optional…`` forms take ``None``/``""`` as unset.
ENCODER_FORMS = OptionForms("muse | hf:<model name or folder>[?pooling=cls|mean&max_length=N&normalize=true] | "
                            "dpr:<CORA/DPR checkpoint .cpt>[?max_length=N]")
EncoderSpec = Annotated[str, AfterValidator(check_encoder_spec), ENCODER_FORMS]
OptionalEncoderSpec = Annotated[str | None, AfterValidator(_optional(check_encoder_spec)), ENCODER_FORMS]
LangCode = Annotated[str, AfterValidator(normalize_lang)]
OptionalLangCode = Annotated[str | None, AfterValidator(_optional(normalize_lang))]


class OptionGroup(ConfigModel):
    """A few options several jobs share; a job config inherits the group."""

    @classmethod
    def option(cls, name: str, default: Any) -> Any:
        """The group's option ``name`` with another default (same type, bounds, help and aliases).

        >>> ActorPoolOptions.option("actor_cpus", 1.0).default
        1.0
        """
        return FieldInfo.merge_field_infos(cls.model_fields[name], default=default)


class ActorPoolOptions(OptionGroup):
    """A job with one Ray Data actor pool: how many actors, and what each one reserves."""

    options_title: ClassVar[str | None] = "actor pool"
    actors: int = Field(1, ge=1, description="Actors in the job's Ray Data actor pool (one per GPU on GPU "
                        "clusters)", **aliases("actors", "concurrency", "num_actors"))
    actor_cpus: float = Field(0.5, gt=0, description="CPUs reserved per actor (fractional is fine; on a "
                              "CPU-only machine keep some free for Ray's read tasks)")
    actor_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 on GPU clusters; 0: CPU only)")


class PassageSourceOptions(OptionGroup):
    """A job that reads a passage corpus as ``embed`` does (:mod:`ray_cora.data.passages`)."""

    options_title: ClassVar[str | None] = "passage source"
    passages: str = Field(..., description="Passage file or folder (TSV/JSONL/Parquet; path, file:// or s3://)")
    format: Literal["tsv", "jsonl", "parquet"] | None = Field(
        None, description="Passage format (default: from file names)")
    lang: OptionalLangCode = Field(None, description="Language of passages that have no lang field")
    max_passage_chars: int = Field(
        MAX_PASSAGE_CHARS, ge=1, description="Longer passage texts are cut to this many characters (and "
        "counted in the summary), so one runaway record cannot exhaust a worker")


class TaskOptions(OptionGroup):
    """A job whose work runs as Ray tasks, one unit of work (an input file, a dump part) each."""

    options_title: ClassVar[str | None] = "Ray task"
    tasks: int | None = Field(None, ge=1, description="Most units of work processed at once (unset: as many "
                              "as the CPUs allow)", **aliases("tasks", "concurrency"))
    task_cpus: float = Field(1.0, gt=0, description="CPUs reserved per task (fractional is fine)",
                             **aliases("task_cpus", "num_cpus_per_task"))


class IndexOptions(OptionGroup):
    """The FAISS index of a sharded index: a shorthand (``index_type``) or any FAISS factory string."""

    options_title: ClassVar[str | None] = "FAISS index"
    index_type: IndexType = Field("flat", description="FAISS index shorthand: flat (exact, Flat), hnsw "
                                  "(HNSW<hnsw_m>) or ivfpq (IVF<ivf_nlist>,PQ<pq_m>x<pq_nbits>); ignored when "
                                  "--index-factory is given")
    index_factory: str | None = Field(None, description="Any faiss.index_factory string, inner-product metric "
                                      "(e.g. 'IVF1024,PQ64', 'OPQ64,IVF1024,PQ64', 'IVF1024,SQfp16', 'HNSW32'); "
                                      "IVF/PQ/SQ types are trained once per corpus on a sample")
    hnsw_m: int = Field(32, ge=4, description="hnsw: graph degree M")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW efSearch a search uses unless it asks for another")
    ivf_nlist: int = Field(1024, ge=1, description="ivfpq: inverted lists of the corpus (capped at "
                           "corpus size / 39)")
    ivf_nprobe: int = Field(32, ge=1, description="IVF lists a search probes unless it asks for another")
    pq_m: int = Field(64, ge=1, description="ivfpq: sub-quantizers (must divide the vector dimension)")
    pq_nbits: int = Field(8, ge=4, le=16, description="ivfpq: bits per sub-quantizer code")
    train_size: int | None = Field(None, ge=1, description="Most vectors the index is trained on (default: "
                                   "256 per centroid, FAISS's k-means subsampling limit)")
    train_seed: int = Field(0, description="Seed of the training sample")

    @field_validator("index_factory")
    @classmethod
    def _check_factory(cls, value: str | None) -> str | None:
        return value.strip() or None if value else None

    def index_spec(self) -> IndexSpec:
        return IndexSpec(self.index_type, hnsw_m=self.hnsw_m, hnsw_ef_search=self.hnsw_ef_search,
                         ivf_nlist=self.ivf_nlist, ivf_nprobe=self.ivf_nprobe, pq_m=self.pq_m,
                         pq_nbits=self.pq_nbits, index_factory=self.index_factory,
                         train_size=self.train_size, train_seed=self.train_seed)


class SearchOptions(OptionGroup):
    """How a job searches a committed index: the search-time parameters (unset: the index's own,
    which ``ray-cora tune-index`` sets) and where the shards live (CPU, or GPU with faiss-gpu)."""

    options_title: ClassVar[str | None] = "index search"
    nprobe: int | None = Field(None, ge=1, description="IVF lists each query probes (default: the index's "
                               "search_params: tune-index's choice, else --ivf-nprobe at build)")
    ef_search: int | None = Field(None, ge=1, description="HNSW efSearch of each query (default: the index's "
                                  "search_params)")
    search_gpus: float = Field(0.0, ge=0, description="GPUs per shard searcher (retrieve's search actors, "
                               "serve's Retriever or IndexShardGroup replicas); above 0 the shards move to "
                               "the GPU with faiss-gpu (pip install 'ray-cora[gpu]')")
    gpu_fp16: bool = Field(True, description="On GPU, store Flat vectors and IVF-PQ lookup tables as fp16 "
                           "(half the memory, same ranking to ~1e-3 in score); false: fp32")

    def search_kwargs(self) -> dict[str, int | None]:
        return {"nprobe": self.nprobe, "ef_search": self.ef_search}


class DecodingOptions(OptionGroup):
    """How mGEN decodes: a preset (:data:`~ray_cora.models.mgen.DECODING_PRESETS`) and the settings
    that override it. Unset, each is the preset's; the preset is what the model folder records."""

    options_title: ClassVar[str | None] = "mGEN decoding"
    decoding: DecodingName | None = Field(
        None, description="mGEN decoding preset: cora (as CORA's eval_mgen.py: CORA's input string, inputs not "
        "cut, 4 beams, answers of at most 20 tokens counting the decoder's start token) or greedy (faster: "
        "ray_cora's input cut at 1000 tokens, greedy search, at most 25 new tokens). Default: what the model "
        "folder records (ray-cora train-mgen models: greedy), else cora")
    num_beams: int | None = Field(None, ge=1, description="Beam size of mGEN's decoding (default: the "
                                  "preset's; cora 4, greedy 1)")
    max_source_length: int | None = Field(None, ge=8, description="mGEN input tokens; longer inputs are cut "
                                          "(default: the preset's; cora: no cut but the tokenizer's own "
                                          "limit, as CORA; greedy 1000)")
    max_target_length: int | None = Field(None, ge=1, description="mGEN answer tokens (default: the preset's; "
                                          "cora 20 counting the decoder's start token, CORA's --max_length; "
                                          "greedy 25 new tokens)")
