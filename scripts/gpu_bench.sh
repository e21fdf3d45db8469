#!/usr/bin/env bash
# The GPU checks and the GPU rows of bench/RESULTS.md, on a machine with an NVIDIA GPU:
#   pip install -e ".[gpu,dev]"        # TensorRT + Polygraphy
#   pip uninstall -y onnxruntime && pip install onnxruntime-gpu    # ONNX Runtime on CUDA (optional)
#   scripts/gpu_bench.sh [CKPT | --preset NAME] [more dip-bench options]
# 1. pytest -m gpu (CUDA graphs against plain sampling on the device);
# 2. dip-bench on CUDA: eager fp32/bf16, torch.compile fp32/bf16, ONNX Runtime and TensorRT fp16/int8,
#    each with and without whole-step CUDA graphs, at batch 1 and 16, for dip-b-16 and dip-xl-16
#    (or the model given). Writes bench/gpu-<model>-b<batch>[-nographs].{json,png}; every row says
#    whether graphs were used ("cuda_graphs") and, if not, why ("cuda_graphs_note").
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee bench/gpu-device.txt
pytest -m gpu -q
models=()
if [ $# -gt 0 ]; then models=("$*"); else models=("--preset dip-b-16" "--preset dip-xl-16"); fi
backends="torch,torch:bf16,compile,compile:bf16,onnx,trt:fp16,trt:int8"
for model in "${models[@]}"; do
  read -r -a args <<< "$model"
  name=$(printf '%s' "$model" | tr -c 'a-zA-Z0-9' '-' | sed 's/--*/-/g; s/^-//; s/-$//')
  for batch in 1 16; do
    for graphs in --cuda-graphs --no-cuda-graphs; do
      tag="gpu-${name}-b${batch}${graphs/--cuda-graphs/}"
      tag="${tag/--no-cuda-graphs/-nographs}"
      dip-bench "${args[@]}" --device cuda --steps 50 --batch-size "$batch" --backends "$backends" "$graphs" \
        --json "bench/${tag}.json" --plot "bench/${tag}.png"
    done
  done
done
