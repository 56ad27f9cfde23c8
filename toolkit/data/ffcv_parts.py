"""The parts of FFCV the toolkit uses, imported after numba is told to keep what FFCV's import compiles.

Importing FFCV builds a numba typed dict (`ffcv.fields.rgb_image.IMAGE_MODES`), which compiles numba's
typed-dict functions from scratch: seconds in every process that reads or writes a .beton (every
training process, every test that launches one), because numba keeps compiled code on disk only for
functions that ask for it. Asking for it first makes the compilation a one-off: later processes load it
from numba's cache (keyed by the source and the CPU, so another CPU kind compiles its own). Where no
cache folder is writable, numba compiles as before.

Every FFCV loader also compiles its own copy of the same small function that reads a sample's bytes from
the page cache (0.11-0.17 s for each loader after a process's first, on 2 AMD EPYC cores; a classifier run
makes four loaders): the first copy now serves them all.

FFCV's compiler also sets PyTorch's threads to its own decoding threads: to 1 when FFCV is imported, to a
loader's workers whenever a loader is made or iterated. Any process that imported FFCV then ran its PyTorch work
on one core (`toolkit evaluate --held_out` scored at about half speed on 2 cores), and a run given fewer
--num_workers than cores trained on as few. Here FFCV sets numba's threads only; PyTorch's threads are PyTorch's
own default, or what the training run sets (toolkit.run.start_run).
"""

from __future__ import annotations

import contextlib
import os

import numba
import numba.typed.typeddict
from numba.core.dispatcher import Dispatcher


def leave_pytorch_threads_alone() -> None:
    """Import FFCV's compiler with PyTorch's thread count kept, and make its set_num_threads set numba's only."""
    import torch

    threads = torch.get_num_threads()
    from ffcv.pipeline.compiler import Compiler  # its import sets PyTorch's threads to 1

    torch.set_num_threads(threads)
    if getattr(Compiler.set_num_threads, "leaves_pytorch_alone", False):
        return

    def set_num_threads(cls, count: int) -> None:
        count = count if count >= 1 else (os.cpu_count() or 1)  # FFCV's own rule: 0 means every core
        cls.num_threads = count
        numba.set_num_threads(count)

    set_num_threads.leaves_pytorch_alone = True
    Compiler.set_num_threads = classmethod(set_num_threads)


def keep_numba_typed_dict_compilations() -> None:
    """Turn on numba's on-disk cache for its typed-dict functions."""
    for function in vars(numba.typed.typeddict).values():
        if isinstance(function, Dispatcher):
            # RuntimeError: numba found no writable cache folder; this process compiles, as it would anyway
            with contextlib.suppress(RuntimeError):
                function.enable_caching()


def share_the_page_cache_reader() -> None:
    """Compile FFCV's page-cache sample reader once per process instead of once per loader.

    The reader, read(address, mem_state), depends on its arguments only; one that captured anything of its
    loader (a later FFCV's) is compiled per loader, as before.
    """
    from ffcv.memory_managers.os_cache import OSCacheManager

    compile_for_each_loader = getattr(OSCacheManager.compile_reader, "compiles_for_each_loader", None)
    if compile_for_each_loader is not None:  # already shared (this module imported under two names)
        return
    compile_for_each_loader = OSCacheManager.compile_reader
    shared = []

    def compile_reader(manager):
        if shared:
            return shared[0]
        reader = compile_for_each_loader(manager)
        if getattr(reader, "py_func", None) is not None and reader.py_func.__closure__ is None:
            shared.append(reader)
        return reader

    compile_reader.compiles_for_each_loader = compile_for_each_loader
    OSCacheManager.compile_reader = compile_reader


keep_numba_typed_dict_compilations()
leave_pytorch_threads_alone()

from ffcv.fields import IntField, RGBImageField  # noqa: E402  (after the cache is on: this import compiles)
from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, SimpleRGBImageDecoder  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.memory_allocator import MemoryAllocator  # noqa: E402
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402

share_the_page_cache_reader()

__all__ = ["CenterCropRGBImageDecoder", "DatasetWriter", "IntDecoder", "IntField", "Loader", "MemoryAllocator",
           "OrderOption", "RGBImageField", "SimpleRGBImageDecoder", "Squeeze", "ToDevice", "ToTensor",
           "ToTorchImage", "keep_numba_typed_dict_compilations", "leave_pytorch_threads_alone",
           "share_the_page_cache_reader"]
