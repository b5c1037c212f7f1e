"""Deterministic fingerprints of what a model's forward pass uses, for the tune cache.

A ModelPatcher carries everything ComfyUI applies in a forward pass: weight patches, object patches
(model_sampling, ...), model options (transformer patches, replace patches, cfg functions),
wrappers, callbacks, injections, weight wrappers, hooks and additional models. Instead of a list of
fields that would drift as ComfyUI adds new ones, every attribute of the patcher is fingerprinted
except a short list of bookkeeping fields that never change a result. Any other value is walked
generically: tensors by their bytes, functions by their code, closure and defaults, modules by
their class and state dict, other objects by their class and attributes. Anything that cannot be
described deterministically (a memory address) only costs a cache miss, never a wrong hit.
"""
from __future__ import annotations

import enum
import functools
import types

import torch

# ModelPatcher fields that are bookkeeping: loading state, backups, identity, the shared module
# itself (its weights are fingerprinted separately, with their patches).
PATCHER_BOOKKEEPING = frozenset({
    "model", "patches", "backup", "object_patches_backup", "patches_uuid", "clone_base_uuid", "parent", "pinned",
    "size",
    "is_injected", "skip_injection", "hook_patches_backup", "hook_backup", "cached_hook_patches",
    "current_hooks", "load_device", "offload_device", "weight_inplace_update", "is_clip", "additional_models",
})
_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules", "training", "_non_persistent_buffers_set"})
MAX_DEPTH = 24


def _type_name(value) -> str:
    # The whole MRO: ComfyUI's ModelSamplingDiscrete node builds classes of one name for eps and v.
    return "/".join(f"{t.__module__}.{t.__qualname__}" for t in type(value).__mro__)


class Describer:
    """Feeds a canonical description of values into a hashlib digest."""

    def __init__(self, digest):
        self.digest = digest
        self._path: set[int] = set()  # ids on the current walk: cycles are described, not followed

    def put(self, text: str) -> None:
        self.digest.update(text.encode())
        self.digest.update(b"\0")

    def tensor(self, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().cpu().contiguous()
        self.put(f"tensor {tensor.dtype} {tuple(tensor.shape)}")
        self.digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())

    def value(self, value, depth: int = 0) -> None:
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.dtype,
                                               torch.device, enum.Enum)):
            self.put(f"{type(value).__name__} {value!r}")
            return
        if torch.is_tensor(value):
            self.tensor(value)
            return
        if depth > MAX_DEPTH or id(value) in self._path:
            self.put(f"<{'deep' if depth > MAX_DEPTH else 'cycle'} {_type_name(value)}>")
            return
        self._path.add(id(value))
        try:
            self._compound(value, depth + 1)
        finally:
            self._path.discard(id(value))

    def _compound(self, value, depth: int) -> None:
        describe = getattr(type(value), "fingerprint_state", None)
        if describe is not None:  # the pack's own objects say what of them matters
            self.put(_type_name(value))
            self.value(describe(value), depth)
        elif isinstance(value, dict):
            self.put(f"dict {len(value)}")
            for key in sorted(value, key=repr):
                self.value(key, depth)
                self.value(value[key], depth)
        elif isinstance(value, (list, tuple)):
            self.put(f"{type(value).__name__} {len(value)}")
            for item in value:
                self.value(item, depth)
        elif isinstance(value, (set, frozenset)):
            self.put(f"set {len(value)}")
            for item in sorted(value, key=repr):
                self.value(item, depth)
        elif isinstance(value, types.MethodType):
            self.put("method")
            self.value(value.__func__, depth)
            self.value(value.__self__, depth)
        elif isinstance(value, types.FunctionType):
            self.function(value, depth)
        elif isinstance(value, functools.partial):
            self.put("partial")
            self.value((value.func, value.args, value.keywords), depth)
        elif isinstance(value, type):
            self.put(f"class {value.__module__}.{value.__qualname__}")
        elif isinstance(value, torch.nn.Module):
            self.put(_type_name(value))
            for name, tensor in value.state_dict().items():
                self.put(name)
                self.tensor(tensor)
            self.value({k: v for k, v in vars(value).items() if k not in _MODULE_INTERNALS
                        and not k.startswith("_")}, depth)
        elif hasattr(value, "__dict__") or hasattr(type(value), "__slots__"):
            self.put(_type_name(value))
            state = dict(getattr(value, "__dict__", {}))
            for slot in getattr(type(value), "__slots__", ()):
                if hasattr(value, slot):
                    state[slot] = getattr(value, slot)
            self.value(state, depth)
        else:  # builtins without state we can read: their type, and their repr if it has no address
            text = repr(value)
            self.put(_type_name(value) + ("" if " at 0x" in text else " " + text))

    def function(self, fn: types.FunctionType, depth: int) -> None:
        self.put(f"function {fn.__module__}.{fn.__qualname__}")
        self.code(fn.__code__)
        self.value(fn.__defaults__, depth)
        self.value(fn.__kwdefaults__, depth)
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell
                cells.append("<empty cell>")
        self.value(cells, depth)

    def code(self, code: types.CodeType) -> None:
        self.digest.update(code.co_code)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.code(const)
            else:
                self.put(repr(const))
        self.put(repr(code.co_names))

    def patcher_config(self, patcher, depth: int = 0) -> None:
        """Everything of a ModelPatcher that is not bookkeeping (its weight patches are hashed apart)."""
        state = {k: v for k, v in vars(patcher).items() if k not in PATCHER_BOOKKEEPING}
        self.put(_type_name(patcher))
        self.value(state, depth)
