#!/usr/bin/env python3
"""Checks of the CUDA peer image: that torch is a CUDA build and bitsandbytes can run on the GPU.

    gpu_check.py ld-conf FILE         write the library folders of the NVIDIA pip wheels (for ldconfig)
    gpu_check.py build --torch X.Y.Z  at build time, no GPU needed: torch is X.Y.Z built for CUDA, and the
                                      bitsandbytes library for that CUDA version is present with every
                                      shared library it needs resolvable (ldd: nothing "not found")
    gpu_check.py [gpu]                on a GPU host (`docker run --gpus all --entrypoint python IMAGE
                                      /opt/cairn/gpu_check.py`): a CUDA device is visible, and 8-bit
                                      blockwise quantisation (what the peers' gradient compression uses)
                                      round-trips on it

Why ld-conf: bitsandbytes dlopen()s libbitsandbytes_cudaXYZ.so, which needs libcudart/libcublas/
libcublasLt. In this image they come with torch's CUDA build as NVIDIA pip wheels (site-packages/nvidia/
*/lib), not from a system CUDA toolkit; torch finds them by itself, the dynamic loader only once they
are in ld.so.conf.d. Every mode prints one JSON line and exits 1 when a check fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path


def nvidia_library_dirs() -> list[Path]:
    """Folders holding the shared libraries of the NVIDIA wheels, and torch's own lib folder."""
    site = Path(sysconfig.get_paths()["purelib"])
    dirs = {path.parent for path in (site / "nvidia").glob("*/lib/*.so*")}
    dirs.add(site / "torch" / "lib")
    return sorted(dirs)


def bnb_library(cuda_version: str) -> Path:
    """bitsandbytes' library for a CUDA version such as "12.6" (libbitsandbytes_cuda126.so)."""
    import importlib.util

    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or spec.origin is None:
        raise RuntimeError("bitsandbytes is not installed")
    major, minor = cuda_version.split(".")[:2]
    return Path(spec.origin).parent / f"libbitsandbytes_cuda{major}{minor}.so"


def missing_libraries(ldd_output: str) -> list[str]:
    """Names that `ldd` could not resolve."""
    return [line.split("=>")[0].strip() for line in ldd_output.splitlines() if "not found" in line]


def check_build(expected_torch: str) -> dict:
    import torch

    result: dict = {"torch": torch.__version__, "cuda": torch.version.cuda}
    problems = []
    if torch.__version__.split("+")[0] != expected_torch:
        problems.append(f"torch {torch.__version__} is not {expected_torch}")
    if not torch.version.cuda:
        problems.append("torch is not a CUDA build")
    else:
        library = bnb_library(torch.version.cuda)
        result["bitsandbytes_library"] = library.name
        if not library.exists():
            problems.append(f"{library} is missing: bitsandbytes has no build for CUDA {torch.version.cuda}")
        else:
            ldd = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False)
            missing = missing_libraries(ldd.stdout)
            if ldd.returncode != 0 or missing:
                problems.append(f"{library.name} cannot load: missing {', '.join(missing) or ldd.stderr.strip()}")
    result["problems"] = problems
    return result


def check_gpu() -> dict:
    import bitsandbytes.functional as bnb
    import torch

    result: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "problems": []}
    if not torch.cuda.is_available():
        result["problems"].append("no CUDA device visible (run with --gpus all and the NVIDIA Container Toolkit)")
        return result
    result["device"] = torch.cuda.get_device_name(0)
    values = torch.randn(1 << 16, device="cuda")
    quantized, state = bnb.quantize_blockwise(values, blocksize=4096)
    restored = bnb.dequantize_blockwise(quantized, state)
    error = float((values - restored).abs().max())
    result.update(quantized_dtype=str(quantized.dtype), quantized_device=str(quantized.device), max_abs_error=error)
    if quantized.device.type != "cuda" or quantized.dtype != torch.uint8:
        result["problems"].append("bitsandbytes did not quantise on the GPU")
    if not error < 0.1:
        result["problems"].append(f"8-bit round trip error {error} is too large")
    return result


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    mode = args[0] if args else "gpu"
    if mode == "ld-conf" and len(args) == 2:
        dirs = nvidia_library_dirs()
        Path(args[1]).write_text("".join(f"{d}\n" for d in dirs))
        print(json.dumps({"ld_conf": args[1], "dirs": [str(d) for d in dirs]}))
        return 0
    if mode == "build" and len(args) == 3 and args[1] == "--torch":
        result = check_build(args[2])
    elif mode == "gpu" and len(args) <= 1:
        result = check_gpu()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
