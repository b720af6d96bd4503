"""A plugin written in C (sdk/include/weir_abi.h), compiled with zig's clang from
PyPI, runs under `weir plugin test` like a Rust one: ABI v1 is language-neutral."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import WEIR_BIN

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "plugins" / "c-drop-matching"


def build(tmp_path: Path) -> Path:
    out = tmp_path / "drop_matching.wasm"
    subprocess.run(["bash", str(PLUGIN_DIR / "build.sh"), str(out)], check=True, capture_output=True)
    assert out.stat().st_size > 0
    return out


def run(plugin: Path, tmp_path: Path, config: str | None, events: list[dict]):
    sample = tmp_path / "sample.ndjson"
    sample.write_text("".join(json.dumps(e) + "\n" for e in events))
    cmd = [str(WEIR_BIN), "plugin", "test", str(plugin), "--input", str(sample)]
    if config is not None:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config)
        cmd += ["--config", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_c_plugin_filters_by_its_config(tmp_path):
    plugin = build(tmp_path)
    events = [
        {"message": "DEBUG cache warmed", "service": "a"},
        {"message": "user 42 logged in", "service": "b", "nested": {"list": [1, 2.5, None, True], "s": "x" * 300}},
        {"message": "payment failed", "status": "error", "ddtags": "env:prod"},
    ]
    out = run(plugin, tmp_path, None, events)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    assert [l["verdict"] for l in lines] == ["drop", "keep", "keep"]
    # Kept events come back unchanged.
    assert lines[1]["event"]["nested"] == events[1]["nested"]

    out = run(plugin, tmp_path, 'needle: "logged"\n', events)
    assert out.returncode == 0, out.stderr
    assert [json.loads(l)["verdict"] for l in out.stdout.splitlines()] == ["keep", "drop", "keep"]


def test_c_plugin_refuses_a_bad_config(tmp_path):
    plugin = build(tmp_path)
    out = run(plugin, tmp_path, "needle: 5\n", [{"message": "x"}])
    assert out.returncode == 1
    assert "`needle` must be a string" in out.stderr, out.stderr
