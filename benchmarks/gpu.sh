#!/usr/bin/env bash
# Every GPU check and benchmark behind benchmarks/RESULTS.md, in stages that each take a few minutes on an H100/H200:
#
#   bash benchmarks/gpu.sh tests   [LOG_DIR]   # tests/test_gpu.py and the GPU metrics test
#   bash benchmarks/gpu.sh train   [LOG_DIR]   # training and feature-extraction throughput, ViT-B-16 and ViT-L-14,
#                                              # then ViT-L-14 with each of clipreid.blocks' drop-ins alone
#   bash benchmarks/gpu.sh compile [LOG_DIR]   # the same with torch.compile, and ViT-L-14 at 64 pairs per step
#   bash benchmarks/gpu.sh eval    [LOG_DIR]   # compute_scores at 12k x 88k, re-ranking vs numpy, re-ranking to N=100k
#   bash benchmarks/gpu.sh all     [LOG_DIR]
#
# Each stage prints its tables and keeps a copy in LOG_DIR (default benchmarks/logs); PYTHON picks the interpreter,
# DEVICE the device of the evaluation benchmarks (default cuda; DEVICE=cpu dry-runs the script on a laptop).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: bash benchmarks/gpu.sh tests|train|compile|eval|all [LOG_DIR]}
logs=${2:-benchmarks/logs}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
mkdir -p "$logs"

failed=()
step() {  # step NAME COMMAND...: run, show and keep the output; a failure is reported at the end, not fatal
    local name=$1
    shift
    echo "== $name: $*"
    # (the torch profiler's USDT lines are noise)
    if ! "$@" 2>&1 | grep --line-buffered -v '^USDT:' | tee "$logs/$name.txt"; then
        failed+=("$name")
    fi
}

header() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$logs/device.txt"
    else
        echo "no nvidia-smi on this machine" | tee "$logs/device.txt"
    fi
    if ! "$py" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" \
        | tee -a "$logs/device.txt"; then
        echo "$py cannot import torch and open_clip: install requirements.txt (or carry open_clip's wheels)" >&2
        exit 1
    fi
}

run_stage() {
    case $1 in
        tests)
            step tests "$py" -m pytest -q -rs tests/test_gpu.py tests/test_metrics.py -k "gpu or GPU" ;;
        train)
            step train_throughput "$py" benchmarks/train_throughput.py
            for b in attention mlp; do  # each of clipreid.blocks' drop-ins alone
                step "train_throughput_$b" "$py" benchmarks/train_throughput.py --models ViT-L-14-quickgelu \
                    --blocks "$b" --reference false
            done ;;
        compile)
            step train_throughput_compile "$py" benchmarks/train_throughput.py --models ViT-L-14-quickgelu \
                --compile --reference false
            step train_throughput_b64 "$py" benchmarks/train_throughput.py --models ViT-L-14-quickgelu \
                --batch-size 64 --eval-batch-size 512 --compile --reference false ;;
        eval)
            step metrics "$py" benchmarks/metrics.py --scale --device "$device"
            step rerank "$py" benchmarks/rerank.py --device "$device"
            step rerank_scale "$py" benchmarks/rerank.py --device "$device" --scale ;;
        *)
            echo "unknown stage $1: use tests, train, compile, eval or all" >&2
            exit 2 ;;
    esac
}

header
if [ "$stage" = all ]; then
    for s in tests train compile eval; do run_stage "$s"; done
else
    run_stage "$stage"
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $logs)" >&2
    exit 1
fi
