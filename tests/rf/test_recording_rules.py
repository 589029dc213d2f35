"""The recorder's shortcuts around meta kernels (meta_shape_rules.py, graph.py): outputs made by rule must be the
kernel's, exactly.

Elementwise ops (``LearnedRules.pointwise``) and the ops of ``SHAPE_RULES`` get their outputs from a rule once the
first call of a key agreed with the kernel; the rule must give the same shape, strides, dtype and storage as the
kernel on every later shape, refuse where the kernel would refuse, and never answer for aliasing or overlapping
arguments. The other shortcuts (process-wide module hooks, recording without the function-level mode) must
leave the graph, the module names and the model's modes as they were.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from atrous.errors import InputShapeError
from atrous.rf import graph as G
from atrous.rf import meta_shape_rules as R

A = torch.ops.aten


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (tuple(a.shape), a.stride(), a.dtype, a.storage_offset()) == (
        tuple(b.shape),
        b.stride(),
        b.dtype,
        b.storage_offset(),
    )
    assert a.untyped_storage().nbytes() == b.untyped_storage().nbytes()


def same_out(a, b) -> None:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        same_tensor(x, y)


# (op, arguments for a shape): each is called on every shape of SHAPES, the first call teaching the rule.
POINTWISE = [
    (A.gelu.default, lambda s: ((meta(*s),), {"approximate": "tanh"})),
    (A.sigmoid.default, lambda s: ((meta(*s),), {})),
    (A.add.Tensor, lambda s: ((meta(*s), meta(*s)), {})),
    (A.add.Tensor, lambda s: ((meta(*s), meta(s[-1])), {})),  # a bias broadcast over the last dim
    (A.mul.Tensor, lambda s: ((meta(*s[:-1], 1), meta(*s)), {})),  # the first operand broadcast
    (A.mul.Scalar, lambda s: ((meta(*s), 0.125), {})),
    (A.mul.Tensor, lambda s: ((meta(*s), meta()), {})),  # a 0-dim tensor promotes like a scalar
    (A.add.Tensor, lambda s: ((meta(*s, dtype=torch.int64), 1.5), {})),  # int + float -> float
    (A.div.Tensor, lambda s: ((meta(*s, dtype=torch.int64), meta(*s, dtype=torch.int64)), {})),
    (A.where.self, lambda s: ((meta(*s, dtype=torch.bool), meta(*s), meta()), {})),
    (A.clamp.default, lambda s: ((meta(*s), 0.0, 6.0), {})),
    (A.eq.Scalar, lambda s: ((meta(*s), 0.0), {})),
]
IN_PLACE = [
    (A.silu_.default, lambda s: ((meta(*s),), {})),
    (A.add_.Tensor, lambda s: ((meta(*s), meta(*s)), {})),
    (A.mul_.Tensor, lambda s: ((meta(*s), meta(s[-1])), {})),
    (A.relu_.default, lambda s: ((meta(*s),), {})),
]
SHAPES = [(2, 3, 5, 7), (1, 16, 9, 9), (1, 1, 4, 1), (4, 1), (3, 8, 1, 6)]


def recorder() -> G._Recorder:
    return G._Recorder(None)  # the module stack is only read when an op is recorded


@pytest.mark.parametrize("case", range(len(POINTWISE)))
def test_pointwise_rule_gives_the_kernels_output_on_every_shape(case: int) -> None:
    func, make = POINTWISE[case]
    rec = recorder()
    for shape in SHAPES:
        args, kwargs = make(shape)
        same_out(rec._run(func, args, kwargs, "", True), func(*args, **kwargs))  # may teach a new key
        made = rec.rules.pointwise(func, R.FRESH, args, kwargs)[2]
        assert made is not None  # now answered by the rule
        same_out(made, func(*args, **kwargs))
        same_out(rec._run(func, args, kwargs, "", True), func(*args, **kwargs))


@pytest.mark.parametrize("case", range(len(IN_PLACE)))
def test_in_place_rule_returns_the_written_tensor(case: int) -> None:
    func, make = IN_PLACE[case]
    assert G._op(func).pointwise == R.IN_PLACE
    rec = recorder()
    for shape in SHAPES:
        args, kwargs = make(shape)
        assert rec._run(func, args, kwargs, "", True) is args[0]
        assert rec.rules.pointwise(func, R.IN_PLACE, args, kwargs)[2] is args[0]
        assert rec._run(func, args, kwargs, "", True) is args[0]


def test_rules_refuse_where_the_kernel_refuses() -> None:
    rec = recorder()
    rec._run(A.add.Tensor, (meta(3, 4), meta(3, 4)), {}, "", True)  # teaches float + float
    with pytest.raises(RuntimeError):
        rec._run(A.add.Tensor, (meta(3, 4), meta(5, 4)), {}, "", True)  # shapes that do not broadcast
    with pytest.raises(RuntimeError):  # an in-place op whose result would not fit its tensor
        rec._run(A.add_.Tensor, (meta(1, 4), meta(3, 4)), {}, "", True)
    norm = A.native_layer_norm.default
    rec._run(norm, (meta(2, 5, 8), [8], meta(8), meta(8), 1e-5), {}, "", True)
    with pytest.raises(RuntimeError):
        rec._run(norm, (meta(2, 5, 6), [8], meta(8), meta(8), 1e-5), {}, "", True)
    rec._run(A.addmm.default, (meta(4), meta(3, 2), meta(2, 4)), {}, "", True)
    with pytest.raises(RuntimeError):
        rec._run(A.addmm.default, (meta(4), meta(3, 2), meta(3, 4)), {}, "", True)


def test_no_rule_for_overlapping_or_non_row_major_operands() -> None:
    rec = recorder()
    x = meta(4, 6)
    # In place with an operand on the written storage: the kernel decides.
    assert rec.rules.pointwise(A.add_.Tensor, R.IN_PLACE, (x, x[0]), {}) is None
    assert rec.rules.pointwise(A.gelu.default, R.FRESH, (x.t(),), {}) is None  # transposed
    assert rec.rules.pointwise(A.gelu.default, R.FRESH, (x[:, ::2],), {}) is None  # strided
    assert rec.rules.pointwise(A.gelu.default, R.FRESH, (meta(0, 3),), {}) is None  # empty
    odd = torch.empty_strided((1, 6), (99, 1), device="meta")  # contiguous, but not row-major strides
    assert rec.rules.pointwise(A.gelu.default, R.FRESH, (odd,), {}) is None
    assert R.layout_class(x[:, ::2]) is None and R.layout_class(meta(4, 1).expand(4, 3)) is None
    assert R.layout_class(x.t()) == ((1, 0), (False, False))


def test_a_key_the_kernel_disagreed_with_keeps_the_kernel() -> None:
    rec = recorder()
    args = (meta(2, 3),)
    key = rec.rules.pointwise(A.sigmoid.default, R.FRESH, args, {})[0]
    rec.rules.pointwise_keys[key] = None  # as if the kernel had disagreed
    assert rec.rules.pointwise(A.sigmoid.default, R.FRESH, args, {}) is None
    same_out(rec._run(A.sigmoid.default, args, {}, "", True), A.sigmoid.default(*args))
    # The check itself: an output that is an argument, or not row-major, teaches nothing.
    x = meta(2, 3)
    assert R.fresh_row_major(x, [(2, 3)], [x]) is None
    assert R.fresh_row_major(meta(3, 2).t(), [(2, 3)], [x]) is None
    assert R.fresh_row_major(meta(2, 3), [(2, 3)], [x]) == (torch.float32,)


def test_rule_kinds_only_for_ops_that_neither_alias_nor_write_elsewhere() -> None:
    kinds = {R.FRESH: 0, R.IN_PLACE: 0}
    for name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, name, None)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        for overload in packet.overloads():
            func = getattr(packet, overload)
            kind = R.pointwise_kind(func, G._cacheable(func))
            if not kind:
                continue
            kinds[kind] += 1
            schema = func._schema
            written = [a.name for a in schema.arguments if a.alias_info is not None]
            assert len(schema.returns) == 1
            if kind == R.FRESH:
                assert not schema.is_mutable and not written and schema.returns[0].alias_info is None
            else:
                assert written == ["self"] and schema.returns[0].alias_info.is_write
    assert kinds[R.FRESH] > 150 and kinds[R.IN_PLACE] > 50
    for func in R.SHAPE_RULES:
        assert G._cacheable(func) and not G._op(func).pointwise


# (op, arguments for a shape (N, C, H, W)): the shape rules, each taught on the first shape.
SHAPED = [
    (
        A.native_batch_norm.default,
        lambda n, c, h, w: ((meta(n, c, h, w), meta(c), meta(c), meta(c), meta(c), False, 0.1, 1e-5), {}),
    ),
    (
        A.native_batch_norm.default,
        lambda n, c, h, w: ((meta(n, c, h, w), None, None, meta(c), meta(c), False, 0.1, 1e-3), {}),
    ),
    (
        A.native_batch_norm.default,
        lambda n, c, h, w: ((meta(n, c, h), meta(c), meta(c), None, None, True, 0.1, 1e-5), {}),
    ),
    (A.native_layer_norm.default, lambda n, c, h, w: ((meta(n, h, w, c), [c], meta(c), meta(c), 1e-5), {})),
    (A.native_layer_norm.default, lambda n, c, h, w: ((meta(n, c, h, w), [h, w], None, None, 1e-6), {})),
    # LayerNorm2d: a channels-last view of an NCHW tensor
    (
        A.native_layer_norm.default,
        lambda n, c, h, w: ((meta(n, c, h, w).permute(0, 2, 3, 1), [c], None, None, 1e-6), {}),
    ),
    (A.addmm.default, lambda n, c, h, w: ((meta(c), meta(h * w, 2 * c), meta(c, 2 * c).t()), {})),
    (A.addmm.default, lambda n, c, h, w: ((meta(h, c), meta(h, w), meta(w, c)), {"beta": 0.5, "alpha": 2})),
    (A._safe_softmax.default, lambda n, c, h, w: ((meta(n, c, h, w), -1), {})),
    (A.mean.dim, lambda n, c, h, w: ((meta(n, c, h, w), [2, 3], True), {})),
    (A.mean.dim, lambda n, c, h, w: ((meta(n, c, h, w), [-1]), {})),
    (A.linalg_vector_norm.default, lambda n, c, h, w: ((meta(n, h * w, c), 2.0, [-1], True), {})),
    (A.roll.default, lambda n, c, h, w: ((meta(n, h, w, c), [-3, -3], [1, 2]), {})),
]
SIZES = [(1, 8, 6, 6), (2, 16, 3, 5), (1, 1, 1, 4), (1, 32, 7, 1)]


@pytest.mark.parametrize("case", range(len(SHAPED)))
def test_shape_rules_give_the_kernels_outputs(case: int) -> None:
    func, make = SHAPED[case]
    rec = recorder()
    answered = 0
    for size in SIZES:
        args, kwargs = make(*size)
        kernel = func(*args, **kwargs)
        same_out(rec._run(func, args, kwargs, "", True), kernel)  # may teach a new key
        rule = rec.rules.shaped(func, G._op(func).arguments, args, kwargs)
        if rule is None:  # refused after the kernel disagreed: only where its outputs are not fresh row-major
            shapes = [tuple(t.shape) for t in (kernel if isinstance(kernel, tuple) else (kernel,))]
            assert R.fresh_row_major(kernel, shapes, G._tensors((args, kwargs))) is None
            continue
        answered += 1
        same_out(rule[2], kernel)
    assert answered >= len(SIZES) - 1


def test_a_size_one_pattern_the_rule_gets_wrong_is_refused() -> None:
    """LayerNorm over a channels-last view with C = 1 and W = 1: the kernel's output is not row-major there, so
    that key keeps the kernel while the other sizes of the same layout are answered."""
    rec, norm = recorder(), A.native_layer_norm.default
    for n, c, h, w in [(1, 8, 6, 6), (1, 1, 1, 4), (1, 16, 3, 3), (1, 1, 1, 4)]:
        args = (meta(n, c, h, w).permute(0, 2, 3, 1), [c], None, None, 1e-6)
        same_out(rec._run(norm, args, {}, "", True), norm(*args))
    assert (
        rec.rules.shaped(
            norm, G._op(norm).arguments, (meta(1, 1, 1, 4).permute(0, 2, 3, 1), [1], None, None, 1e-6), {}
        )
        is None
    )
    assert rec.rules.shaped(
        norm, G._op(norm).arguments, (meta(1, 4, 5, 5).permute(0, 2, 3, 1), [4], None, None, 1e-6), {}
    )[2]


class Blocks(nn.Module):
    """The ops the rules answer, in the arrangements models use (stem, SE, MLP, attention, shifted windows)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU(inplace=True))
        self.se = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 16, 1), nn.Sigmoid())
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(approximate="tanh"), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x * self.se(x.mean((2, 3), keepdim=True))
        x = torch.roll(x, (-1, -1), (2, 3))
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm(t)).chunk(3, -1)
        q = nn.functional.normalize(q, dim=-1) * 0.5
        t = t + (q @ k.transpose(1, 2)).softmax(-1) @ v
        t = t + self.mlp(t)
        return t.transpose(1, 2).reshape(x.shape) + 1


