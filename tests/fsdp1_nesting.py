"""transformers < 4.52's gradient checkpointing around an FSDP1 unit, for the tests that run
it on gloo ranks (test_fsdp1_held_inputs, test_fsdp1_unprefetched): its decoder loop calls
``checkpoint(decoder_layer.__call__, hidden_states, ...)`` (reentrant), so the checkpoint
wraps the FSDP unit instead of running inside it as transformers 5's layers do."""

from __future__ import annotations

from typing import Any


def checkpointed_around(unit: Any) -> Any:
    """``unit`` inside a reentrant checkpoint, as transformers 4.48's loop calls a layer."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    class AroundUnit(nn.Module):
        def __init__(self, unit: nn.Module) -> None:
            super().__init__()
            self.unit = unit

        def forward(self, hidden_states, position_embeddings=None, **kwargs):
            def call(h, cos, sin):
                return self.unit(h, position_embeddings=(cos, sin), **kwargs)

            cos, sin = position_embeddings
            return checkpoint(call, hidden_states, cos, sin, use_reentrant=True)

    return AroundUnit(unit)
