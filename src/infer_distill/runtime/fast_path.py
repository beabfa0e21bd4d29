"""How the stages compute on their device: precision, memory format, cuDNN autotuning, torch.compile.

On CUDA the fast path is on by default (`precision: auto`, `channels_last: auto`,
`cudnn_benchmark: true`): teacher and student training run their forward passes under bf16
autocast (the student's, and with dynamic labels the labelling teachers' too) while weights,
optimiser state, gradients and losses stay fp32 (bf16 has fp32's range: no loss scaling); the
models being trained are channels_last, the layout bf16 tensor-core convolutions want; cuDNN
times its convolution algorithms once per shape and keeps the fastest. `compile: true` adds
torch.compile for training.

Everything else is IEEE fp32 on every device: UFC synthesis, static soft labels and test
accuracy. TF32 is off, convolutions included (PyTorch lets cuDNN use it by default): the UFC
optimisation amplifies rounding, and bf16 or TF32 moved the UFCs about four times as far from
fp32 synthesis as a mere change of fp32 rounding order does (measured: README, GPU). Labels and
accuracy are one forward pass each, too little of the work to be worth a second tolerance.

On the CPU none of the fast path is on unless asked for: the CPU path is plain fp32, NCHW and
eager, and the same config and seed give byte-identical artifacts.

Like `device`, these settings decide how a result is computed, not what is computed, so they are
part of no artifact's settings (dag.artifact_settings). The fast path is held to the plain path
within tolerances measured on a tiny case (tests/test_fast_path.py), and every stage that runs a
model records in its manifest metrics how it ran (`compute`, see `FastPath.describe`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from infer_distill.errors import ConfigError


class FastPathKeys(Protocol):
    """The config's top-level fast-path keys (infer_distill.config.schema.Config has them): what this layer reads."""

    precision: str              # auto, fp32 or bf16
    channels_last: str | bool   # auto, true or false
    cudnn_benchmark: bool
    compile: bool


@dataclass(frozen=True)
class FastPath:
    """The resolved fast-path settings of one stage; the defaults are the plain fp32 path."""

    autocast: torch.dtype | None = None  # dtype of the training forward passes; None: fp32, no autocast at all
    channels_last: bool = False          # the models that train under autocast in channels_last memory format
    cudnn_benchmark: bool = False        # CUDA: cuDNN picks each convolution's algorithm by timing it
    compile: bool = False                # torch.compile the model being trained

    def training_autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """The context of a training forward pass; the plain path enters no autocast context at all."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast)

    def place(self, model: nn.Module, device: str | torch.device) -> nn.Module:
        """Move `model` to `device` in place (channels_last when on); returns `model`."""
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def for_training(self, model: nn.Module, device: str | torch.device) -> nn.Module:
        """Place `model`; return what the training steps call: `model`, or its torch.compile wrapper.

        The wrapper shares `model`'s parameters and buffers, so the optimiser, evaluation and the
        saved weights keep using `model` itself (its state_dict keys stay unprefixed).
        """
        self.place(model, device)
        return torch.compile(model) if self.compile else model

    def without_training(self) -> FastPath:
        """What applies to a stage that trains nothing (synthesis, static labels): cuDNN autotuning alone."""
        return FastPath(cudnn_benchmark=self.cudnn_benchmark)

    def set_cuda_backends(self) -> None:
        """Set this process's cuDNN switches for the fast path: autotuning as asked, and fp32 as IEEE fp32 (no TF32)."""
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if hasattr(torch.backends.cudnn, "conv"):  # newer torch: per-backend fp32_precision (mixing it with the
            torch.backends.cudnn.conv.fp32_precision = "ieee"  # allow_tf32 flags is an error there)
            torch.backends.cuda.matmul.fp32_precision = "ieee"
        else:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    @property
    def training_precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16"}[self.autocast]

    def describe(self, device: str, compile_s: float | None = None, **precision: str) -> dict[str, Any]:
        """The `compute` entry of a stage's manifest metrics: where it ran, and in which precision each part of it."""
        return {"device": device, "precision": precision, "channels_last": self.channels_last,
                "cudnn_benchmark": self.cudnn_benchmark, "compile": self.compile,
                "compile_s": None if compile_s is None else round(compile_s, 3)}


PLAIN = FastPath()


def resolve_fast_path(cfg: FastPathKeys, device: str) -> FastPath:
    """The fast path `cfg` asks for on `device` ('cpu' or 'cuda'); bad combinations are errors naming the key.

    precision auto: bf16 autocast for training on a CUDA device with native bf16, fp32 otherwise;
    bf16: bf16 autocast on any device (on the CPU, as a check of the fast path: slow without
    native bf16 instructions); fp32: no autocast. Whatever is not under autocast is IEEE fp32.
    """
    cuda = device == "cuda"
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if cfg.precision == "bf16" and cuda and not native_bf16:
        name = torch.cuda.get_device_name()
        raise ConfigError(f"precision: 'bf16' was asked for, but {name} has no native bf16 (it needs compute capability 8.0 or "
                          "newer); use precision=auto (bf16 where the GPU has it, fp32 otherwise) or precision=fp32")
    if cfg.compile:
        check_compile(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16)
    return FastPath(
        autocast=torch.bfloat16 if bf16 else None,
        channels_last=cuda if cfg.channels_last == "auto" else cfg.channels_last,
        cudnn_benchmark=cuda and cfg.cudnn_benchmark,
        compile=cfg.compile,
    )


def check_compile(device: str) -> None:
    """Raise ConfigError (naming `compile`) when torch.compile cannot work here, before any model is built."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"compile: true, but torch {torch.__version__} cannot compile on Python "
                          f"{sys.version_info.major}.{sys.version_info.minor}; set compile=false or use a Python it supports")
    if device == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("compile: true on CUDA needs Triton, which is not installed (it comes with the CUDA torch wheels "
                              "from PyPI: pip install triton); or set compile=false")
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - inductor's own error says which compilers it tried
        raise ConfigError(f"compile: true on the CPU needs a C++ compiler ({e}); install g++ (or set CXX), "
                          "or set compile=false") from None


class CompileTime:
    """`with CompileTime(enabled) as t: ...`, then `t.seconds`: the time torch.compile spent compiling in the block.

    Every graph counts, recompilations and backward graphs compiled when first needed included
    (torch calls back at the start and end of each). `seconds` is None when not enabled.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seconds: float | None = 0.0 if enabled else None
        self._started = 0.0

    def _start(self, *_: object) -> None:
        self._started = time.perf_counter()

    def _end(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> CompileTime:
        if self.enabled:
            from torch._dynamo.callback import callback_handler

            callback_handler.register_start_callback(self._start)
            callback_handler.register_end_callback(self._end)
        return self

    def __exit__(self, *_: object) -> None:
        if self.enabled:
            from torch._dynamo.callback import callback_handler

            callback_handler.remove_start_callback(self._start)
            callback_handler.remove_end_callback(self._end)
