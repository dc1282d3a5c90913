"""Cold and warm load of a full-size MolmoE checkpoint: time and peak memory. Prints figures, asserts nothing.

    .venv/bin/python bench/load.py            # full size: writes ~29 GB of fp32 shards, then ~14 GB of cache
    .venv/bin/python bench/load.py --quantization none int8   # both caches from one checkpoint (+7.5 GB)
    .venv/bin/python bench/load.py --small    # the tiny model's shapes, to try the script in seconds

It writes a random checkpoint in the released layout and dtype (reference key names and shapes from
real_checkpoint_keys.json, fp32, `pytorch_model-*.bin` shards with an index, config from
real_config.json) to a temporary directory, then runs in a fresh child process each, for every
`--quantization` given (none: bfloat16 weights; int8: int8 weights, the rest bfloat16):
- cold: `load_checkpoint` in bfloat16 with an empty weights cache, i.e. the conversion into the cache
  and the load from it, as the first start of the node does;
- warm: the same call again, which loads straight from the cache.
It also prints the bytes the loaded parameters take (int8 values and their scales for int8 weights) and
the size of each cache on disk.
After each load the child reads one value per memory page of every weight: on CPU the cache's tensors are
memory-mapped by safetensors, so the load itself reads almost nothing and the disk reads happen on first
use; the read shows that cost.
Each child samples its own /proc/self/status every few milliseconds and reports its wall time, its peak
resident memory (VmHWM) and the peaks of anonymous and file-backed resident memory: the fp32 shards are
memory-mapped, so their pages count as file-backed (the kernel may drop them at will), while the
converted tensors are anonymous. The page cache is not dropped between steps (that needs root and would
slow the other users of the machine), so the cold figure is for shards that may partly be in it.
Everything is deleted at the end, also after an error or Ctrl-C.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

GIB = 2**30
SAMPLE_INTERVAL_S = 0.005
PAGE_BYTES = 4096
SHARD_BYTES = 5 * 10**9  # about the size of the released .bin shards
DISK_MARGIN_BYTES = 4 * GIB  # left free for everyone else on the disk
STATUS_FIELDS = ("VmHWM", "RssAnon", "RssFile")


def default_reference_dir() -> Path:
    return Path(os.environ.get("MOLMO_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "molmo_reference"))


def reference_shapes(reference_dir: Path, small: bool) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(config.json content, reference tensor name -> shape) of the real model, or of the tiny one."""
    from molmo_ros.backends.molmoe.config import MolmoConfig
    from molmo_ros.backends.molmoe.key_mapping import expected_reference_shapes

    if small:
        config = json.loads((reference_dir / "tiny" / "config.json").read_text())
        return config, expected_reference_shapes(MolmoConfig.from_dict(config))
    config = json.loads((reference_dir / "real_config.json").read_text())
    listed = json.loads((reference_dir / "real_checkpoint_keys.json").read_text())["keys"]
    if any(entry["dtype"] != "float32" for entry in listed):
        raise SystemExit("real_checkpoint_keys.json lists tensors that are not float32")
    return config, {entry["key"]: tuple(entry["shape"]) for entry in listed}


