"""Model sources: a preset id, a local HF ``config.json`` (file, model folder or Hugging
Face cache entry, with its safetensors headers), or a Hub repository id.

Each supported ``model_type`` maps its config keys onto :class:`Architecture`.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from math import prod
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftmem import limits
from ftmem.arch import Architecture, count_params
from ftmem.checkpoint import read_checkpoint
from ftmem.display import clipped
from ftmem.errors import ConfigError, UnknownNameError
from ftmem.presets import get_model, validation_message
from ftmem.textfiles import parse_json, read_text

Mapping = dict[str, Any]
MAX_CONFIG_BYTES = 16 * 2**20  # real config.json files are a few KiB


# -- reading config.json's values with their types ------------------------------------------
# As transformers 5 reads them (its configs are strict dataclasses): a flag is a JSON
# true/false, never the string "false" (truthy) nor 0; a count is an integer, never a
# bool, a float or a string; a count that may be absent may be null. Each count is
# checked against its physical bound (ftmem.limits) before any arithmetic sees it.


def _shown(value: Any) -> str:
    """A config value in a message, as JSON and cut short."""
    big = isinstance(value, int) and not isinstance(value, bool)
    text = limits.shown(value) if big else json.dumps(value)
    return clipped(text)


def _wrong(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config.json: {key} must be {expected}, not {_shown(value)}.")


def _present(cfg: Mapping, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first of ``keys`` that config.json gives a value (null counts as absent)."""
    for key in keys:
        if cfg.get(key) is not None:
            return key, cfg[key]
    return None


def _count(key: str, value: Any, bound: limits.Bound) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(key, "an integer", value)
    if value <= 0:
        raise _wrong(key, "positive", value)
    problem = bound.problem(f"config.json: {key}", value)
    if problem:
        raise ConfigError(problem + ".")
    return value


def _need(cfg: Mapping, *keys: str, bound: limits.Bound = limits.WIDTH) -> int:
    """A count config.json must give (under one of ``keys``)."""
    found = _present(cfg, keys)
    if found is None:
        raise ConfigError(
            f"config.json lacks '{keys[0]}', which a {cfg.get('model_type')} model needs."
        )
    return _count(*found, bound)


def _opt(cfg: Mapping, key: str, bound: limits.Bound = limits.WIDTH) -> int | None:
    """A count config.json may leave out (or give as null)."""
    found = _present(cfg, (key,))
    return None if found is None else _count(*found, bound)


