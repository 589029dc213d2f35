"""The one table of receptive-field rules: what every ATen operation does to spatial indices.

Each rule looks at one recorded call (its arguments, input and output shapes) and says, for every output
tensor, which tracked inputs it reads and how: per input spatial axis an :class:`AxisRule` (output index ->
input indices, see :mod:`atrous.rf.support`), and how output channels relate to input channels. Rules are
written per axis, so 1-D, 2-D and 3-D variants and rectangular kernels share code. An op without a rule is an
error that names it; nothing is silently treated as the identity.

One module per op family (``conv``, ``resample``, ``indexing``, ``views``, ``pointwise``, ``reductions``,
``norms``, ``products``, ``unfold``, ``recurrent``); each registers its rules in the one registry,
``base.RULES``, which ``rule_for`` reads.

Conventions: ``Offsets`` are op-input indices relative to ``q * advance`` (see ``AxisMap``). A rule's optional
``finite`` function gives the exact relation on the real tensor sizes, where it differs from clipping the
periodic rule to the input range (reflect padding, PyTorch's own resampling arithmetic).
"""

from __future__ import annotations

import torch

from atrous.rf.graph import OpCall

# The family modules register their rules on import.
from atrous.rf.rules import (  # noqa: F401
    conv,
    indexing,
    norms,
    products,
    recurrent,
    reductions,
    resample,
    unfold,
    views,
)
from atrous.rf.rules.base import AXIS_NAMES, RULES, AxisRule, Channels, Ctx, Effect, Options, RuleFn
from atrous.rf.rules.pointwise import POINTWISE_EXTRA, pointwise
from atrous.rf.rules.views import CONSTANT_PACKETS

__all__ = ["AXIS_NAMES", "CONSTANT_PACKETS", "AxisRule", "Channels", "Ctx", "Effect", "Options", "rule_for"]


def rule_for(call: OpCall) -> RuleFn | None:
    fn = RULES.get(call.packet)
    if fn is not None:
        return fn
    op = getattr(getattr(torch.ops, call.packet.split(".")[0]), call.packet.split(".", 1)[1], None)
    if call.packet in POINTWISE_EXTRA:
        return pointwise
    if op is not None and any(torch.Tag.pointwise in getattr(op, o).tags for o in op.overloads()):
        return pointwise
    return None
