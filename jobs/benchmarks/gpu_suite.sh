#!/usr/bin/env bash
# The one prepared GPU check of ray_cora, for a lent single-GPU machine (an H200: no internet, the
# image's python3 with torch; faiss-gpu, ray and pydantic only if carried as wheels in .whl/).
#
#   OUT=/tmp/gpu_out bash jobs/benchmarks/gpu_suite.sh                      # on the GPU machine
#   GPU_SUITE_QUICK=1 OUT=/tmp/gpu_out nice -n 19 bash jobs/benchmarks/gpu_suite.sh   # dry run on a CPU
#
# Steps, each under `timeout` inside one suite budget (GPU_SUITE_BUDGET_S, default 510 s, so the
# whole run ends well inside a 10-minute command):
#   a. environment: nvidia-smi, python/torch/faiss/... versions; wheels from .whl/ (if that folder
#      exists) into /tmp/site on PYTHONPATH; the repo by `pip install --no-deps -e .` when ray_cora
#      does not already import, and on PYTHONPATH in any case            -> $OUT/env.txt
#   b. the GPU-marked tests (pytest -m gpu), one pytest run per file: tests/index/test_gpu.py,
#      tests/train/test_mdpr.py, tests/encoders/test_encoders.py (a file whose imports are missing,
#      e.g. faiss or ray, fails alone and the others still run)          -> $OUT/pytest_gpu.log
#   c. jobs/benchmarks/gpu_search.py: faiss-gpu flat/IVF, torch brute force, ray_cora's
#      ShardedIndex on GPU, against the memory/arithmetic rooflines; without faiss-gpu its faiss rows
#      say "faiss has no GPU support" and are skipped                  -> $OUT/gpu_search.{json,log}
#   d/e. jobs/benchmarks/gpu_embed.py: mBERT-base-sized passages/s and % of the 989 TFLOP/s bf16 peak
#      at batch 128/256/512 x 256 tokens; the DPR training step (64 questions x 2 passages) on one GPU,
#      plain and in DDP (world 1)                                        -> $OUT/gpu_embed.{json,log}
#   f. $OUT/summary.md: every figure in tables, each step's exit status, and what was skipped and why.
# Seven files in all under $OUT (the device tool brings back at most 8). A step that fails or times
# out is recorded and the next one runs; the suite itself exits 0 unless it could not write $OUT.
#
# Env: OUT (default /tmp/gpu_out), GPU_SUITE_QUICK=1 (small sizes: gpu_search.py/gpu_embed.py --quick),
# GPU_SUITE_BUDGET_S (default 510), PYTHON (default .venv/bin/python if present, else python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
QUICK=${GPU_SUITE_QUICK:-0}
BUDGET=${GPU_SUITE_BUDGET_S:-510}
START=$SECONDS
export PYTHONUNBUFFERED=1
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY=$ROOT/.venv/bin/python
else
  PY=python3
fi
QUICK_FLAG=()
[[ "$QUICK" == 1 ]] && QUICK_FLAG=(--quick)
STEPS=""  # name:exit:seconds:timeout;...

# Seconds a step may take: at most CAP, and never more than leaves RESERVE seconds for the later steps.
step_cap() {
  local cap=$1 reserve=$2 left
  left=$(( BUDGET - (SECONDS - START) - reserve ))
  (( left < cap )) && cap=$left
  echo "$cap"
}

# run_step NAME CAP LOG COMMAND...: COMMAND under timeout CAP, output to stdout and appended to LOG.
run_step() {
  local name=$1 cap=$2 log=$3 t0=$SECONDS rc=0
  shift 3
  if (( cap < 15 )); then
    echo "== $name: skipped, the suite budget ($BUDGET s) is spent" | tee -a "$log"
    STEPS+="$name:skipped:0:$cap;"
    return 0
  fi
  echo "== $name (timeout ${cap} s, log $log)"
  timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$log" || rc=$?
  STEPS+="$name:$rc:$(( SECONDS - t0 )):$cap;"
  echo "== $name: exit $rc after $(( SECONDS - t0 )) s"
}

