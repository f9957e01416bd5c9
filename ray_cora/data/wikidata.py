"""Parsing Wikidata JSON dumps (pure, no Ray): labels, aliases and sitelinks per entity.

The official dump (``latest-all.json.gz``/``.bz2``) is one JSON array written one entity per line::

    [
    {"type":"item","id":"Q42","labels":{"en":{"language":"en","value":"Douglas Adams"}},...},
    {"type":"item","id":"Q64",...},
    ]

Every line but the ``[`` and ``]`` lines is an entity followed by ``,`` (the last one without).
``labels`` are ``{code: {language, value}}``, ``aliases`` ``{code: [{language, value}, ...]}``,
``sitelinks`` ``{site: {site, title, badges}}``. Language codes are Wikidata's (``zh-cn``,
``zh-hans``, ``pt-br`` …); they are mapped to ray_cora's canonical codes, an exact spelling
winning over an alias (``zh-cn`` over ``zh-hans`` over ``zh`` for ``zh_cn``).

Records that are not entities with an id (redirect stubs ``{"id": "Q1", "redirect": ...}`` or
``{"entity": ..., "redirects": ...}`` as the entity API writes them, ``{"missing": ""}``) are
counted as ``redirects`` and skipped; an entity without any label in the selected languages
still yields its sitelinks. A line that is not valid JSON, or an entity whose fields have the
wrong shape, is a bad record (``file:line`` error, or skipped and counted).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_cora import storage
from ray_cora.data.qa import lone_surrogate
from ray_cora.data.records import BadRecords
from ray_cora.errors import ConfigError
from ray_cora.languages import normalize_lang

LABEL_COLUMNS = ("qid", "lang", "label", "aliases")
SITELINK_COLUMNS = ("qid", "site", "title")


class EntityError(ValueError):
    """An entity line whose JSON parses but whose fields have the wrong shape."""


@dataclass
class Entity:
    """What the label table keeps of one entity."""

    qid: str
    labels: dict[str, str] = field(default_factory=dict)  # canonical lang -> label
    aliases: dict[str, list[str]] = field(default_factory=dict)  # canonical lang -> aliases
    sitelinks: dict[str, str] = field(default_factory=dict)  # site (enwiki, jawiki, ...) -> title


@dataclass
class DumpStats:
    lines: int = 0
    entities: int = 0
    redirects: int = 0
    without_labels: int = 0
    bad: int = 0

    def add(self, other: "DumpStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def language_codes(langs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """For each canonical language, the Wikidata codes read for it, best first.

    >>> language_codes(["zh_cn"])["zh_cn"][:2]
    ('zh-cn', 'zh_cn')
    """
    table = {}
    for lang in langs:
        canonical = normalize_lang(lang)
        wikidata = canonical.replace("_", "-")
        extra = {"zh_cn": ("zh-hans", "zh-sg", "zh"), "zh_tw": ("zh-hant",), "zh_hk": ("zh-hant",),
                 "no": ("nb",), "he": ("iw",), "id": ("in",)}.get(canonical, ())
        table[canonical] = tuple(dict.fromkeys((wikidata, canonical, *extra)))
    return table


def entity_text_problem(entity: Entity) -> str | None:
    """What is wrong with an entity's text (a lone surrogate: not Unicode, cannot be written as
    UTF-8 into the label tables), naming the field; None when it is fine."""
    fields = [("id", entity.qid)]
    fields += [(f"labels.{lang}", value) for lang, value in entity.labels.items()]
    fields += [(f"aliases.{lang}", value) for lang, values in entity.aliases.items() for value in values]
    fields += [(f"sitelinks.{site}", value) for site, value in entity.sitelinks.items()]
    for name, value in fields:
        problem = lone_surrogate(value, name)
        if problem:
            return problem
    return None


def parse_entity_line(line: str, codes: dict[str, tuple[str, ...]]) -> Entity | None:
    """One dump line → an :class:`Entity`, or None for the array brackets, blank lines and
    redirect-like records. Raises ``json.JSONDecodeError`` or :class:`EntityError`."""
    text = line.strip()
    if text.endswith(","):
        text = text[:-1].rstrip()
    if text in ("", "[", "]"):
        return None
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise EntityError(f"expected a JSON object (an entity), found {type(obj).__name__}")
    if _is_redirect(obj):
        return None
    qid = obj.get("id", obj.get("qid"))  # "qid": the demo assets' flattened entities
    if not isinstance(qid, str) or not qid:
        raise EntityError("entity has no string field 'id'")
    entity = Entity(qid)
    labels = _mapping(obj, "labels")
    aliases = _mapping(obj, "aliases")
    for lang, wanted in codes.items():
        for code in wanted:
            if code in labels:
                entity.labels[lang] = _value(labels[code], f"labels.{code}")
                break
        for code in wanted:
            if code in aliases:
                items = aliases[code]
                if not isinstance(items, list):
                    raise EntityError(f"field 'aliases.{code}' must be a list")
                values = [_value(item, f"aliases.{code}[{i}]") for i, item in enumerate(items)]
                if values:
                    entity.aliases[lang] = list(dict.fromkeys(values))
                break
    for site, link in _mapping(obj, "sitelinks").items():
        if isinstance(link, dict) and isinstance(link.get("title"), str):
            entity.sitelinks[site] = link["title"]
        elif isinstance(link, str):  # the demo assets' flattened {site: title}
            entity.sitelinks[site] = link
        else:
            raise EntityError(f"field 'sitelinks.{site}' must be an object with a 'title'")
    return entity


def _is_redirect(obj: dict[str, Any]) -> bool:
    return ("redirect" in obj or "redirects" in obj or "missing" in obj) and not obj.get("labels")


def _mapping(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None or value == []:  # empty maps are written as [] by some dump versions
        return {}
    if not isinstance(value, dict):
        raise EntityError(f"field '{key}' must be an object keyed by language or site")
    return value


def _value(item: Any, where: str) -> str:
    if isinstance(item, str):  # the demo assets' flattened form
        return item
    if not isinstance(item, dict) or not isinstance(item.get("value"), str):
        raise EntityError(f"field '{where}' must be an object with a string 'value'")
    return item["value"]


def iter_entities(lines: Iterable[tuple[int, bytes]], *, source: str, langs: Sequence[str],
                  bad_records: BadRecords | None = None,
                  stats: DumpStats | None = None) -> Iterator[Entity]:
    """Parse numbered dump lines (1-based line numbers, for messages); bad lines go to
    ``bad_records`` (default: stop at the first with a ``file:line`` error)."""
    bad = bad_records if bad_records is not None else BadRecords("error")
    st = stats if stats is not None else DumpStats()
    codes = language_codes(langs)
    for number, raw in lines:
        st.lines += 1
        try:
            text = raw.decode("utf-8")
            entity = parse_entity_line(text, codes)
        except UnicodeDecodeError as exc:
            st.bad += 1
            bad.report(source, number, f"invalid UTF-8: {exc}", raw=raw)
            continue
        except json.JSONDecodeError as exc:
            st.bad += 1
            bad.report(source, number, f"not a JSON entity: {exc.msg} at column {exc.colno}", raw=raw)
            continue
        except RecursionError:
            st.bad += 1
            bad.report(source, number, "JSON nested too deeply to read", raw=raw)
            continue
        except EntityError as exc:
            st.bad += 1
            bad.report(source, number, str(exc), raw=raw)
            continue
        problem = entity_text_problem(entity) if entity is not None else None
        if problem:
            st.bad += 1
            bad.report(source, number, problem, raw=raw)
            continue
        if entity is None:
            stripped = raw.strip().rstrip(b",").strip()
            if stripped not in (b"", b"[", b"]"):
                st.redirects += 1
            continue
        st.entities += 1
        if not entity.labels and not entity.aliases:
            st.without_labels += 1
        yield entity


def label_rows(entities: Iterable[Entity]) -> tuple[dict[str, list], dict[str, list]]:
    """Columns of the labels table (one row per entity and language with a label or aliases)
    and of the sitelinks table (one row per entity and site)."""
    labels: dict[str, list] = {c: [] for c in LABEL_COLUMNS}
    links: dict[str, list] = {c: [] for c in SITELINK_COLUMNS}
    for entity in entities:
        for lang in sorted(set(entity.labels) | set(entity.aliases)):
            labels["qid"].append(entity.qid)
            labels["lang"].append(lang)
            labels["label"].append(entity.labels.get(lang))
            labels["aliases"].append(entity.aliases.get(lang, []))
        for site, title in sorted(entity.sitelinks.items()):
            links["qid"].append(entity.qid)
            links["site"].append(site)
            links["title"].append(title)
    return labels, links


def check_langs(langs: Sequence[str]) -> tuple[str, ...]:
    if not langs:
        raise ConfigError("no languages selected: pass --langs en,es,... (the label languages to keep)")
    return tuple(dict.fromkeys(normalize_lang(l) for l in langs))


LABELS_KIND = "wikidata-labels"



LABELS_SCHEMA = pa.schema([("qid", pa.string()), ("lang", pa.string()), ("label", pa.string()),
                           ("aliases", pa.list_(pa.string()))])



SITELINKS_SCHEMA = pa.schema([("qid", pa.string()), ("site", pa.string()), ("title", pa.string())])



def iter_label_parts(uri: str, table: str = "labels") -> Iterator[pa.Table]:
    """The ``labels`` (or ``sitelinks``) table one part at a time (checksums verified); an
    entity's rows are all in one part."""
    artifact = storage.Artifact(uri, kind=LABELS_KIND)
    for path in artifact.manifest[table]:
        yield pq.read_table(io.BytesIO(artifact.read_bytes(path)))



