#!/usr/bin/env bash
# GPU rows of bench/RESULTS.md, on a machine with an NVIDIA GPU:
#   pip install -e ".[gpu]"            # TensorRT + Polygraphy
#   pip uninstall -y onnxruntime && pip install onnxruntime-gpu    # ONNX Runtime on CUDA (optional)
#   scripts/gpu_bench.sh [CKPT | --preset dip-xl-16] [more dip-bench options]
# Writes bench/gpu-<model>-b<batch>[-nographs].{json,png}: eager, compile, ONNX Runtime CUDA and
# TensorRT fp16/int8, with and without whole-step CUDA graphs, at batch 1 and 16.
set -euo pipefail
cd "$(dirname "$0")/.."
model=("$@")
[ ${#model[@]} -gt 0 ] || model=(--preset dip-xl-16)
name=$(printf '%s' "${model[*]}" | tr -c 'a-zA-Z0-9' '-' | sed 's/--*/-/g; s/^-//; s/-$//')
backends="torch,torch:bf16,compile,compile:bf16,onnx,trt:fp16,trt:int8"
for batch in 1 16; do
  for graphs in --cuda-graphs --no-cuda-graphs; do
    tag="gpu-${name}-b${batch}${graphs/--cuda-graphs/}"
    tag="${tag/--no-cuda-graphs/-nographs}"
    dip-bench "${model[@]}" --device cuda --steps 50 --batch "$batch" --backends "$backends" "$graphs" \
      --json "bench/${tag}.json" --plot "bench/${tag}.png"
  done
done
