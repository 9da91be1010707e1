"""Build, cache and call the native CPU kernel that fuses a whole Padam step into one pass.

The kernel (:mod:`padam_lightning.optim._native_source`) is plain C++ without torch headers, so a
build takes a few seconds. It is built on first use with the system's C++ compiler, cached on
disk under a name that hashes the source, the compiler and the CPU (it is built with
``-march=native``), and loaded with :mod:`ctypes`, which releases the GIL while it runs. One build
serves every shape, dtype and hyperparameter value, so changing ``partial`` or the learning rate
never rebuilds anything.

Environment variables:
    ``PADAM_LIGHTNING_NATIVE=0`` turns the kernel off (the multi-tensor path is used instead).
    ``PADAM_LIGHTNING_CACHE`` names the cache folder (default ``~/.cache/padam_lightning``).
    ``CXX`` names the C++ compiler (default: the first of ``c++``, ``g++``, ``clang++``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from padam_lightning.optim._native_source import NATIVE_SOURCE

# Dtype codes shared with the C++ source.
_DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float64: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
}
_BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno"]
# Tried in order: the first set that compiles wins. Later sets drop options an older or a
# non-GNU compiler may reject.
_FLAG_SETS = [
    [*_BASE_FLAGS, "-march=native", "-fopenmp-simd"],
    [*_BASE_FLAGS, "-fopenmp-simd"],
    _BASE_FLAGS,
]
_BUILD_TIMEOUT_S = 300
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


class NativeKernelUnavailableError(RuntimeError):
    """The native kernel could not be built or loaded; the message says why."""


class NativeKernel:
    """A loaded build of the native kernel: updates all tensors of one dtype in one call."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._library = library
        pointer = ctypes.c_void_p
        self._step = library.padam_step
        self._step.restype = ctypes.c_int
        self._step.argtypes = [
            ctypes.c_int,  # dtype
            ctypes.c_int,  # num_threads
            ctypes.c_int64,  # n_tensors
            pointer,  # params
            pointer,  # grads
            pointer,  # exp_avgs
            pointer,  # exp_avg_sqs
            pointer,  # max_exp_avg_sqs (NULL without amsgrad)
            pointer,  # numels
            pointer,  # step_sizes
            *[ctypes.c_double] * 7,  # beta1, beta2, eps, weight_decay, decay, grad_sign, two_p
            ctypes.c_int,  # plan
        ]
        supports = library.padam_supports_dtype
        supports.restype = ctypes.c_int
        supports.argtypes = [ctypes.c_int]
        self.dtypes = frozenset(dtype for dtype, code in _DTYPE_CODES.items() if supports(code))
        max_plan = library.padam_max_sqrt_plan
        max_plan.restype = ctypes.c_int
        self.max_sqrt_plan: int = max_plan()

    def step(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        exp_avgs: Sequence[Tensor],
        exp_avg_sqs: Sequence[Tensor],
        max_exp_avg_sqs: Sequence[Tensor] | None,
        step_sizes: Sequence[float],
        *,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        decay: float,
        grad_sign: float,
        two_p: float,
        plan: int,
    ) -> None:
        """Update dense CPU tensors of one dtype with identical layouts in place.

        Args:
            params: Parameters, updated in place.
            grads: Their gradients (read only).
            exp_avgs: First moments, updated in place.
            exp_avg_sqs: Second moments, updated in place.
            max_exp_avg_sqs: Running maxima of the second moments, or None without AMSGrad.
            step_sizes: Per tensor, ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``.
            beta1: First-moment decay.
            beta2: Second-moment decay.
            eps: Added to ``sqrt(vhat)`` before the power.
            weight_decay: Coupled (L2) weight decay added to the gradient; 0 for none.
            decay: Factor the parameter is multiplied by first (decoupled decay); 1 for none.
            grad_sign: -1 to maximize, else 1.
            two_p: ``2 * partial``, used by the general power.
            plan: How the power is computed (see :mod:`._native_source`).
        """
        count = len(params)
        if count == 0:
            return
        pointer_array = ctypes.c_void_p * count

        def pointers(tensors: Sequence[Tensor]) -> ctypes.Array[ctypes.c_void_p]:
            return pointer_array(*[t.data_ptr() for t in tensors])

        numels = (ctypes.c_int64 * count)(*[p.numel() for p in params])
        sizes = (ctypes.c_double * count)(*step_sizes)
        status = self._step(
            _DTYPE_CODES[params[0].dtype],
            torch.get_num_threads(),
            count,
            pointers(params),
            pointers(grads),
            pointers(exp_avgs),
            pointers(exp_avg_sqs),
            pointers(max_exp_avg_sqs) if max_exp_avg_sqs is not None else None,
            numels,
            sizes,
            beta1,
            beta2,
            eps,
            weight_decay,
            decay,
            grad_sign,
            two_p,
            plan,
        )
        if status != 0:
            raise RuntimeError(f"the native Padam kernel does not support {params[0].dtype}")


