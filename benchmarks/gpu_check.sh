#!/usr/bin/env bash
# The first thing to run on any machine with an NVIDIA GPU: at most 8 minutes, one JSON and one Markdown
# summary (benchmarks/gpu_check.py says what each step checks and measures).
#
#   benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]
#       with this checkout's .venv (made by `make install` when it is missing: nothing else is installed)
#   benchmarks/gpu_check.sh --offline PACK [--dry-run] [OUT_DIR]
#       on a GPU machine that reaches no package index but has python3 with a CUDA torch: the wheels and
#       model files in PACK are installed into a temporary folder (nothing from the network)
#   benchmarks/gpu_check.sh --pack PACK
#       here, with the index: download those wheels (CPython 3.12, manylinux x86-64) and copy this
#       install's embedded model files into PACK (about 55 MB)
#
# OUT_DIR: default $OUT (the workplace's device runner), else benchmarks/out/gpu-check.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the CUDA path imports that a GPU machine's python with torch, numpy, OpenCV, Pillow, aiohttp,
# requests, tqdm, scikit-image, pytest (with pytest-timeout) and hypothesis usually lacks. facenet-pytorch goes in without its old torch
# pin, as `make install` does. OpenVINO and Ray are not needed on the CUDA path.
PACK_WHEELS=(spandrel==0.4.2 pydantic==2.14.4 pydantic-core annotated-types typing-inspection
             pydantic-settings==2.16.3 python-dotenv sqlalchemy==2.1.9 greenlet watchdog==7.1.1
             pillow-heif==1.9.0 facenet-pytorch==2.6.0)

offline="" dry_run="" out=""
while (($#)); do
  case "$1" in
    --pack)
      pack="$2"; mkdir -p "$pack/wheels" "$pack/models"
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$pack/wheels" "${PACK_WHEELS[@]}"
      models=$(.venv/bin/python -c 'from pipeline.embedded import embedded_models_dir as d; print(d() or "")')
      [ -n "$models" ] || { echo "no embedded model files here: run make install first" >&2; exit 2; }
      cp "$models"/* "$pack/models/"
      du -sh "$pack"; exit 0 ;;
    --offline) offline="$2"; shift 2 ;;
    --dry-run) dry_run="--dry-run"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) out="$1"; shift ;;
  esac
done

if [ -n "$offline" ]; then
  site=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$offline"/wheels/*.whl
  export PYTHONPATH="$site:$PWD"
  python=python3
  "$python" -m pipeline.embedded --files "$offline/models"
else
  [ -x .venv/bin/python ] || make install
  export PYTHONPATH="$PWD"
  python=.venv/bin/python
fi
# The 8-minute limit, whatever happens inside (the steps keep their own shares of it).
exec timeout --kill-after=10 480 "$python" benchmarks/gpu_check.py $dry_run ${out:+"$out"}