def graph_text(graph: G.Graph) -> list[str]:
    return [f"{n.id} {n.shape} {n.name}" for n in graph.nodes] + [
        f"{c.name} {c.module} {c.inputs} {c.outputs} {c.mutated} {c.args!r}" for c in graph.calls
    ]


@pytest.mark.parametrize("size", [(1, 3, 16, 16), (2, 3, 15, 9)])
def test_graph_is_the_same_without_the_rules(monkeypatch: pytest.MonkeyPatch, size: tuple[int, ...]) -> None:
    model = Blocks().eval()
    fast = G.record(model, size)
    monkeypatch.setattr(R.LearnedRules, "pointwise", lambda *a: None)
    monkeypatch.setattr(R, "SHAPE_RULES", {})
    slow = G.record(model, size)
    assert graph_text(fast) == graph_text(slow)
    assert len(fast.calls) > 20


def test_module_names_hooks_and_modes_are_as_before() -> None:
    model = Blocks()
    model.train()
    model.se.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    hooks = (len(module_globals._global_forward_hooks), len(module_globals._global_forward_pre_hooks))
    graph = G.record(model, (1, 3, 8, 8))
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert (len(module_globals._global_forward_hooks), len(module_globals._global_forward_pre_hooks)) == hooks
    names = {c.module for c in graph.calls}
    assert {"stem.0", "stem.1", "se.3", "norm", "qkv", "mlp.1", ""} <= names


