"""Compile the Triton kernels for NVIDIA GPUs without one, and read their static resource figures.

``triton.compile`` lowers a kernel to PTX and a cubin for a given architecture on any machine; the
``cuobjdump`` that ships inside triton (``triton/backends/nvidia/bin``) then reports registers per
thread, local memory (register spills and stack) and shared memory. The test suite compiles every kernel
at the block sizes ``triton_sddmm.KERNEL_CONFIGS`` uses, for sm_80 and sm_90, so a kernel the interpreter
accepts but the GPU compiler rejects, or one that spills, does not land unnoticed.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spiel.delta.triton_sddmm import KERNEL_CONFIGS, kernels

ARCHES = (80, 90)
DTYPES = {"bf16": "bf16", "fp32": "fp32"}
# Registers per thread above which a kernel is refused: 65536 registers per SM over 128 threads gives
# 4 programs at 128 registers; fewer resident programs starve these memory-bound kernels.
MAX_REGISTERS = 128


@dataclass
class StaticFigures:
    kernel: str
    dtype: str
    arch: int
    registers: int
    local_bytes: int  # per thread: spills plus stack
    shared_bytes: int  # static + what triton allocates dynamically
    config: dict

    def line(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return (
            f"{self.kernel:<7} {self.dtype:<5} sm_{self.arch}: {self.registers:>3} registers, "
            f"{self.local_bytes} B local (spills), {self.shared_bytes / 1024:.1f} KiB shared  [{cfg}]"
        )


def _signature(kernel: str, dtype: str) -> tuple[dict, dict]:
    cfg = KERNEL_CONFIGS[kernel]
    if kernel == "gather":
        sig = {
            "xt_ptr": f"*{dtype}",
            "gt_ptr": f"*{dtype}",
            "idx_ptr": "*i32",
            "out_ptr": "*fp32",
            "k": "i32",
            "tokens": "i32",
            "in_features": "i32",
            "stride_x": "i32",
            "stride_g": "i32",
        }
        const = {"BLOCK_K": cfg["BLOCK_K"], "BLOCK_T": cfg["BLOCK_T"], "WIDE": False}
    elif kernel == "rows":
        sig = {
            "xt_ptr": f"*{dtype}",
            "gt_ptr": f"*{dtype}",
            "idx_ptr": "*i32",
            "crow_ptr": "*i32",
            "out_ptr": "*fp32",
            "tokens": "i32",
            "in_features": "i32",
            "stride_x": "i32",
            "stride_g": "i32",
        }
        const = {"BLOCK_K": cfg["BLOCK_K"], "BLOCK_T": cfg["BLOCK_T"], "WIDE": False}
    else:
        sig = {
            "x_ptr": f"*{dtype}",
            "g_ptr": f"*{dtype}",
            "idx_ptr": "*i32",
            "ptr_ptr": "*i32",
            "out_ptr": "*fp32",
            "tokens": "i32",
            "out_features": "i32",
            "in_features": "i32",
            "stride_x": "i32",
            "stride_g": "i32",
            "stride_p": "i32",
        }
        const = {
            "BLOCK_R": cfg["BLOCK_R"],
            "BLOCK_C": cfg["BLOCK_C"],
            "BLOCK_T": cfg["BLOCK_T"],
            "GROUP_R": 8,
            "UPCAST": False,
            "IEEE": dtype == "fp32",
        }
    sig.update({name: "constexpr" for name in const})
    return sig, const


def cuobjdump() -> Path:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.is_file():
        raise FileNotFoundError(f"no cuobjdump at {path}: this triton wheel does not ship the NVIDIA tools")
    return path


def compile_kernel(kernel: str, dtype: str, arch: int) -> StaticFigures:
    """Compile one kernel for ``sm_<arch>`` and read its resource usage from the cubin."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError(
            "triton is in interpreter mode (TRITON_INTERPRET=1): run the compile check in a "
            "process without it"
        )
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = KERNEL_CONFIGS[kernel]
    sig, const = _signature(kernel, dtype)
    options = {"num_warps": cfg["num_warps"], "num_stages": cfg.get("num_stages", 3)}
    # As the JIT specializes a launch: pointers, and (at LLaMA shapes) every size and stride, divisible by 16.
    fn = kernels()[kernel]
    attrs = {
        (fn.arg_names.index(name),): [["tt.divisibility", 16]]
        for name, kind in sig.items()
        if kind != "constexpr" and name != "k"
    }
    compiled = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=options,
    )
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        report = subprocess.run(
            [str(cuobjdump()), "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", report)
    if usage is None:
        raise RuntimeError(f"cannot read cuobjdump's resource usage:\n{report}")
    regs, stack, shared, local = (int(v) for v in usage.groups())
    return StaticFigures(
        kernel,
        dtype,
        arch,
        regs,
        local + stack,
        shared + int(compiled.metadata.shared),
        {k: v for k, v in cfg.items()},
    )


def compile_all(arches=ARCHES) -> list[StaticFigures]:
    return [
        compile_kernel(kernel, dtype, arch)
        for kernel in KERNEL_CONFIGS
        for dtype in DTYPES
        for arch in arches
    ]