def sitelinks_of_titles(uri: str, site: str, titles: set[str]) -> Iterator[tuple[str, str, str]]:
    """``(qid, site, title)`` for every sitelink of the entities whose ``site`` article is one of
    ``titles``: the language links of those articles, without loading every sitelink of Wikidata."""
    wanted = pa.array(sorted(titles), pa.string())
    for part in iter_label_parts(uri, "sitelinks"):
        hit = pc.and_(pc.equal(part.column("site"), site), pc.is_in(part.column("title"), value_set=wanted))
        qids = part.column("qid").filter(hit)
        if len(qids):
            part = part.filter(pc.is_in(part.column("qid"), value_set=pc.unique(qids.combine_chunks())))
            yield from zip(*(part.column(n).to_pylist() for n in ("qid", "site", "title")))



def read_label_tables(uri: str) -> tuple[pa.Table, pa.Table]:
    """The committed labels and sitelinks tables, whole (checksums verified); large outputs are
    better read with :func:`iter_label_parts`."""
    tables = []
    for key, schema in (("labels", LABELS_SCHEMA), ("sitelinks", SITELINKS_SCHEMA)):
        parts = list(iter_label_parts(uri, key))
        tables.append(pa.concat_tables(parts) if parts else schema.empty_table())
    return tables[0], tables[1]
