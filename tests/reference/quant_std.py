"""The spread of quantized blocks as the Python package `gguf` dequantizes them.

usage: python3 quant_std.py < {"items": [{"type": GGML_TYPE, "path": FILE_OF_BLOCKS}, ...]}
prints: {"items": [{"type", "values", "std", "mean", "finite"}, ...]}
"""
import json
import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
except ImportError as e:  # the Rust test shows this message
    sys.exit(f"quant_std.py needs the Python package gguf ({e}): python3 -m pip install gguf (or `make python-deps`)")

out = []
for item in json.load(sys.stdin)["items"]:
    qtype = GGMLQuantizationType(item["type"])
    data = np.fromfile(item["path"], dtype=np.uint8)
    values = dequantize(data, qtype).astype(np.float64).ravel()
    finite = bool(np.isfinite(values).all())
    out.append({
        "type": item["type"],
        "values": int(values.size),
        "std": float(values.std()) if finite else None,
        "mean": float(values.mean()) if finite else None,
        "finite": finite,
    })
print(json.dumps({"items": out}))
