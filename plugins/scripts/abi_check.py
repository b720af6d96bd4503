#!/usr/bin/env python3
"""End-to-end ABI v1 check of built plugins, in a real wasm runtime, independent of the proxy's host.

Needs `pip install wasmtime msgpack`. Run after `cargo build --release --target wasm32-wasip1`:

    python3 scripts/abi_check.py target/wasm32-wasip1/release

It follows sdk/ABI.md literally: weir_alloc + write + weir_init/weir_process, unpack (ptr << 32) | len, copy the
result out, weir_free it. Prints one line per check and exits non-zero on the first failure.
"""
import os
import sys

import msgpack
import wasmtime

LOGS, COUNTERS = [], {}


def instantiate(path):
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())  # no env, args, files
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    mem_ref = {}

    def read(ptr, length):
        return bytes(mem_ref["m"].read(store, ptr, ptr + length))

    def log(level, ptr, length):
        LOGS.append((level, read(ptr, length).decode()))

    def now_ms():
        return 1_700_000_000_000

    def counter_add(ptr, length, delta):
        name = read(ptr, length).decode()
        COUNTERS[name] = COUNTERS.get(name, 0) + delta

    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    linker.define_func("weir", "log", wasmtime.FuncType([i32, i32, i32], []), log)
    linker.define_func("weir", "now_ms", wasmtime.FuncType([], [i64]), now_ms)
    linker.define_func("weir", "counter_add", wasmtime.FuncType([i32, i32, i64], []), counter_add)
    module = wasmtime.Module.from_file(engine, path)
    inst = linker.instantiate(store, module)
    ex = inst.exports(store)
    mem_ref["m"] = ex["memory"]
    return store, ex, read


def call_with(store, ex, fn, data):
    ptr = ex["weir_alloc"](store, len(data))
    assert ptr != 0 or len(data) == 0, "weir_alloc returned 0"
    if data:
        ex["memory"].write(store, data, ptr)
    packed = ex[fn](store, ptr, len(data)) & 0xFFFF_FFFF_FFFF_FFFF
    return packed >> 32, packed & 0xFFFF_FFFF


def take(store, ex, read, ptr, length):
    if length == 0:
        return None
    out = read(ptr, length)
    ex["weir_free"](store, ptr, length)
    return out


def event(msg, **attrs):
    return {"timestamp": 1, "message": msg, "host": "h", "service": None, "source": None, "status": "info",
            "tags": ["env:test"], "attributes": attrs}


def run(path, config, events):
    store, ex, read = instantiate(path)
    assert ex["weir_abi_version"](store) == 1
    err = take(store, ex, read, *call_with(store, ex, "weir_init", msgpack.packb(config)))
    assert err is None, f"init failed: {err!r}"
    out = take(store, ex, read, *call_with(store, ex, "weir_process", msgpack.packb({"events": events})))
    result = msgpack.unpackb(out)
    assert len(result["results"]) == len(events), result
    # A second batch on the same instance: state and allocator survive.
    out2 = take(store, ex, read, *call_with(store, ex, "weir_process", msgpack.packb({"events": events})))
    assert msgpack.unpackb(out2) == result
    return result["results"]


def check(name, cond):
    print(("ok   " if cond else "FAIL ") + name)
    if not cond:
        sys.exit(1)


def main(d):
    empty, jp, red = (os.path.join(d, f) for f in ("empty.wasm", "json_parse.wasm", "redact.wasm"))

    r = run(empty, None, [event("a"), event("b")])
    check("empty keeps unchanged", r == [{"verdict": "keep", "event": None}] * 2)
    big = [event("x" * 200, n=i, f=1.5, nested={"a": [1, None, True]}) for i in range(2000)]
    r = run(empty, {"ignored": 1}, big)
    check("empty: 2000-event batch", len(r) == 2000)

    r = run(jp, {"target": "j"}, [event('{"message":"hi","n":-3,"x":{"y":[1.25,null]}}'), event("plain")])
    check("json-parse nests under target", r[0]["event"]["attributes"]["j"] == {"n": -3, "x": {"y": [1.25, None]}}
          and r[0]["event"]["message"] == "hi" and r[1]["event"] is None)
    check("json-parse counters via host import", COUNTERS.get("parsed", 0) >= 1 and COUNTERS.get("not_json", 0) >= 1)

    r = run(red, {"styles": {"email": "hash"}, "hash_key": "k"},
            [event("card 4111 1111 1111 1111 from a@b.io at 10.0.0.1", ip="2001:db8::1"), event("clean")])
    e = r[0]["event"]
    check("redact masks message", e["message"].startswith("card [REDACTED:credit_card] from [REDACTED:email:")
          and e["message"].endswith(" at [REDACTED:ipv4]"))
    check("redact masks attributes", e["attributes"]["ip"] == "[REDACTED:ipv6]")
    check("redact: clean event is nil", r[1]["event"] is None)

    store, ex, read = instantiate(red)
    err = take(store, ex, read, *call_with(store, ex, "weir_init", msgpack.packb({"style": "hash"})))
    check("redact init error is a UTF-8 buffer", err is not None and b"hash_key" in err)

    store, ex, read = instantiate(empty)
    take(store, ex, read, *call_with(store, ex, "weir_init", b""))
    out = take(store, ex, read, *call_with(store, ex, "weir_process", b"\xc1garbage"))
    check("undecodable batch -> empty results + error log",
          msgpack.unpackb(out) == {"results": []} and any(l[0] == 0 for l in LOGS))
    print("all ABI checks passed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/wasm32-wasip1/release")
