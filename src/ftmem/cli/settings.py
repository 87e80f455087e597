"""The settings of a run: the command's flags, over those of a training config read with
``--from``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftmem.errors import FtmemError

if TYPE_CHECKING:
    import typer

    from ftmem.result import ConfigRead


def with_config(
    ctx: typer.Context | None,
    model: str | None,
    settings: dict[str, Any],
    *,
    quantized_base: bool = True,
) -> tuple[str, dict[str, Any], list[str], ConfigRead | None]:
    """The model and settings, read from --from when given; explicit flags win. A LoRA
    on a base shipped quantised (config.json's quantization_config) trains on it as
    shipped (``quantized_base``: unless the command builds the model itself). Last,
    what the training config gave (None without --from)."""
    chosen, settings, notes, read = _from_config(ctx, model, settings)
    if quantized_base:
        from ftmem.quantized_base import on_quantized_base
        from ftmem.sources import quantized_base_of

        settings, said = on_quantized_base(quantized_base_of(chosen), settings)
        notes += said
    return chosen, settings, notes, read


def _from_config(
    ctx: typer.Context | None, model: str | None, settings: dict[str, Any]
) -> tuple[str, dict[str, Any], list[str], ConfigRead | None]:
    path = settings.pop("from_config", None)
    launcher = settings.pop("launcher", None)
    trl = settings.get("framework") == "trl"
    if trl:  # TRL's runs follow HF Trainer's code path; its defaults come from its reader
        settings["framework"] = "hf"
    if path is None and launcher is None and not trl:
        if model is None:
            raise FtmemError(
                "give a model (a preset id or config.json), or --from a training config."
            )
        return model, settings, [], None
    from ftmem.frameworks import (
        read_framework_config,
        read_launcher_config,
        trl_defaults,
        under_flags,
        with_launcher,
    )

    defaults_only = trl and path is None
    if defaults_only and model is None:
        raise FtmemError("give a model (a preset id or config.json) for --framework trl.")
    fw = (
        trl_defaults(str(model), settings.get("objective") or "sft")
        if defaults_only
        else read_framework_config(path)
        if path is not None
        else None
    )
    if launcher is not None:
        on = read_launcher_config(launcher)
        fw = on if fw is None else with_launcher(fw, on, settings.get("transformers_version"))
    assert fw is not None  # a file, a launcher or --framework trl gave it
    # which flags the user gave: typer's context knows (the fast path reads neither --from
    # nor --framework trl)
    explicit = {
        k: v
        for k, v in settings.items()
        if ctx is not None
        and (src := ctx.get_parameter_source(k)) is not None
        and src.name in ("COMMANDLINE", "ENVIRONMENT")
        and not (defaults_only and k == "framework")  # (trl: its reader's profile, hf)
    }
    chosen = model or fw.model
    if chosen is None:
        given = f"--from {path}" if path is not None else f"--launcher {launcher}"
        raise FtmemError(
            f"{path or launcher} names no base model; give one: ftmem estimate MODEL {given}."
        )
    if path is not None:
        _framework_fits_file(path, fw.framework, fw.settings.get("framework"), explicit)
    merged, dropped = under_flags(fw, explicit)
    said = [] if path is None else [f"Read from the {fw.framework} config {path}."]
    from ftmem.result import ConfigRead

    replaced = sorted(
        {k for k in fw.settings if k in explicit and explicit[k] != fw.settings[k]}
        | {k for k in fw.settings if k not in merged}
    )
    read = ConfigRead(
        framework=fw.framework,
        path=fw.path,
        settings=dict(fw.settings),
        assumed=list(fw.assumed),
        ignored_no_effect=[k for k in fw.ignored if k not in fw.not_read],
        ignored_not_read=list(fw.not_read),
        replaced_by_flags=replaced,
    )
    return chosen, {**settings, **merged}, [*said, *fw.notes, *dropped], read


def _framework_fits_file(
    path: str, reader: str, read: str | None, explicit: dict[str, Any]
) -> None:
    """An explicit --framework that swaps in or out a framework with its own training code
    (LitGPT, torchtune, fsdp_qlora): an axolotl file under --framework litgpt was estimated
    as LitGPT's step on axolotl's settings, a program that does not exist. Between the
    frameworks over transformers' Trainer it names the code path (axolotl's file under
    --framework trl: HF Trainer's)."""
    from ftmem.framework_support import OWN_CODE

    given = explicit.get("framework")
    if given is None or read is None or given == read or not {given, read} & OWN_CODE:
        return
    raise FtmemError(
        f"--framework {given} contradicts {path}, a config of {reader}'s, whose step follows "
        f"--framework {read}: it would estimate another program's step on the file's "
        "settings; drop --framework."
    )
