#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_safetensors_header into corpus/ (stdlib only).

The seeds are committed; rerun this only to change them. python.safetensors is a copy of a file
written by the Python safetensors package (0.8.0), the rest are built here by hand.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def st(header, data=b"", pad=True):
    h = header.encode() if isinstance(header, str) else header
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def seeds():
    yield "empty_header", st("{}")
    yield "metadata_only", st(json.dumps({"__metadata__": {"format": "pt", "k": "v"}}))
    yield "one_f32", st(json.dumps({"w": entry("F32", [2, 2], 0, 16)}), bytes(range(16)))
    yield "scalar_and_empty", st(
        json.dumps({"s": entry("F16", [], 0, 2), "e": entry("BF16", [0, 4], 2, 2)}), b"\x00\x47")
    yield "sub_byte", st(
        json.dumps({"a": entry("F4", [2, 3], 0, 3), "b": entry("F6_E2M3", [4], 3, 6),
                    "c": entry("F8_E8M0", [2], 6, 8)}), b"abcdefgh")
    tensors, offset = {}, 0
    for i, (dtype, size) in enumerate([
            ("BOOL", 1), ("U8", 1), ("I8", 1), ("I16", 2), ("U16", 2), ("I32", 4), ("U32", 4),
            ("I64", 8), ("U64", 8), ("F16", 2), ("BF16", 2), ("F32", 4), ("F64", 8), ("C64", 8),
            ("F8_E4M3", 1), ("F8_E5M2", 1)]):
        tensors[f"t{i}"] = entry(dtype, [1], offset, offset + size)
        offset += size
    yield "all_dtypes", st(json.dumps(tensors), bytes(offset))
    # Invalid ones, so the fuzzer starts next to each rule's boundary.
    yield "duplicate_key", st('{"a":' + json.dumps(entry("U8", [1], 0, 1)) + ',"a":' +
                              json.dumps(entry("U8", [1], 0, 1)) + "}", b"x")
    yield "gap", st(json.dumps({"a": entry("U8", [1], 1, 2)}), b"xx")
    yield "overlap", st(json.dumps({"a": entry("U8", [2], 0, 2), "b": entry("U8", [1], 1, 2)}),
                        b"xx")
    yield "metadata_nested", st(json.dumps({"__metadata__": {"k": {"x": 1}}}))
    yield "huge_length", struct.pack("<Q", 100_000_001) + b"{}"
    yield "pickle", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94."
    yield "zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl"


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in seeds():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