_lock = threading.Lock()
_kernel: NativeKernel | None = None
_failure: str | None = None
_warned = False


def native_kernel() -> NativeKernel | None:
    """Return the native kernel, building it on first use; None (after one warning) if impossible.

    Returns:
        The loaded kernel, or None when it is turned off, no compiler is found or the build fails;
        callers then use the multi-tensor implementation.
    """
    global _kernel, _failure, _warned
    if _kernel is not None:
        return _kernel
    if os.environ.get("PADAM_LIGHTNING_NATIVE", "1").strip().lower() in {"0", "false", "off", "no"}:
        return None
    with _lock:
        if _kernel is None and _failure is None:
            try:
                _kernel = NativeKernel(_load_or_build(cache_dir()))
            except (NativeKernelUnavailableError, OSError, AttributeError) as error:
                _failure = str(error)
        if _kernel is None and not _warned:
            _warned = True
            warnings.warn(
                f"Padam's native CPU kernel is unavailable ({_failure}); using the multi-tensor "
                "(foreach) implementation instead, which is about 6x slower on CPU. Install a C++ "
                "compiler (g++ or clang++, or set CXX) to enable it, or set "
                "PADAM_LIGHTNING_NATIVE=0 to silence this warning.",
                RuntimeWarning,
                stacklevel=2,
            )
    return _kernel


def cache_dir() -> Path:
    """Return the folder that holds built kernels (``$PADAM_LIGHTNING_CACHE`` overrides it)."""
    configured = os.environ.get("PADAM_LIGHTNING_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "padam_lightning"


def _compiler() -> str:
    configured = os.environ.get("CXX")
    candidates = [configured] if configured else ["c++", "g++", "clang++"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise NativeKernelUnavailableError(
        "no C++ compiler found on PATH (tried " + ", ".join(candidates) + ")"
    )


def _cpu_signature() -> str:
    # -march=native code must not be reused on another CPU (a cache on a shared home folder of a
    # cluster with mixed nodes), so the CPU's feature flags are part of the cache key.
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            parts += [line for line in cpuinfo if line.startswith(("flags", "Features"))][:1]
    except OSError:
        pass
    return "|".join(parts)


def _cache_key(compiler: str) -> str:
    resolved = os.path.realpath(compiler)
    stat = os.stat(resolved)
    digest = hashlib.sha256()
    for part in (
        NATIVE_SOURCE,
        resolved,
        f"{stat.st_size}:{stat.st_mtime_ns}",
        repr(_FLAG_SETS),
        _cpu_signature(),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def _load_or_build(directory: Path) -> ctypes.CDLL:
    compiler = _compiler()
    target = directory / f"padam_native_{_cache_key(compiler)}.so"
    if target.exists():
        try:
            return ctypes.CDLL(str(target))
        except OSError:
            pass  # a damaged file: build it again
    try:
        directory.mkdir(parents=True, exist_ok=True)
        build_dir = directory
    except OSError:
        build_dir = Path(tempfile.gettempdir())
        target = build_dir / target.name
    _build(compiler, target)
    return ctypes.CDLL(str(target))


def _build(compiler: str, target: Path) -> None:
    errors = []
    with tempfile.TemporaryDirectory(prefix="padam_build_", dir=target.parent) as work:
        source = Path(work) / "padam_native.cpp"
        source.write_text(NATIVE_SOURCE, encoding="utf-8")
        output = Path(work) / target.name
        for flags in _FLAG_SETS:
            command = [compiler, *flags, str(source), "-o", str(output)]
            try:
                result = subprocess.run(
                    command, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                errors.append(str(error))
                continue
            if result.returncode == 0:
                # Atomic, so that processes building at the same time never load half a file.
                os.replace(output, target)
                return
            errors.append(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "")
    raise NativeKernelUnavailableError(f"building with {compiler} failed: {errors[-1]}")


def native_supports(param: Tensor, grad: Tensor, states: Sequence[Tensor]) -> bool:
    """Whether the kernel can treat these tensors as flat arrays whose elements correspond.

    Args:
        param: A CPU parameter of a dtype the kernel supports.
        grad: Its gradient.
        states: Its state tensors.

    Returns:
        True when all are CPU tensors of the parameter's dtype and shape, and all are contiguous
        or all are channels-last contiguous. Anything else (a state dict loaded for another
        model, a strided view) must go another way: the kernel would read the wrong memory.
    """
    dtype, shape = param.dtype, param.shape
    if param.is_contiguous():
        # The common case, checked without a memory_format argument (faster).
        for t in (grad, *states):
            if not (t.is_cpu and t.dtype == dtype and t.shape == shape and t.is_contiguous()):
                return False
        return True
    layout = _CHANNELS_LAST.get(param.dim())
    if layout is None or not param.is_contiguous(memory_format=layout):
        return False
    return all(
        t.is_cpu and t.dtype == dtype and t.shape == shape and t.is_contiguous(memory_format=layout)
        for t in (grad, *states)
    )
