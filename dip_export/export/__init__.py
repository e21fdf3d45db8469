"""Export stages: ONNX graphs (fp32 / fp16 / bf16), their manifest and verification."""
