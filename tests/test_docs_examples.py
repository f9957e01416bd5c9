"""The examples in the README and the other docs still name what exists: every `ray-cora` command
(in shell blocks and inline) parses with its job's options, complete commands in shell blocks build
a valid config, every `jobs/*.py` script and every `ray_cora.<module>[:name]` reference resolves."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from ray_cora.cli import JOBS, build_parser
from ray_cora.configs.arguments import config_from_args
from tests.support import REPO_ROOT

DOCS = sorted([REPO_ROOT / "README.md", REPO_ROOT / "jobs" / "README.md", REPO_ROOT / "cluster" / "README.md",
               *(REPO_ROOT / "docs").rglob("*.md"), REPO_ROOT / "ray_cora" / "STRUCTURE.md"])
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console|text)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(ray-cora [^`]+)`")
MODULE_REF = re.compile(r"\bray_cora(?:\.[a-z_0-9]+)+(?::[A-Za-z_][A-Za-z_0-9]*)?")
JOB_SCRIPT = re.compile(r"\bjobs/[a-z_/]+\.py\b")


def _docs() -> list[tuple[Path, str]]:
    return [(path, path.read_text(encoding="utf-8")) for path in DOCS if path.is_file()]


def _shell_commands(text: str) -> list[str]:
    commands = []
    for block in SHELL_BLOCK.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            for part in re.split(r"&&|;", line):
                part = part.strip()
                if part.startswith("ray-cora "):
                    commands.append(part)
    return commands


def _job_of(words: list[str]) -> tuple[str, list[str]]:
    """The job name a command's words start with (``evaluate all`` is two words) and the rest."""
    for width in (2, 1):
        name = " ".join(words[:width])
        if name in JOBS:
            return name, words[width:]
    raise AssertionError(f"no such job: ray-cora {' '.join(words[:2])}")


def _flags_known(name: str, rest: list[str]) -> list[str]:
    parser = build_parser()
    args, unknown = parser.parse_known_args([*name.split(" "), *rest])
    return [u for u in unknown if u.startswith("-")]


EXAMPLES = [(path.relative_to(REPO_ROOT).as_posix(), command, complete)
            for path, text in _docs()
            for command, complete in ([(c, True) for c in _shell_commands(text)]
                                      + [(c, False) for c in INLINE.findall(text)])]


@pytest.mark.parametrize("doc,command,complete", EXAMPLES, ids=[f"{d}:{c[:60]}" for d, c, _ in EXAMPLES])
def test_ray_cora_commands_in_the_docs_parse(doc, command, complete):
    # Inline mentions are fragments ("--generator mGEN_model"): only their job and flags are checked.
    spelled = re.sub(r"[\[\]]", " ", command.replace("…", "X").replace("...", "X"))  # [--opt N], placeholders
    words = [w for w in shlex.split(spelled) if w not in ("|", "\\")]
    if words[1] in ("--help", "--version", "<job>") or words[1].endswith(":"):
        return  # `ray-cora --help`, `ray-cora <job> --help`, or a quoted error message
    name, rest = _job_of(words[1:])
    assert _flags_known(name, rest) == [], f"{doc}: `{command}` uses options `ray-cora {name}` does not have"
    if complete and "--help" not in rest:
        args = build_parser().parse_args([*name.split(" "), *rest])
        config_from_args(JOBS[name].config, args)  # raises ConfigError on a stale or invalid option


def test_the_docs_hold_examples():
    assert len(EXAMPLES) > 20 and any(complete for _, _, complete in EXAMPLES)


def test_module_and_script_references_in_the_docs_exist():
    missing = []
    for path, text in _docs():
        for ref in sorted(set(MODULE_REF.findall(text))):
            module, _, attr = ref.partition(":")
            try:
                target = importlib.import_module(module)
            except ModuleNotFoundError:
                # ray_cora.pkg.module.attribute: the last part may be a function or class
                parent, _, attr = module.rpartition(".")
                try:
                    target = importlib.import_module(parent)
                except ModuleNotFoundError:
                    missing.append(f"{path.name}: {ref}")
                    continue
            if attr and not hasattr(target, attr):
                missing.append(f"{path.name}: {ref}")
        missing += [f"{path.name}: {script}" for script in sorted(set(JOB_SCRIPT.findall(text)))
                    if not (REPO_ROOT / script).is_file()]
    assert missing == []


def _curl_commands() -> list[tuple[str, str]]:
    """Every curl command in the docs and in the comments of cluster/*.yaml, continuation lines joined."""
    sources = [(path.name, path.read_text(encoding="utf-8")) for path in DOCS if path.is_file()]
    sources += [(str(p.relative_to(REPO_ROOT)), re.sub(r"^\s*#", "", p.read_text(encoding="utf-8"), flags=re.M))
                for p in sorted((REPO_ROOT / "cluster").rglob("*.yaml"))]
    found = []
    for name, text in sources:
        joined = re.sub(r"\\\n\s*", " ", text)
        found += [(name, m.group(0)) for m in re.finditer(r"\bcurl\b[^\n`]*", joined)]
    return found


def test_curl_examples_send_json_the_way_the_api_accepts_it():
    """The API answers a body without `Content-Type: application/json` with 415 (docs/serving.md), and
    takes the key as `Authorization: Bearer`: every curl example with a body says both as it should."""
    examples = _curl_commands()
    assert examples, "the docs hold no curl example"
    wrong = [f"{name}: {cmd}" for name, cmd in examples
             if re.search(r"\s(-d|--data\S*)\s", cmd) and "Content-Type: application/json" not in cmd]
    wrong += [f"{name}: {cmd}" for name, cmd in examples if "X-API-Key" in cmd and "Bearer" not in cmd
              and "alias" not in cmd]
    assert wrong == []
