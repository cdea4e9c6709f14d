"""The verified cache on a 7B-sized model folder (issue 26): what a reuse costs.

Builds a sharded safetensors folder of a 7B Llama's layout (bf16, 32 layers, 4 shards, ~13.5 GB;
``--gb`` scales it, ``--quick`` 1 GB) with a tokenizer and config beside it, writes its manifest
as a stage does, and times:

- the **stat-matched reuse check** (what every reuse does by default: one ``stat`` per file);
- a **full re-hash**, warm (files in the page cache) and cold (each file's pages dropped first
  with ``posix_fadvise(DONTNEED)``), one core: BLAKE3 of every file plus the per-tensor XXH3
  digests of the safetensors files, in GB/s;
- BLAKE3 alone on one in-memory buffer (the hash library's own speed here).

Goals (issue 26): the stat check under 1 s; a full re-hash at the hash library's speed
(>= 1 GB/s per core). Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hhh_bench.core.content import HashCache, verify, write_manifest  # noqa: E402

# a Llama-2-7B's tensors (hidden 4096, MLP 11008, vocab 32000), bf16
HIDDEN, MLP, VOCAB, LAYERS = 4096, 11008, 32000, 32


def layout(scale: float) -> list[tuple[str, tuple[int, ...]]]:
    h, m = max(8, int(HIDDEN * scale**0.5)), max(8, int(MLP * scale**0.5))
    v = max(8, int(VOCAB * scale**0.5))
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
        out += [(p + f"mlp.{n}_proj.weight", (m, h)) for n in ("gate", "up")]
        out += [(p + "mlp.down_proj.weight", (h, m))]
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def write_folder(folder: Path, scale: float, shards: int = 4) -> int:
    """A sharded bf16 model folder; returns its bytes."""
    tensors = layout(scale)
    sizes = [2 * int(__import__("math").prod(s)) for _, s in tensors]
    per_shard = sum(sizes) / shards
    block = os.urandom(1 << 24)  # content does not change a hash's speed: tile 16 MiB
    groups: list[list[int]] = [[]]
    acc = 0
    for i, n in enumerate(sizes):
        if acc >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        acc += n
    weight_map, total = {}, 0
    for g, idx in enumerate(groups):
        name = f"model-{g + 1:05d}-of-{len(groups):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for i in idx:
            header[tensors[i][0]] = {"dtype": "BF16", "shape": list(tensors[i][1]),
                                     "data_offsets": [off, off + sizes[i]]}  # fmt: skip
            off += sizes[i]
            weight_map[tensors[i][0]] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / name, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            left = off
            while left:
                n = min(left, len(block))
                fh.write(block[:n])
                left -= n
        total += off
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {}}}) + " " * 2_000_000)
    (folder / "tokenizer.model").write_bytes(os.urandom(500_000))
    return total


def drop_pages(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=13.5, help="size of the folder (7B bf16: 13.5)")
    ap.add_argument("--quick", action="store_true", help="a 1 GB folder")
    ap.add_argument("--dir", default=None, help="where to build it (default: a temp folder)")
    args, _ = ap.parse_known_args()
    gb = 1.0 if args.quick else args.gb
    scale = gb / 13.48
    tmp = Path(tempfile.mkdtemp(prefix="hhh-bench-cache-", dir=args.dir))
    try:
        folder = tmp / "out"
        folder.mkdir()
        t = time.perf_counter()
        nbytes = write_folder(folder, scale)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        m = write_manifest(folder, None)
        manifest_s = time.perf_counter() - t
        n_files = len(m.files)
        rows = []
        t = time.perf_counter()
        v = verify(folder)  # the default on every reuse
        stat_s = time.perf_counter() - t
        assert not v.problems and v.rehashed == 0, v.problems
        rows.append(("stat-matched reuse check", stat_s, None, stat_s < 1.0, "< 1 s"))
        t = time.perf_counter()
        assert not verify(folder, full=True).problems
        warm_s = time.perf_counter() - t
        rows.append(("full re-hash, warm (1 core)", warm_s, nbytes / warm_s / 1e9,
                     nbytes / warm_s >= 1e9, ">= 1 GB/s"))  # fmt: skip
        drop_pages(folder)
        t = time.perf_counter()
        assert not verify(folder, full=True).problems
        cold_s = time.perf_counter() - t
        rows.append(("full re-hash, cold (1 core)", cold_s, nbytes / cold_s / 1e9,
                     nbytes / cold_s >= 1e9, ">= 1 GB/s"))  # fmt: skip
        # a copied folder: new inodes, so the first reuse re-hashes through the hash cache
        buf = os.urandom(1 << 28)
        t = time.perf_counter()
        blake3.blake3(buf).digest()
        lib = len(buf) / (time.perf_counter() - t) / 1e9
        cache = HashCache(tmp / "hashes")
        copy = tmp / "copy"
        shutil.copytree(folder, copy)
        t = time.perf_counter()
        assert not verify(copy, cache=cache).problems
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        assert not verify(copy, cache=cache).problems
        second_s = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"folder: {nbytes / 1e9:.2f} GB of bf16 safetensors in {n_files} files "
          f"(7B layout scaled by {scale:.3f}); written in {write_s:.1f} s, manifest in "
          f"{manifest_s:.1f} s ({nbytes / manifest_s / 1e9:.2f} GB/s)")  # fmt: skip
    print(f"BLAKE3 alone, one core, in memory: {lib:.2f} GB/s\n")
    print("| check | seconds | GB/s | goal | held |")
    print("| --- | ---: | ---: | --- | --- |")
    for name, s, rate, ok, goal in rows:
        print(f"| {name} | {s:.3f} | {'' if rate is None else f'{rate:.2f}'} | {goal} | "
              f"{'held' if ok else 'MISSED'} |")  # fmt: skip
    print(f"| copied folder, first reuse (re-hash via the hash cache) | {first_s:.3f} | "
          f"{nbytes / first_s / 1e9:.2f} | | |")  # fmt: skip
    print(f"| copied folder, second reuse (hash cache hits) | {second_s:.3f} | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
