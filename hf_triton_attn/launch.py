"""Kernel launches that skip Triton's per-call Python work once a specialization has been launched.

Why: ``kernel[grid](*args, **kwargs)`` runs ``JITFunction.run`` on every call. It binds the arguments,
specializes each one (``native_specialize_impl``), turns the specialization and the compile options into a string
cache key, looks the compiled kernel up, checks the kernel's global variables, builds launch metadata for the launch
hooks, and only then calls the compiled kernel's launcher. On an H100 host that costs 26-39 µs for our ~40-argument
kernels, against ~11 µs of GPU work for a whole decoding call, so short calls are host-bound.

What :class:`KernelLauncher` does instead: each call computes a cheap key that determines Triton's specialization
exactly (:func:`cache_key`). The first call with a key goes through ``jit_fn[grid](...)``, which compiles if needed
and returns the ``CompiledKernel``; that kernel is kept under the key. Later calls with the key call the kernel's
launcher directly, with the arguments ``JITFunction.run`` passes at its end: the grid, the current stream of the
current device, the kernel's function handle and packed metadata, then every argument in signature order (constexpr
values included; the launcher skips them). What is skipped: binding, specialization, the string key, the launch
metadata and the calls into the (empty) launch hooks, and the check that the kernel's global variables still have
the values they were compiled with (ours are module constants that never change).

When every call takes the normal path:

* the Triton interpreter (``TRITON_INTERPRET=1``): the JIT function is an ``InterpretedFunction``;
* a Triton this was not checked against: only 3.6 to 3.9 (3.6, 3.8 and 3.9 were read; they agree on the launcher's
  arguments, the launch hooks as ``HookChain`` objects and the native specialization rules), and only when the
  attributes used here exist (checked once, at import);
* a non-CUDA backend (AMD's tensor specialization looks at more than the pointer's alignment);
* launch hooks are set (``knobs.runtime.launch_enter_hook`` / ``launch_exit_hook``, as profilers such as proton do, so
  they see every launch), ``knobs.runtime.debug``, an instrumentation mode, a stages-inspection hook, or pre-run hooks
  on the function: all of them change what ``JITFunction.run`` does or compiles;
* a call whose positional arguments are not exactly the kernel's leading runtime parameters (constexprs go by
  keyword), a grid that is not a tuple, an argument of a type other than tensor, host tensor descriptor
  (``triton.tools.tensor_descriptor.TensorDescriptor``), int, float, bool and None, or an unhashable keyword value;
  kernels whose runtime and constexpr parameters interleave.

Tensor descriptors: the compiled kernel's launcher turns each ``TensorDescriptor`` argument into the TMA descriptor
itself, on every launch (the NVIDIA driver's ``make_tensordesc_arg``, from the descriptor's base, shape, strides and
padding), so a cached launch passes them as they are. Only their specialization needs a key (see
:func:`specialization_key`). The same holds for Gluon kernels (``gluon.jit`` gives a ``JITFunction`` subclass whose
kernels compile and launch alike) and their descriptors (``triton.experimental.gluon.nvidia.hopper
.TensorDescriptor``, which also carries its shared-memory layout).
"""
import torch
import triton

try:
    from triton import knobs
    from triton.compiler import CompiledKernel
    from triton.knobs import HookChain
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction, KernelParam
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton laid out unlike the versions this mirrors: FAST_PATH_AVAILABLE below is False
    knobs = TensorDescriptor = None
try:
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor
except ImportError:  # no Gluon: no Gluon kernel to launch either
    GluonTensorDescriptor = None

_CHECKED_TRITON_VERSIONS = ((3, 6), (3, 9))  # first and last minor version whose launch path this mirrors