def _flag(cfg: Mapping, key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise _wrong(key, "true or false", value)
    return value


def _number(cfg: Mapping, key: str) -> float | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(key, "a number", value)
    if not math.isfinite(value):
        raise _wrong(key, "a finite number", value)
    return float(value)


def _word(cfg: Mapping, key: str, default: str | None = None) -> str | None:
    value = cfg.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise _wrong(key, "a non-empty string", value)
    return value


def _act(name: str | None) -> str:
    name = (name or "silu").lower()
    if name in ("silu", "swish"):
        return "silu"
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_tanh", "gelu_fast"):
        return "gelu_tanh"
    if name.startswith("gelu"):
        return "gelu"
    if name == "relu":
        return "relu"
    raise ConfigError(f"Unsupported activation {_shown(name)} in config.json.")


def _llama_like(cfg: Mapping, family: str) -> Mapping:
    heads = _need(cfg, "num_attention_heads")
    attention_bias = _flag(cfg, "attention_bias", False)
    out = {
        "family": family,
        "vocab_size": _need(cfg, "vocab_size"),
        "hidden_size": _need(cfg, "hidden_size"),
        "num_layers": _need(cfg, "num_hidden_layers", bound=limits.LAYERS),
        "num_heads": heads,
        "num_kv_heads": _opt(cfg, "num_key_value_heads") or heads,
        "intermediate_size": _need(cfg, "intermediate_size"),
        "activation": _act(_word(cfg, "hidden_act") or _word(cfg, "hidden_activation")),
        "tie_embeddings": _flag(cfg, "tie_word_embeddings", False),
        "max_position_embeddings": _opt(cfg, "max_position_embeddings", limits.TOKENS) or 4096,
        "attention_qkv_bias": attention_bias,
        "attention_out_bias": attention_bias,
        "mlp_bias": _flag(cfg, "mlp_bias", False),
    }
    head_dim = _opt(cfg, "head_dim")
    if head_dim:
        out["head_dim"] = head_dim
    no_window = type(cfg.get("sliding_window")) is int and cfg["sliding_window"] == 0
    window = None if no_window else _opt(cfg, "sliding_window", limits.TOKENS)
    if _flag(cfg, "use_sliding_window", True) and window:
        out["sliding_window"] = window
    return out


def _from_llama(cfg: Mapping) -> Mapping:
    return _llama_like(cfg, "llama")


def _from_mistral(cfg: Mapping) -> Mapping:
    return _llama_like(cfg, "mistral")


def _from_qwen2(cfg: Mapping) -> Mapping:
    out = _llama_like(cfg, "qwen2")
    out.update(attention_qkv_bias=True, attention_out_bias=False)
    return out


def _from_qwen3(cfg: Mapping) -> Mapping:
    """Qwen3Config: q/k RMSNorms per head; attention_bias (default false) biases q, k, v
    and o alike; use_sliding_window defaults to false."""
    out = _llama_like(cfg, "qwen3")
    out["qk_norm"] = True
    if not _flag(cfg, "use_sliding_window", False):
        out.pop("sliding_window", None)
    return out


def _from_mixtral(cfg: Mapping) -> Mapping:
    out = _llama_like(cfg, "mixtral")
    out.update(
        num_experts=_need(cfg, "num_local_experts", bound=limits.EXPERTS),
        experts_per_token=_need(cfg, "num_experts_per_tok", bound=limits.EXPERTS),
    )
    return out


def _from_gemma(cfg: Mapping) -> Mapping:
    out = _llama_like(cfg, "gemma")
    out["tie_embeddings"] = _flag(cfg, "tie_word_embeddings", True)
    return out


def _from_gemma2(cfg: Mapping) -> Mapping:
    out = _llama_like(cfg, "gemma2")
    out.update(norms_per_block=4, tie_embeddings=_flag(cfg, "tie_word_embeddings", True))
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        cap = _number(cfg, key)
        if cap is not None and cap <= 0:  # gemma2 divides the logits by it
            raise _wrong(key, "positive (or null)", cfg[key])
        if cap:
            out[key] = cap
    return out


def _from_phi3(cfg: Mapping) -> Mapping:
    return _llama_like(cfg, "phi3")


def _from_gpt2(cfg: Mapping) -> Mapping:
    h = _need(cfg, "n_embd", "hidden_size")
    return {
        "family": "gpt2",
        "vocab_size": _need(cfg, "vocab_size"),
        "hidden_size": h,
        "num_layers": _need(cfg, "n_layer", "num_hidden_layers", bound=limits.LAYERS),
        "num_heads": _need(cfg, "n_head", "num_attention_heads"),
        "intermediate_size": _opt(cfg, "n_inner") or 4 * h,
        "mlp": "plain",
        "activation": _act(_word(cfg, "activation_function", "gelu_new")),
        "norm": "layernorm",
        "attention_qkv_bias": True,
        "attention_out_bias": True,
        "mlp_bias": True,
        "tie_embeddings": _flag(cfg, "tie_word_embeddings", True),
        "position_embedding": "learned",
        "max_position_embeddings": _need(
            cfg, "n_positions", "max_position_embeddings", bound=limits.TOKENS
        ),
    }


def _from_falcon(cfg: Mapping) -> Mapping:
    h = _need(cfg, "hidden_size")
    heads = _need(cfg, "num_attention_heads", "n_head")
    new_arch = _flag(cfg, "new_decoder_architecture", False)
    if new_arch:
        kv = _opt(cfg, "num_kv_heads") or heads
    else:
        kv = 1 if _flag(cfg, "multi_query", True) else heads
    bias = _flag(cfg, "bias", False)
    norms = cfg.get("num_ln_in_parallel_attn", 2)
    if norms is not None and (isinstance(norms, bool) or not isinstance(norms, int)):
        raise _wrong("num_ln_in_parallel_attn", "an integer or null", norms)
    return {
        "family": "falcon",
        "vocab_size": _need(cfg, "vocab_size"),
        "hidden_size": h,
        "num_layers": _need(cfg, "num_hidden_layers", "n_layer", bound=limits.LAYERS),
        "num_heads": heads,
        "num_kv_heads": kv,
        "intermediate_size": _opt(cfg, "ffn_hidden_size") or 4 * h,
        "mlp": "plain",
        "activation": "gelu",
        "norm": "layernorm",
        "norms_per_block": 2 if new_arch and norms == 2 else 1,
        "parallel_attn_mlp": _flag(cfg, "parallel_attn", True) or new_arch,
        "attention_qkv_bias": bias,
        "attention_out_bias": bias,
        "mlp_bias": bias,
        "tie_embeddings": _flag(cfg, "tie_word_embeddings", True),
        "position_embedding": "alibi" if _flag(cfg, "alibi", False) else "rotary",
        "max_position_embeddings": _opt(cfg, "max_position_embeddings", limits.TOKENS) or 2048,
    }


def _from_t5(cfg: Mapping) -> Mapping:
    layers = _need(cfg, "num_layers", bound=limits.LAYERS)
    decoder = _opt(cfg, "num_decoder_layers", limits.LAYERS) or layers
    if decoder != layers:
        raise ConfigError(
            f"config.json has {layers} encoder and {decoder} decoder layers; ftmem supports "
            "T5 models with as many of each (every T5 and Flan-T5 checkpoint)."
        )
    ff = _word(cfg, "feed_forward_proj", "relu") or "relu"
    gated = ff.startswith("gated-")
    if ff == "gated-":  # transformers splits on "-": no activation after it (_act reads "" as silu)
        raise _wrong("feed_forward_proj", "an activation or gated-ACTIVATION", ff)
    dropout = _number(cfg, "dropout_rate")
    return {
        "family": "t5",
        "vocab_size": _need(cfg, "vocab_size"),
        "hidden_size": _need(cfg, "d_model"),
        "num_layers": layers,
        "num_heads": _need(cfg, "num_heads"),
        "head_dim": _need(cfg, "d_kv"),
        "intermediate_size": _need(cfg, "d_ff"),
        "mlp": "gated" if gated else "plain",
        "activation": _act(ff.removeprefix("gated-") if ff != "gated-gelu" else "gelu_new"),
        # T5 v1.0 ties the head (and scales the decoder output); v1.1 / Flan-T5 say false,
        # which transformers 5 saves as scale_decoder_outputs false (it writes tie true)
        "tie_embeddings": _flag(cfg, "tie_word_embeddings", True)
        and _flag(cfg, "scale_decoder_outputs", True),
        "position_embedding": "relative",
        "relative_attention_num_buckets": _opt(cfg, "relative_attention_num_buckets") or 32,
        "max_position_embeddings": _opt(cfg, "n_positions", limits.TOKENS) or 512,
        "dropout_rate": 0.1 if dropout is None else dropout,
    }


FAMILIES: dict[str, Callable[[Mapping], Mapping]] = {
    "llama": _from_llama,
    "mistral": _from_mistral,
    "mixtral": _from_mixtral,
    "qwen2": _from_qwen2,
    "qwen3": _from_qwen3,
    "gemma": _from_gemma,
    "gemma2": _from_gemma2,
    "phi3": _from_phi3,
    "gpt2": _from_gpt2,
    "falcon": _from_falcon,
    "t5": _from_t5,
}


def language_part(cfg: Mapping) -> tuple[Mapping, str | None]:
    """A multimodal config's language model (``text_config``), and what is left out."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        return cfg, None
    outer = cfg.get("model_type", "multimodal")
    left_out = [
        k.removesuffix("_config") for k in cfg if k.endswith("_config") and k != "text_config"
    ]
    left_out = [k for k in left_out if isinstance(cfg.get(f"{k}_config"), dict)] or ["vision"]
    text = dict(text)
    text.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
    note = (
        f"{outer}: estimated for its language model ({text.get('model_type')}); the "
        f"{' and '.join(left_out)} encoder and its projector are left out, and so are image "
        "tokens in the sequence."
    )
    return text, note


def architecture_from_config(cfg: Mapping, name: str, source: str) -> Architecture:
    """An :class:`Architecture` from a parsed HF config.json (a multimodal config's
    language model: see :func:`language_part`)."""
    cfg, _ = language_part(cfg)
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ConfigError(
            f"config.json has model_type {_shown(model_type)}, which ftmem does not support yet "
            f"(supported: {known})."
        )
    try:
        fields = FAMILIES[model_type](cfg)
        return Architecture(name=name, source=source, **fields)
    except ConfigError:
        raise
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "config.json")) from None
    except (TypeError, AttributeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"config.json has a value of the wrong type ({exc}).") from None


def load_config_json(path: Path) -> Architecture:
    """Read ``config.json`` (or a folder holding one)."""
    file = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not file.exists() and not file.is_symlink():
        raise ConfigError(f"No config.json in {path}.")
    cfg = parse_json(read_text(file, "config.json", MAX_CONFIG_BYTES), str(file))
    if not isinstance(cfg, dict):
        raise ConfigError(f"{file} must hold a JSON object.")
    name = cfg.get("_name_or_path") or (
        file.parent.name if path.is_dir() or file.name == "config.json" else file.stem
    )
    return architecture_from_config(cfg, str(name) or "custom", str(file))


MAX_REF_BYTES = 4096  # a ref holds one commit hash (40 hex digits)


def _snapshot(path: Path) -> Path:
    """A Hugging Face cache entry (``models--org--name``) as its current snapshot folder:
    the one ``refs/main`` names (as huggingface_hub reads it), else the newest."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.exists() or ref.is_symlink():
        commit = read_text(ref, "refs/main", MAX_REF_BYTES).strip()
        if not commit or commit in (".", "..") or any(c in commit for c in "/\\\0"):
            raise ConfigError(f"{ref} does not hold a snapshot's name ({_shown(commit)}).")
        chosen = snapshots / commit
        if not chosen.is_dir():
            raise ConfigError(
                f"{ref} names snapshot {_shown(commit)}, which is not in {snapshots}; give "
                "the snapshot folder itself."
            )
        return chosen
    try:
        candidates = [p for p in snapshots.iterdir() if p.is_dir()]
        newest = max(candidates, key=lambda p: p.stat().st_mtime, default=None)
    except OSError as exc:
        raise ConfigError(f"cannot read {snapshots}: {exc.strerror or exc}.") from None
    if newest is None:
        raise ConfigError(f"{path} is a Hugging Face cache entry with no snapshot.")
    return newest


def _local(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError):  # a name too long to be a path, or with a NUL in it
        return None
    if is_dir:
        return _snapshot(path)
    if is_file or spec.endswith(".json"):
        return path
    if "/" in spec and (path.is_symlink() or path.exists()):
        return path  # a FIFO, device or broken link: read_text says which, not "unknown model"
    return None


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _from_hub(repo_id: str) -> Path:
    """config.json of a Hub repository, through huggingface_hub's cache (HF_HUB_OFFLINE
    and HF_HUB_CACHE are honoured); only config.json is fetched, never weights."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ConfigError(
            'reading it from the Hub needs huggingface_hub: pip install "ftmem[hub]" '
            "(or give a local folder with config.json)."
        ) from None
    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except LocalEntryNotFoundError:
        raise ConfigError(
            "its config.json is not in the local Hugging Face cache (offline, or "
            "HF_HUB_OFFLINE=1); download it once, or give a local folder or a preset "
            "(`ftmem models`)."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"it could not be read from the Hub: {first}") from None


def resolve_model(spec: str) -> Architecture:
    """A preset id/alias, a path to config.json / a model folder / a Hugging Face cache
    entry, or a Hub repository id (through huggingface_hub and its cache)."""
    if not spec.strip():  # Path("") is the current folder: "" would read ./config.json
        raise ConfigError("the model name is empty; give a preset id (`ftmem models`) or a path.")
    local = _local(spec)
    if local is not None:
        return load_config_json(local)
    try:
        return get_model(spec)
    except UnknownNameError as unknown:
        if not HUB_ID.match(spec.strip()):
            raise
        try:
            return load_config_json(_from_hub(spec.strip()))
        except ConfigError as hub:
            close = difflib.get_close_matches(spec.lower(), unknown.known, n=3, cutoff=0.5)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(f"Unknown model '{spec}': not a preset{hint}, and {hub}") from unknown


def source_notes(spec: str) -> list[str]:
    """What the model source adds to an estimate: a multimodal config's left-out parts,
    and what the folder's safetensors headers say."""
    local = _local(spec)
    if local is None:
        return []
    folder = local if local.is_dir() else local.parent
    notes: list[str] = []
    file = folder / "config.json"
    if file.is_file():
        try:
            cfg = parse_json(read_text(file, "config.json", MAX_CONFIG_BYTES), str(file))
        except ConfigError:
            cfg = {}
        if isinstance(cfg, dict):
            _, left_out = language_part(cfg)
            if left_out:
                notes.append(left_out)
            quant = _quant_method(cfg)
            if quant:
                notes.append(
                    f"config.json says the checkpoint is {quant}-quantised; ftmem estimates the "
                    "model's own layout in the dtypes of the run (training on a pre-quantised "
                    "base is not modelled yet)."
                )
    ckpt = read_checkpoint(folder)
    if ckpt is None:
        return notes
    arch = load_config_json(local)
    dtypes = ", ".join(f"{dt} {b / 1e9:.2f} GB" for dt, b in sorted(ckpt.bytes_by_dtype().items()))
    kind = ckpt.quantization
    if kind:
        notes.append(
            f"Checkpoint ({len(ckpt.files)} safetensors file(s), headers read): {kind}-quantised, "
            f"{len(ckpt.tensors):,} tensors, {dtypes} on disk."
        )
        return notes
    params = {n: v for n, v in ckpt.tensors.items() if not n.endswith(NON_PARAMETERS)}
    numel = sum(prod(shape) for _, shape in params.values())
    expected = count_params(arch)
    if numel == expected:
        notes.append(
            f"Checkpoint ({len(ckpt.files)} safetensors file(s), headers read): "
            f"{len(params):,} tensors, {numel:,} parameters ({dtypes}): the same count as the "
            "layout estimated."
        )
    else:
        notes.append(
            f"Checkpoint ({len(ckpt.files)} safetensors file(s), headers read) holds {numel:,} "
            f"parameters, the layout from config.json {expected:,}: the estimate follows "
            "config.json; check the checkpoint matches it."
        )
    return notes


def _quant_method(cfg: Mapping) -> str | None:
    """The quant_method of config.json's quantization_config (an object, as transformers
    reads it), or None."""
    quant = cfg.get("quantization_config")
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise _wrong("quantization_config", "an object", quant)
    method = quant.get("quant_method")
    if method is not None and not isinstance(method, str):
        raise _wrong("quantization_config.quant_method", "a string", method)
    return method


# buffers some checkpoints store beside the parameters (rotary tables, causal masks)
NON_PARAMETERS = (".inv_freq", ".masked_bias", ".attn.bias")
