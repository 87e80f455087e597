"""The library releases the pre-flight callbacks record for an estimate
(integrations.preflight.with_library_versions)."""

import pytest

from ftmem.integrations.live import LiveRun
from tests.conftest import tiny


@pytest.mark.parametrize(
    ("settings", "recorded"),
    [
        ({"method": "llama-adapter", "quant": "nf4"}, True),  # bitsandbytes' 4-bit linears
        ({"method": "llama-adapter-v2", "quant": "int8"}, True),
        ({"method": "lora", "quant": "int4"}, False),  # GPTQ's kernels, not bitsandbytes'
        ({"method": "lora"}, False),
    ],
)
def test_the_installed_bitsandbytes_is_recorded_where_it_runs(settings, recorded, monkeypatch):
    """The pre-flight callbacks record the installed bitsandbytes (ftmem models its 4-bit
    linears by release) wherever its quantised linears run, not only under qlora."""
    from ftmem.integrations import preflight

    monkeypatch.setattr(preflight.report, "installed", lambda name: "0.43.1")
    live = LiveRun(tiny("llama"))
    for key, value in settings.items():
        live.set(key, value, "given")
    preflight.with_library_versions(live)
    assert ("bnb_version" in live.settings) is recorded