def _minor_version(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


FAST_PATH_AVAILABLE = (
    knobs is not None
    and _CHECKED_TRITON_VERSIONS[0] <= _minor_version(triton.__version__) <= _CHECKED_TRITON_VERSIONS[1]
    and isinstance(getattr(CompiledKernel, "run", None), property)
    and hasattr(KernelParam, "is_constexpr")
    and all(hasattr(knobs.runtime, name)
            for name in ("launch_enter_hook", "launch_exit_hook", "debug", "add_stages_inspection_hook"))
    and hasattr(knobs.compilation, "instrumentation_mode")
)

_DESCRIPTOR_TYPES = (TensorDescriptor,) + ((GluonTensorDescriptor,) if GluonTensorDescriptor is not None else ())
_CACHED_TYPES = (int, float, bool, type(None), *_DESCRIPTOR_TYPES)  # besides tensors


def specialization_key(args: tuple) -> tuple:
    """A hashable summary of positional kernel arguments that determines how Triton specializes them.

    It follows ``native_specialize_impl`` (triton's python/src/specialize.cc): a tensor specializes on its dtype and
    on whether ``data_ptr()`` is a multiple of 16; an int on being 1 (compiled in as a constant), on being a multiple
    of 16, and on its range (i32, i64 or u64); a float is fp32 and a bool u1 whatever their values; None is a
    constant; a host tensor descriptor on its base's dtype and its block shape (not on the base's alignment, its
    shape, strides or padding, which reach the kernel at launch), a Gluon one on these and its layout. Parameters
    marked ``do_not_specialize`` have fewer variants in Triton, never more, so there this key is at worst finer
    than Triton's: one more cache entry, never the wrong kernel. Other argument types yield their type only;
    :meth:`KernelLauncher.__call__` never caches a launch that had one.

    One comprehension without per-argument function calls: this runs on every launch.
    """
    return tuple([
        # int32-range int (most arguments): 1 (None here), else a multiple of 16 (True) or not (False)
        (None if a == 1 else not a & 15) if type(a) is int and -0x8000_0000 <= a <= 0x7FFF_FFFF
        else type(a) if a is None or type(a) is float
        else (a.dtype, not a.data_ptr() & 15) if isinstance(a, torch.Tensor)
        else ("i64" if a <= 0x7FFF_FFFF_FFFF_FFFF else "u64", not a & 15) if type(a) is int
        else (TensorDescriptor, a.base.dtype, *a.block_shape) if type(a) is TensorDescriptor
        else (GluonTensorDescriptor, a.base.dtype, *a.block_shape, a.layout) if type(a) is GluonTensorDescriptor
        else type(a)  # a bool (u1 whatever its value), or a type never cached
        for a in args])


def cache_key(device: int, args: tuple, kwargs: dict) -> tuple:
    """The launch cache's key: the device, :func:`specialization_key` of the positional arguments, and the keyword
    arguments (constexprs and options such as num_warps) by value, in call order (a call site keeps its order).

    The keywords' names, then their values, flat: the key's length fixes how many there are, and one flat tuple
    is cheaper to build and hash than a tuple of (name, value) pairs."""
    return (device, specialization_key(args), *kwargs, *kwargs.values())


def _no_hook(hook) -> bool:
    # Triton 3.6+ holds launch hooks in a HookChain (empty: no hook); a hook assigned directly replaces the chain.
    return hook is None or (type(hook) is HookChain and not hook.calls)


def _run_adds_nothing_but_the_launch() -> bool:
    """True when no global setting makes ``JITFunction.run`` call hooks or compile differently."""
    runtime = knobs.runtime
    return (_no_hook(runtime.launch_enter_hook) and _no_hook(runtime.launch_exit_hook) and not runtime.debug
            and runtime.add_stages_inspection_hook is None and not knobs.compilation.instrumentation_mode)


def _runtime_parameter_count(jit_fn) -> int:
    """How many parameters precede the constexpr ones, or -1 when runtime and constexpr parameters interleave."""
    constexpr = [param.is_constexpr for param in jit_fn.params]
    count = constexpr.index(True) if True in constexpr else len(constexpr)
    return count if all(constexpr[count:]) else -1


class KernelLauncher:
    """``launcher(grid, *args, **kwargs)`` launches ``jit_fn`` like ``jit_fn[grid](*args, **kwargs)``, straight
    through the compiled kernel's launcher once that specialization has been launched (see the module docstring).

    Positional arguments are the kernel's runtime parameters, in order; constexprs and launch options (num_warps,
    num_stages) go by keyword. Returns None (``jit_fn[grid]`` returns the compiled kernel).
    """

    def __init__(self, jit_fn):
        self.jit_fn = jit_fn
        # The fast path needs a compiled JIT function whose constexpr parameters all come last (-1: never).
        self._runtime_params = (_runtime_parameter_count(jit_fn)
                                if FAST_PATH_AVAILABLE and isinstance(jit_fn, JITFunction) else -1)
        self._on_cuda = None  # whether the active Triton target is CUDA: known at the first launch
        # cache_key(...) -> (launcher, function handle, packed metadata, constexpr values, the CompiledKernel,
        # kept so that its module stays loaded).
        self._kernels = {}

    def __call__(self, grid, *args, **kwargs) -> None:
        key = self._key(grid, args, kwargs)
        try:
            cached = self._kernels.get(key) if key is not None else None
        except TypeError:  # an unhashable keyword value: no caching
            key = cached = None
        if cached is None:
            kernel = self.jit_fn[grid](*args, **kwargs)
            if key is not None and isinstance(kernel, CompiledKernel) and all(
                    isinstance(a, torch.Tensor) or type(a) in _CACHED_TYPES for a in args):
                self._kernels[key] = self._entry(kernel, kwargs)
            return
        launcher, function, packed_metadata, constexpr_values, _ = cached
        size = len(grid)
        launcher(grid[0], grid[1] if size > 1 else 1, grid[2] if size > 2 else 1,
                 driver.active.get_current_stream(key[0]), function, packed_metadata,
                 None, None, None,  # launch metadata and hooks: _key saw no hooks set
                 *args, *constexpr_values)

    def _key(self, grid, args: tuple, kwargs: dict):
        """The cache key, or None where this launch must take the normal path."""
        if (len(args) != self._runtime_params or type(grid) is not tuple or self.jit_fn.pre_run_hooks
                or not _run_adds_nothing_but_the_launch()):
            return None
        if self._on_cuda is None:
            self._on_cuda = driver.active.get_current_target().backend == "cuda"
        if not self._on_cuda:
            return None
        return cache_key(driver.active.get_current_device(), args, kwargs)

    def _entry(self, kernel, kwargs: dict) -> tuple:
        # The constexpr parameters' values are part of the key (keywords) or fixed (defaults), so one tuple serves
        # every launch under the key.
        constexpr_values = tuple(kwargs[param.name] if param.name in kwargs else param.default
                                 for param in self.jit_fn.params[self._runtime_params:])
        return kernel.run, kernel.function, kernel.packed_metadata, constexpr_values, kernel
