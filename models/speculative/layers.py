"""Intermediate layer outputs of a llama.cpp model, read through its eval callback.

llama.cpp returns only the final hidden state; a drafter that also fuses earlier layers (as
DeepSpec does) needs the residual stream after those layers, the graph tensors named
`l_out-N`. The scheduler's eval callback is asked about every graph node before it runs
(`ask`), and a node we claim is handed over once computed, so it can be copied out. The
callback runs for every node of every decode, about 470 per decode for the 30-layer SmolLM2:
measured on the 2-core VM, decodes of 1 and 6 tokens took 7% and 5% longer with three layers
captured, and 0.4% and 2% longer for Qwen2.5-Coder 1.5B. The callback is set when a context
is created, so a context that captures is made for it (`install`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from pathlib import Path
from typing import Sequence

import llama_cpp
import numpy as np
from llama_cpp import Llama, _internals


@functools.cache
def _ggml() -> ctypes.CDLL:
    """ggml's own library, shipped beside llama.cpp's in the llama_cpp package."""
    found = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*ggml-base.*"))
    if not found:
        raise RuntimeError("cannot capture target layers: no ggml-base library in the llama_cpp package")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


class LayerCapture:
    """Copies `l_out-N` for the chosen layers out of every decode while `active`."""

    def __init__(self, layers: Sequence[int], n_embd: int, n_layer: int) -> None:
        bad = [i for i in layers if not 0 <= i < n_layer - 1]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has {n_layer} layers, and the last one's output is the final hidden state")
        self.layers = list(layers)
        self.n_embd = n_embd
        self.active = False
        self._names = {f"l_out-{i}".encode(): j for j, i in enumerate(self.layers)}
        self._parts: list[list[np.ndarray]] = [[] for _ in self.layers]
        self._lib = _ggml()
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def _on_node(self, tensor: int, ask: bool, _user_data: int) -> bool:
        j = self._names.get(self._lib.ggml_get_name(tensor)) if self.active else None
        if ask:
            return j is not None
        if j is not None:
            n = self._lib.ggml_nbytes(tensor)
            rows = np.empty(n // 4, dtype=np.float32)  # l_out is f32: (n_embd, n_tokens), row-major per token
            self._lib.ggml_backend_tensor_get(tensor, rows.ctypes.data, 0, n)
            self._parts[j].append(rows.reshape(-1, self.n_embd))
        return True

    def take(self) -> list[np.ndarray]:
        """Per layer, the rows of every token decoded since the last call, in order."""
        out = [np.concatenate(p) if len(p) > 1 else p[0] for p in self._parts]
        self._parts = [[] for _ in self.layers]
        return out


def install(llm: Llama, layers: Sequence[int]) -> LayerCapture:
    """Gives `llm` a fresh context whose eval callback captures `layers` (its KV cache starts
    empty), and returns the capture. The callback lives as long as the model object."""
    n_layer = llama_cpp.llama_model_n_layer(llm._model.model)
    capture = LayerCapture(layers, llm.n_embd(), n_layer)
    params = llm.context_params
    params.cb_eval = capture.callback
    params.cb_eval_user_data = None
    ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    llm._ctx.close()
    llm._ctx = llm._stack.enter_context(contextlib.closing(ctx))
    llm.n_tokens = 0
    llm._aibox_capture = capture  # keeps the C callback alive with the context
    return capture