def test_a_submodule_hook_keeps_per_module_names() -> None:
    """Ops a user's hook runs are named as before: a pre-hook's after the parent, a forward hook's after the
    module (process-wide hooks would run before the module's own and swap them)."""
    model = Blocks().eval()
    model.norm.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    model.norm.register_forward_hook(lambda m, args, out: out - 1)
    graph = G.record(model, (1, 3, 8, 8))
    ops = [(c.packet, c.module) for c in graph.calls]
    at = ops.index(("aten.native_layer_norm", "norm"))
    assert ops[at - 1] == ("aten.mul", "") and ops[at + 1] == ("aten.sub", "norm")


class DirectLSTM(nn.Module):
    """Calls the recurrent function itself, with no nn.LSTM module: found by the fallback to the full mode."""

    def __init__(self) -> None:
        super().__init__()
        lstm = nn.LSTM(3, 8, batch_first=True)
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in lstm._flat_weights])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        h = (x.new_zeros(1, 1, 8), x.new_zeros(1, 1, 8))
        return torch._VF.lstm(x, h, list(self.weights), True, 1, 0.0, False, False, True)[0]


def test_recurrent_function_without_a_recurrent_module_is_one_call() -> None:
    graph = G.record(DirectLSTM().eval(), (1, 3, 4, 4))
    assert [c.name for c in graph.calls][-1] == "aten.lstm.input"
    assert sum(c.packet == "aten.lstm" for c in graph.calls) == 1


