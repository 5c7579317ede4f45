#!/usr/bin/env bash
# The project's GPU check: GPU tests, the LabelPooling benchmark, the decoder question, the
# throughput benchmark at batch 256 and the augmentations' costs (colour, CutMix), plus the
# example trainer, generate and the epoch benchmark on CUDA, in a few minutes, JSON under
# OUT_DIR.
#
# Usage: benchmarks/gpu_check.sh OUT_DIR
# Run from the repository root with dali_relabel importable (PYTHONPATH=$PWD) and DALI,
# zarr and tensorstore installed or unpacked on PYTHONPATH (docs/GPU.md).
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2
    exit 2
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
status=0
step() {  # step NAME TIMEOUT_S CMD...: run one step, keep going on failure, record it
    local name=$1 limit=$2
    shift 2
    echo "== $name" >&2
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "   $name exited $rc" >&2
    tail -n 5 "$out/$name.log" >&2
    [ $rc -eq 0 ] || status=1
}
step gpu_tests 150 "$py" -m pytest -q -m gpu -p no:cacheprovider tests \
    --junitxml="$out/gpu_tests.xml"
step label_pooling 60 "$py" benchmarks/label_pooling.py --out "$out/label_pooling.json"
step decoders 60 "$py" benchmarks/decoders.py --device cuda --out "$out/decoders.json"
step example 120 "$py" examples/train_imagenet.py --sample --steps 20 --crop-size 224 \
    --batch-size 32
step generate 150 bash -c "$py -m dali_relabel.cli sample '$out/sample' --images-per-class 8 &&
    $py -m dali_relabel.cli generate '$out/sample/train' '$out/sample/maps.zarr' --device cuda \
    --decoder dali --quiet && $py -m dali_relabel.cli info '$out/sample/maps.zarr'"
rm -rf "$out/sample"
step throughput 200 "$py" benchmarks/throughput.py --device cuda --batch-size 256 \
    --images-per-class 160 --windows 3 --window-batches 4 --warmup-batches 3 --out-dir "$out"
step epochs 120 "$py" benchmarks/epochs.py --device cuda --batch-size 256 \
    --batches-per-epoch 3 --threads 16 --out "$out/epochs.json"
step augment 150 "$py" benchmarks/augment.py --device cuda --batch-size 256 \
    --images-per-class 100 --windows 3 --window-epochs 2 --settle 1 \
    --configs baseline color cutmix_region color_cutmix --out "$out/augment.json"
exit $status