def write_checkpoint(
    directory: Path, config: dict, shapes: dict[str, tuple[int, ...]], shard_bytes: int
) -> int:
    """Random fp32 `.bin` shards of about shard_bytes each plus their index; returns the bytes written."""
    import torch

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    groups: list[list[str]] = [[]]
    group_bytes = 0
    for name, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        if groups[-1] and group_bytes + size > shard_bytes:
            groups.append([])
            group_bytes = 0
        groups[-1].append(name)
        group_bytes += size
    weight_map, total = {}, 0
    for index, names in enumerate(groups, start=1):
        file = f"pytorch_model-{index:05d}-of-{len(groups):05d}.bin"
        shard = {name: torch.empty(shapes[name]).normal_(0.0, 0.02, generator=generator) for name in names}
        torch.save(shard, directory / file)
        total += sum(tensor.numel() * 4 for tensor in shard.values())
        weight_map.update(dict.fromkeys(names, file))
        del shard
        print(f"  wrote {file} ({(directory / file).stat().st_size / GIB:.2f} GiB)", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return total


def _status_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in STATUS_FIELDS:
                values[name] = int(rest.split()[0])
    return values


def stored_tensors(parameter) -> list:
    """The plain tensors holding a parameter: an int8 weight's values, scales and zero points."""
    from torchao.quantization import Int8Tensor

    if isinstance(parameter, Int8Tensor):
        return [t for t in (parameter.qdata, parameter.scale, parameter.zero_point) if t is not None]
    return [parameter.detach()]


def child_load(checkpoint_dir: Path, cache_dir: Path, quantization: str) -> None:
    """One load in this process; prints one JSON line with time and memory."""
    import torch

    from molmo_ros.backends.molmoe.checkpoint import load_checkpoint

    peaks = dict.fromkeys(STATUS_FIELDS, 0)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for name, value in _status_kib().items():
                peaks[name] = max(peaks[name], value)
            time.sleep(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    loaded = load_checkpoint(
        str(checkpoint_dir),
        None,
        torch.device("cpu"),
        torch.bfloat16,
        cache_dir=cache_dir,
        quantization=quantization,
    )
    seconds = time.perf_counter() - started
    after_load = _status_kib()
    # Tensors loaded from safetensors on CPU may be memory-mapped: their pages are read on first use, so
    # the load alone can look free. Reading one value per page of every weight shows that cost.
    started = time.perf_counter()
    stored = [tensor for parameter in loaded.model.parameters() for tensor in stored_tensors(parameter)]
    with torch.no_grad():
        for tensor in stored:
            flat = tensor.reshape(-1)
            flat[:: max(1, PAGE_BYTES // flat.element_size())].float().sum().item()
    touch_seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    final = _status_kib()
    parameters = sum(parameter.numel() for parameter in loaded.model.parameters())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "parameters": parameters,
                "parameter_bytes": sum(tensor.numel() * tensor.element_size() for tensor in stored),
                "peak_rss_gib": final["VmHWM"] / 2**20,
                "peak_anon_gib": max(peaks["RssAnon"], final["RssAnon"]) / 2**20,
                "peak_file_gib": max(peaks["RssFile"], final["RssFile"]) / 2**20,
                "after_load_anon_gib": after_load["RssAnon"] / 2**20,
                "after_load_file_gib": after_load["RssFile"] / 2**20,
                "touch_seconds": touch_seconds,
                "final_anon_gib": final["RssAnon"] / 2**20,
                "final_file_gib": final["RssFile"] / 2**20,
                "from_cache": str(cache_dir) in loaded.description,
            }
        )
    )


def run_child(checkpoint_dir: Path, cache_dir: Path, quantization: str) -> dict:
    command = [sys.executable, __file__, "--child", str(checkpoint_dir), str(cache_dir), quantization]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"the load failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    """Build or reuse the checkpoint, then load it each asked way (long: argument parsing and the report)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference-dir", type=Path, default=default_reference_dir())
    parser.add_argument(
        "--small", action="store_true", help="the tiny model's shapes instead of the real ones"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the temporary directory goes (default: system tmp)"
    )
    parser.add_argument("--shard-gb", type=float, default=SHARD_BYTES / 10**9, help="size of each .bin shard")
    parser.add_argument(
        "--quantization",
        nargs="+",
        choices=("none", "int8"),
        default=["none"],
        help="load (and cache) with these engine.quantization values, one after the other",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        checkpoint_dir, cache_dir, quantization = args.child
        child_load(Path(checkpoint_dir), Path(cache_dir), quantization)
        return

    config, shapes = reference_shapes(args.reference_dir, args.small)
    import torch

    fp32_bytes = sum(4 * int(torch.Size(shape).numel()) for shape in shapes.values())
    workdir = Path(tempfile.mkdtemp(prefix="molmo_load_bench-", dir=args.workdir))
    try:
        # fp32 shards, one cache at a time (bf16: half their size, int8: a quarter) and a margin
        caches = {"none": fp32_bytes // 2, "int8": fp32_bytes // 4}
        needed = fp32_bytes + max(caches[q] for q in args.quantization) + DISK_MARGIN_BYTES
        free = shutil.disk_usage(workdir).free
        if free < needed:
            raise SystemExit(
                f"{workdir} has {free / GIB:.1f} GiB free, this run needs {needed / GIB:.1f} GiB"
            )
        print(
            f"{'tiny' if args.small else 'real'} shapes: {len(shapes)} tensors, "
            f"{fp32_bytes / GIB:.2f} GiB in fp32"
        )
        print(f"host: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
        started = time.perf_counter()
        written = write_checkpoint(workdir / "checkpoint", config, shapes, int(args.shard_gb * 10**9))
        print(f"writing the fp32 checkpoint: {time.perf_counter() - started:.1f} s, {written / GIB:.2f} GiB")
        cache_dir = workdir / "cache"
        for quantization in dict.fromkeys(args.quantization):
            kind = "bf16" if quantization == "none" else f"{quantization} (the rest bf16)"
            before = {path.name for path in cache_dir.glob("*")}
            for step in ("cold (convert to the cache, then load it)", "warm (load the cache)"):
                figures = run_child(workdir / "checkpoint", cache_dir, quantization)
                report(f"{kind}, {step}", figures)
            for entry in sorted(path for path in cache_dir.glob("*") if path.name not in before):
                entry_bytes = sum(path.stat().st_size for path in entry.rglob("*") if path.is_file())
                print(f"{kind} cache on disk: {entry_bytes / GIB:.2f} GiB ({entry_bytes / 1e9:.2f} GB)")
                shutil.rmtree(entry)  # measured: make room for the next one
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {workdir}")


def report(name: str, figures: dict) -> None:
    print(
        f"{name}: {figures['seconds']:.1f} s, {figures['parameters'] / 1e9:.3f} B parameters"
        f" in {figures['parameter_bytes'] / 1e9:.2f} GB ({figures['parameter_bytes'] / GIB:.2f} GiB)"
        + ("" if figures["from_cache"] else " (NOT through the cache: it could not be written)")
        + f"\n  resident right after the load: anonymous {figures['after_load_anon_gib']:.2f} GiB, "
        f"file-backed {figures['after_load_file_gib']:.2f} GiB"
        f"\n  first read of every weight page: {figures['touch_seconds']:.1f} s; then anonymous "
        f"{figures['final_anon_gib']:.2f} GiB, file-backed {figures['final_file_gib']:.2f} GiB"
        f"\n  peak over the load and the read: RSS {figures['peak_rss_gib']:.2f} GiB (anonymous "
        f"{figures['peak_anon_gib']:.2f}, file-backed {figures['peak_file_gib']:.2f})"
    )


if __name__ == "__main__":
    main()
