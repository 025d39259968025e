"""A stand-in for `tensorrt` + `tensorrt.plugin`, for registering the Python plugins without TensorRT.

It enforces what TensorRT's documentation of `tensorrt.plugin` states for the decorated functions
(register: every parameter annotated, TensorDescs before attributes (builtins or
`numpy.typing.NDArray[dtype]`), return TensorDesc or a
Tuple of them; autotune: (inputs, attrs, outputs); impl: (inputs, attrs, outputs, stream);
aot_impl: (inputs, attrs, outputs, tactic) returning (str|bytes, str|bytes, KernelLaunchParams,
SymExprs), which TensorRT checks through the return annotation), and its shape expressions have
the operators TensorRT's have: `expr op int` and `expr op expr`, no reflected ones (`int * expr`).

Written from the documentation; the signatures are also checked against the vendor's own
validation code at v10.9.0, v10.15 and v11.1 in test_trt_python_plugins_vendor.py.
"""

from __future__ import annotations

import inspect
import types
import typing

import numpy as np


class DataType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


trt = types.SimpleNamespace(float32=DataType("FLOAT"), float16=DataType("HALF"), int32=DataType("INT32"))


class Expr:
    """A symbolic integer: remembers how it was built; no __rmul__/__radd__ (as TensorRT's)."""

    def __init__(self, text: str):
        self.text = text

    def _op(self, sym: str, other) -> "Expr":
        if not isinstance(other, (int, Expr)):
            return NotImplemented
        return Expr(f"({self.text} {sym} {other.text if isinstance(other, Expr) else other})")

    def __add__(self, other):
        return self._op("+", other)

    def __sub__(self, other):
        return self._op("-", other)

    def __mul__(self, other):
        return self._op("*", other)

    def __floordiv__(self, other):
        return self._op("//", other)


class TensorDesc:
    def __init__(self, dtype: DataType, shape: tuple):
        self.dtype = dtype
        self.shape_expr = tuple(Expr(d) if isinstance(d, str) else d for d in shape)


class SymExprs(list):
    @classmethod
    def from_tuple(cls, values):
        return cls(values)


class SymIntExprs(SymExprs):
    pass


class SymInt32:
    def __init__(self, value):
        if not isinstance(value, (int, Expr)):
            raise TypeError(f"SymInt32 of {type(value).__name__}")
        self.value = value


class KernelLaunchParams:
    FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

    def __setattr__(self, name, value):
        if name not in self.FIELDS:
            raise AttributeError(name)
        object.__setattr__(self, name, SymInt32(value))


class AutoTuneCombination:
    def __init__(self, io_types: str, layouts: str = "LINEAR"):
        self.io_types = io_types


def cdiv(a, b):
    return (a + (b - 1)) // b


def from_shape_expr(shape, dtype):
    return TensorDesc(dtype, shape)


registry: dict[str, dict] = {}


def _params(fn) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())


def register(plugin_id: str):
    def deco(fn):
        ns, _, name = plugin_id.partition("::")
        assert ns and name and "." not in ns, plugin_id
        inputs, attrs, seen_attr = [], {}, False
        for p in _params(fn):
            assert p.annotation is not inspect.Parameter.empty, f"{plugin_id}: {p.name} has no annotation"
            if inspect.isclass(p.annotation) and issubclass(p.annotation, TensorDesc):
                assert not seen_attr, f"{plugin_id}: tensor {p.name} after an attribute"
                inputs.append(p.name)
            else:
                assert inputs, f"{plugin_id}: attributes must follow the tensors"
                assert p.name not in ("outputs", "stream", "tactic"), p.name
                assert p.annotation in (int, float, str, bytes, bool) or typing.get_origin(p.annotation) is np.ndarray, p
                attrs[p.name] = p.annotation
                seen_attr = True
        ret = inspect.signature(fn).return_annotation
        outs = typing.get_args(ret) if typing.get_origin(ret) is tuple else (ret,)
        assert all(inspect.isclass(o) and issubclass(o, TensorDesc) for o in outs), ret
        registry[plugin_id] = {"desc": fn, "inputs": inputs, "attrs": attrs, "num_outputs": len(outs)}
        return fn

    return deco


def _check_order(plugin_id: str, fn, tail: list[str]) -> None:
    entry = registry[plugin_id]
    names = [p.name for p in _params(fn)]
    attrs = [n for n in names if n in entry["attrs"]]
    assert attrs == [a for a in entry["attrs"] if a in attrs], f"{plugin_id}: attributes out of order"
    assert names == entry["inputs"] + attrs + tail, f"{plugin_id}: {names}"


def autotune(plugin_id: str):
    def deco(fn):
        _check_order(plugin_id, fn, ["outputs"])
        registry[plugin_id]["autotune"] = fn
        return fn

    return deco


def impl(plugin_id: str):
    def deco(fn):
        names = [p.name for p in _params(fn)]
        _check_order(plugin_id, fn, ["outputs", "stream", "tactic"] if "tactic" in names else ["outputs", "stream"])
        registry[plugin_id]["impl"] = fn
        return fn

    return deco


def aot_impl(plugin_id: str):
    def deco(fn):
        _check_order(plugin_id, fn, ["outputs", "tactic"])
        ret = inspect.signature(fn).return_annotation
        assert typing.get_origin(ret) is tuple, f"{plugin_id}: aot_impl needs a Tuple return annotation"
        name_t, code_t, launch_t, extra_t = typing.get_args(ret)
        for t in (name_t, code_t):
            assert set(typing.get_args(t) or (t,)) <= {str, bytes}, t
        assert issubclass(launch_t, KernelLaunchParams) and issubclass(extra_t, SymExprs), ret
        registry[plugin_id]["aot_impl"] = fn
        return fn

    return deco


trtp = types.SimpleNamespace(**{k: v for k, v in globals().items() if k in (
    "TensorDesc", "SymExprs", "SymIntExprs", "SymInt32", "KernelLaunchParams", "AutoTuneCombination", "cdiv",
    "from_shape_expr", "register", "autotune", "impl", "aot_impl")})
