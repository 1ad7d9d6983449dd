"""manifest.json: what a guest build was made from and what it produced (sizes and sha256)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_outputs(paths: list[Path]) -> dict[str, dict[str, object]]:
    return {p.name: {"size": p.stat().st_size, "sha256": sha256(p)} for p in paths}


def write(output_dir: Path, inputs: dict[str, object], outputs: list[Path]) -> Path:
    manifest = {"inputs": inputs, "outputs": describe_outputs(outputs)}
    path = output_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