# ---------------------------------------------------------------- a. environment
ENV_LOG=$OUT/env.txt
{
  echo "# gpu_suite.sh environment, $(date -u +%FT%TZ), quick=$QUICK, budget ${BUDGET}s, python $PY"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || true
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
      --format=csv || true
  else
    echo "nvidia-smi: not found (no NVIDIA GPU on this machine)"
  fi
  echo "CPUs: $(nproc), uname: $(uname -srm)"
} 2>&1 | tee -a "$ENV_LOG"

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "== wheels in .whl/: $(cd .whl && ls ./*.whl | tr '\n' ' ')" | tee -a "$ENV_LOG"
  rc=0
  timeout -k 10 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl >>"$ENV_LOG" 2>&1 || rc=$?
  echo "wheel install: exit $rc (into /tmp/site, on PYTHONPATH)" | tee -a "$ENV_LOG"
  STEPS+="wheels:$rc:0:180;"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "== no .whl/ folder: nothing to install; what the image lacks (faiss-gpu, ray, pydantic, ...) stays missing" \
    | tee -a "$ENV_LOG"
fi

if (cd /tmp && "$PY" -c "import ray_cora" >/dev/null 2>&1); then
  echo "== ray_cora already imports: no install" | tee -a "$ENV_LOG"
else
  rc=0
  timeout -k 10 90 "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . >>"$ENV_LOG" 2>&1 || rc=$?
  echo "== pip install --no-deps -e . : exit $rc (PYTHONPATH=$ROOT is set either way)" | tee -a "$ENV_LOG"
  STEPS+="install-e:$rc:0:90;"
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

run_step versions "$(step_cap 90 200)" "$ENV_LOG" "$PY" - <<'PY'
import importlib
import json
import sys

info = {"python": sys.version.split()[0], "executable": sys.executable}
for name in ("torch", "faiss", "transformers", "tokenizers", "numpy", "pyarrow", "ray", "pydantic", "yaml",
             "boto3", "pytest", "ray_cora"):
    try:
        module = importlib.import_module(name)
        info[name] = getattr(module, "__version__", "present")
    except Exception as error:  # noqa: BLE001
        info[name] = f"MISSING ({type(error).__name__}: {str(error)[:100]})"
try:
    import torch

    info["torch_cuda"] = torch.cuda.is_available()
    info["torch_cuda_version"] = torch.version.cuda
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception as error:  # noqa: BLE001
    info["torch_cuda"] = f"error: {error}"
try:
    import faiss

    gpu_build = hasattr(faiss, "StandardGpuResources")
    info["faiss_gpu"] = bool(gpu_build and faiss.get_num_gpus() > 0)
    info["faiss_gpu_line"] = (f"faiss {faiss.__version__}: GPU build, {faiss.get_num_gpus()} GPU(s)" if gpu_build
                              else f"faiss has no GPU support: faiss {faiss.__version__} is a CPU-only build")
except Exception as error:  # noqa: BLE001
    info["faiss_gpu"] = False
    info["faiss_gpu_line"] = f"faiss has no GPU support: faiss does not import ({type(error).__name__})"
for key, value in info.items():
    print(f"{key}: {value}")
if not info["faiss_gpu"]:
    print(f"NOTE: {info['faiss_gpu_line']}; the faiss rows of gpu_search.py will be skipped")
print("ENV_JSON " + json.dumps(info))
PY

# ---------------------------------------------------------------- b. GPU-marked tests
# One pytest per file: a conftest whose imports are missing (tests/index/conftest.py imports faiss)
# stops a whole pytest run before any test, so a file without its packages must not stop the others.
for test_file in tests/index/test_gpu.py tests/train/test_mdpr.py tests/encoders/test_encoders.py; do
  echo "### $test_file" >>"$OUT/pytest_gpu.log"
  run_step "pytest $(basename "$test_file")" "$(step_cap 100 190)" "$OUT/pytest_gpu.log" \
    "$PY" -m pytest -m gpu -q -p no:cacheprovider "$test_file"
done

# ---------------------------------------------------------------- c. search
SEARCH_CAP=$(step_cap 330 70)
run_step search "$SEARCH_CAP" "$OUT/gpu_search.log" \
  "$PY" jobs/benchmarks/gpu_search.py --out "$OUT/gpu_search.json" --budget-s $(( SEARCH_CAP > 60 ? SEARCH_CAP - 30 : 30 )) \
  ${QUICK_FLAG[@]+"${QUICK_FLAG[@]}"}

# ---------------------------------------------------------------- d/e. embedding and training step
run_step embed "$(step_cap 150 35)" "$OUT/gpu_embed.log" \
  "$PY" jobs/benchmarks/gpu_embed.py --out "$OUT/gpu_embed.json" ${QUICK_FLAG[@]+"${QUICK_FLAG[@]}"}

if command -v nvidia-smi >/dev/null 2>&1; then
  { echo "# after the runs"; nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem,temperature.gpu,power.draw \
      --format=csv || true; } >>"$ENV_LOG" 2>&1
fi