def test_the_default_dtype_is_part_of_every_key() -> None:
    """Integer operands promote to the default dtype (``sigmoid``, true division, ``full(size, 0.5)``): what a key
    learned under one default dtype must not answer under another, for the rules and the cache of layouts alike."""
    cases = [
        (A.sigmoid.default, lambda: ((meta(2, 3, dtype=torch.int64),), {})),
        (A.div.Tensor, lambda: ((meta(2, 3, dtype=torch.int64), 2), {})),
        (A.full.default, lambda: (([2, 3], 0.5), {"device": torch.device("meta")})),
    ]
    rec, default = recorder(), torch.get_default_dtype()
    try:
        for dtype in (torch.float32, torch.float64, torch.float32):
            torch.set_default_dtype(dtype)
            for func, make in cases:
                args, kwargs = make()
                out = rec._run(func, args, kwargs, "", True)
                same_out(out, func(*args, **kwargs))
                assert out.dtype == dtype
    finally:
        torch.set_default_dtype(default)


class Reuse(nn.Module):
    """One module called three times (once inside another), one that fails, one called from another thread."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.inner = nn.Sequential(self.conv, nn.ReLU())
        self.other = nn.Conv2d(4, 4, 1)
        self.last = nn.Conv2d(4, 4, 9 if fail else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thread = threading.Thread(target=lambda: self.other(torch.zeros(1, 4, 2, 2)))
        thread.start()
        thread.join()
        return self.last(self.inner(self.conv(x)) + self.conv(x))


def test_module_names_with_reuse_threads_and_failures() -> None:
    hooks = (len(module_globals._global_forward_hooks), len(module_globals._global_forward_pre_hooks))
    for _ in range(2):  # twice in a row: the same names
        graph = G.record(Reuse().eval(), (1, 4, 5, 5))
        convs = [c.module for c in graph.calls if c.packet == "aten.convolution"]
        assert convs == ["conv", "conv#2", "conv#3", "last"]
        assert [c.module for c in graph.calls if c.packet == "aten.relu"] == ["inner.1"]
    model = Reuse(fail=True)
    with pytest.raises(InputShapeError, match="at module 'last'"):
        G.record(model, (1, 4, 5, 5))
    assert model.training and all(m.training for m in model.modules())
    assert (len(module_globals._global_forward_hooks), len(module_globals._global_forward_pre_hooks)) == hooks
