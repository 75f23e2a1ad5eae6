"""Minimal safetensors writer/reader in numpy (the `safetensors` wheel is not in Debian).

Writes exactly the layout the reference writer produces: 8-byte little-endian header length,
JSON header padded with spaces to a multiple of 8, tensors sorted by dtype (descending) then name.
"""
import json
import struct

import numpy as np

_DTYPES = {  # numpy dtype -> (safetensors name, rank in the reference enum, for sorting)
    np.dtype("bool"): ("BOOL", 0), np.dtype("uint8"): ("U8", 1), np.dtype("int8"): ("I8", 2),
    np.dtype("int16"): ("I16", 3), np.dtype("uint16"): ("U16", 4), np.dtype("float16"): ("F16", 5),
    np.dtype("int32"): ("I32", 7), np.dtype("uint32"): ("U32", 8), np.dtype("float32"): ("F32", 9),
    np.dtype("float64"): ("F64", 10), np.dtype("int64"): ("I64", 11), np.dtype("uint64"): ("U64", 12),
}
_BY_NAME = {v[0]: k for k, v in _DTYPES.items()}


def _to_numpy(t):
    if hasattr(t, "detach"):  # torch tensor
        t = t.detach().cpu().contiguous().numpy()
    return np.asarray(t, order="C")  # keeps 0-d scalars 0-d (ascontiguousarray would make them [1])


def save(path, tensors, metadata=None):
    arrays = {k: _to_numpy(v) for k, v in tensors.items()}
    order = sorted(arrays, key=lambda k: (-_DTYPES[arrays[k].dtype][1], k))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for k in order:
        a = arrays[k]
        header[k] = {"dtype": _DTYPES[a.dtype][0], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for k in order:
            f.write(arrays[k].astype(arrays[k].dtype.newbyteorder("<"), copy=False).tobytes())


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for k, info in header.items():
        b, e = info["data_offsets"]
        out[k] = np.frombuffer(raw[base + b:base + e], dtype=_BY_NAME[info["dtype"]]).reshape(info["shape"]).copy()
    return out, meta
