#!/usr/bin/env python3
"""Dequantizes raw GGUF blocks with the Python `gguf` package, the formats' reference.

    dequantize.py GGML_TYPE IN OUT

IN holds whole blocks of ggml type GGML_TYPE (an integer id); OUT receives the values as
little-endian f32. Exits with status 3 and says how to install `gguf` when it is missing.
"""
import sys

try:
    import numpy as np
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize
except ImportError as e:
    print(f"the Python package gguf is missing ({e}): pip install gguf", file=sys.stderr)
    sys.exit(3)

qtype = GGMLQuantizationType(int(sys.argv[1]))
data = np.fromfile(sys.argv[2], dtype=np.uint8)
values = dequantize(data.reshape((1, -1)), qtype).astype("<f4")
values.tofile(sys.argv[3])
