#!/usr/bin/env python3
"""Writes the seed corpus of the gguf_tokenizer fuzz target: each real model's header with its
metadata kept (chat template included) but its vocabulary cut to the first 600 tokens plus the
special tokens the metadata names, the merges among those, and its first tensors' names; so a
seed is a few tens of KiB and the fuzzer mutates real files rather than random bytes.

usage: fuzz/seeds.py MODELS_DIR OUT_DIR
"""
import os
import struct
import sys

import gguf

KEEP = 600
V = gguf.GGUFValueType
SCALAR = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
          V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}


def string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    if vtype == V.STRING:
        return string(v)
    return struct.pack(SCALAR[vtype], v)


def field_values(field):
    """The field's values: a list for arrays, one value otherwise."""
    vtype = field.types[-1]
    out = []
    for i in field.data:
        part = field.parts[i]
        out.append(bytes(part) if vtype == V.STRING else part.tolist()[0])
    return out


def reduce(path, out):
    r = gguf.GGUFReader(path)
    fields = dict(r.fields)
    tokens = field_values(fields["tokenizer.ggml.tokens"])
    special_keys = [k for k in fields if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")]
    keep = list(range(min(KEEP, len(tokens))))
    for k in special_keys:
        tid = field_values(fields[k])[0]
        if tid >= len(keep) and tid < len(tokens) and tid not in keep:
            keep.append(tid)
    new_id = {old: new for new, old in enumerate(keep)}
    kept_text = {tokens[i] for i in keep}
    kvs = []
    for name, field in fields.items():
        if name.startswith("GGUF."):
            continue
        vals = field_values(field)
        if name in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            vals = [vals[i] for i in keep]
        elif name == "tokenizer.ggml.merges":
            merged = []
            for m in vals:
                parts = m.split(b" ")
                if len(parts) == 2 and parts[0] in kept_text and parts[1] in kept_text and parts[0] + parts[1] in kept_text:
                    merged.append(m)
            vals = merged
        elif name in special_keys:
            vals = [new_id.get(vals[0], 0)]
        if field.types[0] == V.ARRAY:
            body = struct.pack("<IQ", field.types[-1], len(vals)) + b"".join(value(field.types[-1], v) for v in vals)
        else:
            body = value(field.types[0], vals[0])
        kvs.append(string(name) + struct.pack("<I", field.types[0]) + body)
    infos = []
    for n, t in enumerate(r.tensors[:4]):
        # The real names, as small F32 tensors of 8 values whose data follows the header.
        infos.append(string(t.name) + struct.pack("<IQIQ", 1, 8, 0, 32 * n))
    header = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    header += b"\0" * (-len(header) % 32)
    with open(out, "wb") as f:
        f.write(header + struct.pack("<8f", *range(8)) * len(infos))


def main():
    models, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(models)):
        if name.endswith(".gguf"):
            reduce(os.path.join(models, name), os.path.join(out, name[: -len(".gguf")] + ".seed"))


if __name__ == "__main__":
    main()