# ---------------------------------------------------------------- f. summary
export GPU_SUITE_STEPS=$STEPS GPU_SUITE_ELAPSED=$(( SECONDS - START )) GPU_SUITE_QUICK=$QUICK
rc=0
timeout -k 5 30 "$PY" - "$OUT" <<'PY' || rc=$?
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, "jobs/benchmarks")
out = Path(sys.argv[1])
lines = ["# GPU suite summary (jobs/benchmarks/gpu_suite.sh)", ""]


def read(name):
    path = out / name
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


env = {}
for line in read("env.txt").splitlines():
    if line.startswith("ENV_JSON "):
        env = json.loads(line[len("ENV_JSON "):])
quick = os.environ.get("GPU_SUITE_QUICK") == "1"
lines += [f"Quick mode: {'yes (small sizes, not the real figures)' if quick else 'no'}; "
          f"suite time {os.environ.get('GPU_SUITE_ELAPSED')} s.", ""]
gpu = env.get("gpu")
notes = []
if not gpu:
    notes.append("**No CUDA GPU (torch sees none): the GPU rows were skipped; what ran on CPU is a code-path "
                 "check only.**")
if not env.get("faiss_gpu"):
    notes.append(f"**{env.get('faiss_gpu_line', 'faiss has no GPU support')}: the faiss-gpu rows were "
                 "skipped.**")
lines += notes + ([""] if notes else [])

lines += ["## Environment", "", "| what | value |", "|---|---|"]
for key in ("gpu", "python", "executable", "torch", "torch_cuda", "torch_cuda_version", "faiss", "faiss_gpu_line",
            "transformers", "tokenizers", "numpy", "pyarrow", "ray", "pydantic", "yaml", "boto3", "pytest",
            "ray_cora"):
    if key in env:
        lines.append(f"| {key} | {str(env[key]).replace('|', '/')} |")
if not env:
    lines.append("| versions | not recorded (the versions step failed or timed out: see env.txt) |")

lines += ["", "## Steps", "", "| step | exit | seconds | timeout s | meaning |", "|---|---|---|---|---|"]
for item in filter(None, os.environ.get("GPU_SUITE_STEPS", "").split(";")):
    name, code, seconds, cap = (item.split(":") + ["", "", ""])[:4]
    meaning = {"0": "ok", "124": "timed out", "137": "killed (timeout or memory)", "skipped": "not run: budget spent",
               "1": "failed (tests: some failed or did not collect)", "2": "interrupted (collection errors)",
               "4": "pytest could not start (a conftest's imports are missing?)",
               "5": "no tests collected"}.get(code, "failed")
    lines.append(f"| {name} | {code} | {seconds} | {cap} | {meaning} |")

log = read("pytest_gpu.log")
lines += ["", "## GPU-marked tests (`pytest -m gpu`, one run per file)", ""]
if log:
    lines += ["| file | result | details |", "|---|---|---|"]
    summary_line = re.compile(r"\b(passed|failed|skipped|errors?|deselected|no tests ran)\b")
    for block in log.split("### ")[1:]:
        name, _, body = block.partition("\n")
        rows = body.splitlines()
        final = [r for r in rows if summary_line.search(r) and not r.startswith(("SKIPPED", "ERROR", "FAILED"))]
        details = list(dict.fromkeys(r for r in rows if r.startswith(("ERROR", "FAILED", "SKIPPED", "E   ",
                                                                        "ImportError while"))))
        result = final[-1].strip("= ") if final else "no summary line (see pytest_gpu.log)"
        text = "<br>".join(d[:200].replace("|", "/") for d in details[:6]) or "–"
        lines.append(f"| {name.strip()} | `{result}` | {text} |")
else:
    lines.append("No pytest_gpu.log: the step did not run.")

for name, module in (("gpu_search.json", "gpu_search"), ("gpu_embed.json", "gpu_embed")):
    lines.append("")
    text = read(name)
    if not text:
        lines.append(f"## {module}\n\nNo {name}: the step did not run or stopped before its first section "
                     f"(see {module}.log).")
        continue
    try:
        lines.append(__import__(module).to_markdown(json.loads(text)))
    except Exception as error:  # noqa: BLE001
        lines.append(f"## {module}\n\n{name} could not be tabulated: {type(error).__name__}: {error}")

(out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
print("\n".join(lines))
PY
if [[ $rc -ne 0 || ! -s "$OUT/summary.md" ]]; then
  { echo "# GPU suite summary"; echo; echo "The summary step failed (exit $rc). Steps: $STEPS"; } >"$OUT/summary.md"
  cat "$OUT/summary.md"
fi
echo "== gpu_suite.sh done in $(( SECONDS - START )) s; files in $OUT:"
ls -la "$OUT"
