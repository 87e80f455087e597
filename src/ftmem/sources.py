"""Model sources: a preset id, a local HF ``config.json`` (file, model folder or Hugging
Face cache entry, with its safetensors headers), or a Hub repository id.

Each supported ``model_type`` maps its config keys onto :class:`Architecture` through
its family's key map (``ftmem.families``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftmem import families
from ftmem.arch import Architecture, count_params
from ftmem.display import shortened
from ftmem.errors import ConfigError, UnknownNameError
from ftmem.families._config import MULTIMODAL_TIE_DEFAULT, flag, number, shown
from ftmem.families._qwen_vl import qwen_text_config
from ftmem.families._vision import (
    TEXT_MODEL_TYPE,
    UnmodelledVision,
    read_vision,
    text_defaults,
    vision_model_types,
)
from ftmem.presets import get_model, validation_message
from ftmem.quantized_base import QuantizedBase, quantized_base
from ftmem.textfiles import home_expanded, parse_json, read_text
from ftmem.validation import InvalidFields
from ftmem.vision import VisionTower

if TYPE_CHECKING:  # imported where used: a preset needs neither (CLI start-up)
    from ftmem.hub_names import Reupload

Mapping = dict[str, Any]
MAX_CONFIG_BYTES = 16 * 2**20  # real config.json files are a few KiB


def language_part(cfg: Mapping) -> tuple[Mapping, str | None]:
    """A multimodal config's language model (``text_config``), and what is left out."""
    qwen = qwen_text_config(cfg)  # (Qwen-VL's Hub configs are flat)
    if qwen is not None:
        if cfg.get("tie_word_embeddings") is None:
            qwen["tie_word_embeddings"] = MULTIMODAL_TIE_DEFAULT[str(cfg["model_type"])]
        return qwen, None
    text = cfg.get("text_config")
    outer = cfg.get("model_type", "multimodal")
    refused = families.unmodelled_wrappers()
    if isinstance(outer, str) and outer in refused:
        raise ConfigError(f"config.json ({outer}): {refused[outer]}")
    if not isinstance(text, dict):
        if isinstance(outer, str) and outer in TEXT_MODEL_TYPE:
            raise ConfigError(
                f"config.json ({outer}) has no text_config object: its language model's "
                "keys (hidden_size, num_hidden_layers, ...) belong there."
            )
        return cfg, None
    if not isinstance(outer, str):  # (a list was looked up in a dict below: a traceback)
        raise ConfigError(f"config.json's model_type must be a string, not {shown(outer)}.")
    if not isinstance(text.get("model_type"), str) and outer in TEXT_MODEL_TYPE:
        text = {**text, "model_type": TEXT_MODEL_TYPE[str(outer)]}
    left_out = [
        k.removesuffix("_config") for k in cfg if k.endswith("_config") and k != "text_config"
    ]
    left_out = [k for k in left_out if isinstance(cfg.get(f"{k}_config"), dict)] or ["vision"]
    text = {**text_defaults(str(outer), str(text.get("model_type"))), **text}
    tie = cfg.get("tie_word_embeddings")
    if tie is None:
        tie = MULTIMODAL_TIE_DEFAULT.get(str(outer), text.get("tie_word_embeddings", False))
    text["tie_word_embeddings"] = tie
    if outer in vision_model_types():
        return text, None  # the vision tower is modelled (ftmem.vision)
    note = (
        f"{outer}: estimated for its language model ({text.get('model_type')}); the "
        f"{' and '.join(left_out)} encoder and its projector are left out, and so are image "
        "tokens in the sequence (--images needs a config of model_type "
        f"{', '.join(vision_model_types())})."
    )
    return text, note


def _vision(cfg: Mapping) -> VisionTower | None:
    try:
        return read_vision(cfg)
    except UnmodelledVision as exc:
        raise ConfigError(f"config.json ({cfg.get('model_type')}): {exc}.") from None
    except InvalidFields as exc:
        raise ConfigError(validation_message(exc, "config.json's vision_config")) from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(
            f"config.json's vision_config has a value of the wrong type ({exc})."
        ) from None


# model types transformers builds whose memory needs an op ftmem has not measured, with
# the reason given instead of the list of the families ftmem models
NOT_MODELLED = {
    # transformers 5.25 models/granitemoe_swa/modeling_granitemoe_swa.py l.171-197: eager
    # only (_supports_sdpa False), each head's output scaled by sigmoid(logsumexp(scores)
    # - sink) in fp32, which keeps tensors no other family's attention does
    "granitemoe_swa": "its eager-only attention scales each head's output by a sigmoid of "
    "the scores' logsumexp minus a learned sink, an op ftmem has not measured yet",
    # Llama 4's text model, transformers 5.25 models/llama4/modeling_llama4.py
    # Llama4TextMoe.forward: hidden_states.repeat(num_local_experts, 1) scaled by the
    # sigmoid scores (zero off the top k), then torch.bmm over (E, T, H), so each MoE block
    # keeps about E * T * (2H + 4I) elements, not ftmem's routed top-k tokens
    # (calibration/notes/llama4_text.py checks that formula against the real block);
    # Llama4TextDecoderLayer interleaves dense MLPs of intermediate_size_mlp (moe_layers),
    # which ftmem's dense-prefix layout cannot place. The image-text "llama4" reaches this
    # entry through its text_config.
    "llama4_text": "its MoE blocks run every token through every expert (Llama4TextMoe "
    "repeats the tokens num_local_experts times and keeps each copy for backward) and its "
    "dense and MoE layers interleave, which ftmem does not model yet",
}
# Qwen3.5's image-text wrappers
# the whole models: their vision encoder (Qwen3_5VisionModel) is not modelled
GATED_DELTANET_WRAPPERS = frozenset({"qwen3_5", "qwen3_5_moe"})


def architecture_from_config(cfg: Mapping, name: str, source: str) -> Architecture:
    """An :class:`Architecture` from a parsed HF config.json (a multimodal config's
    language model: see :func:`language_part`)."""
    outer = cfg.get("model_type")
    if isinstance(outer, str) and outer in GATED_DELTANET_WRAPPERS:
        raise ConfigError(
            f"config.json has model_type {shown(outer)}, whose vision encoder ftmem does not "
            f"model; estimate its text_config (model_type {outer}_text) instead, or add "
            '--traced, with pip install "ftmem[measure]".'
        )
    vision = _vision(cfg)
    cfg, _ = language_part(cfg)
    model_type = cfg.get("model_type")
    readers = families.by_model_type()
    if isinstance(model_type, str) and model_type in NOT_MODELLED:
        raise ConfigError(
            f"config.json has model_type {shown(model_type)}: {NOT_MODELLED[model_type]}; for a "
            "traced answer (transformers builds the model, one step runs on fake tensors) "
            'add --traced, with pip install "ftmem[measure]".'
        )
    if not isinstance(model_type, str) or model_type not in readers:
        known = ", ".join(sorted(readers))
        raise ConfigError(
            f"config.json has model_type {shown(model_type)}, which ftmem does not model yet "
            f"(it models {known}); for a traced answer (transformers builds the model, one "
            'step runs on fake tensors) add --traced, with pip install "ftmem[measure]".'
        )
    try:
        family = readers[model_type]
        fields = family.config.read(cfg)
        for site, key in family.dropout_keys.items():
            given = number(cfg, key)  # (else its config class's default: Seed-OSS's 0.1)
            fields[site] = given if given is not None else family.dropout_defaults.get(key, 0.0)
        if family.router_aux_loss:  # (its config class's default: false)
            fields["router_aux_loss"] = flag(cfg, "output_router_logits", False)
        return Architecture(name=name, source=source, vision=vision, **fields)
    except ConfigError:
        raise
    except InvalidFields as exc:
        raise ConfigError(validation_message(exc, "config.json")) from None
    except (TypeError, AttributeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"config.json has a value of the wrong type ({exc}).") from None


def read_config_json(path: Path) -> tuple[Mapping, str, str]:
    """``config.json`` (or a folder holding one), parsed: (config, model name, file)."""
    file = path / "config.json" if path.is_dir() else path
    if path.is_dir() and not file.exists() and not file.is_symlink():
        raise ConfigError(f"No config.json in {path}.")
    if file.suffix.lower() in (".yaml", ".yml"):  # (a new user's first try: their axolotl file)
        raise ConfigError(
            f"{file} is YAML, not a model's config.json: a training config goes in --from "
            f"{file}; the model is a preset id (`ftmem models`), a config.json or its folder."
        )
    cfg = parse_json(read_text(file, "config.json", MAX_CONFIG_BYTES), str(file))
    if not isinstance(cfg, dict):
        raise ConfigError(f"{file} must hold a JSON object.")
    _not_a_training_config(cfg, file)
    name = cfg.get("_name_or_path")
    if not isinstance(name, str) or not name.strip():  # transformers writes a path or id
        name = file.parent.name if path.is_dir() or file.name == "config.json" else file.stem
    # shown in every output, twice in some: a 200,000-character name printed 400 kB
    return cfg, shortened(name) or "custom", str(file)


def _not_a_training_config(cfg: Mapping, file: Path) -> None:
    """A TRL / TrainingArguments JSON given where a model goes: say to pass it as --from
    (it has no model_type; read as a model, it was "model_type null")."""
    if "model_type" in cfg:
        return
    from ftmem.frameworks import detect  # (frameworks import the run; sources do not)

    framework = detect(dict(cfg))
    if framework is not None:
        raise ConfigError(
            f"{file} is a training config ({framework}), not a model's config.json: give it "
            f"as --from {file}."
        )


def load_config_json(path: Path) -> Architecture:
    """Read ``config.json`` (or a folder holding one)."""
    return architecture_from_config(*read_config_json(path))


MAX_REF_BYTES = 4096  # a ref holds one commit hash (40 hex digits)


def _ref_commit(ref: Path) -> str:
    """The snapshot a cache entry's ``refs/main`` names, read as every file ftmem reads
    (bounded, a FIFO refused, UTF-8 checked)."""
    commit = read_text(ref, "refs/main", MAX_REF_BYTES).strip()
    if not commit or commit in (".", "..") or any(c in commit for c in "/\\\0"):
        raise ConfigError(f"{ref} does not hold a snapshot's name ({shown(commit)}).")
    return commit


def _snapshot(path: Path) -> Path:
    """A Hugging Face cache entry (``models--org--name``) as its current snapshot folder:
    the one ``refs/main`` names (as huggingface_hub reads it), else the newest."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.exists() or ref.is_symlink():
        commit = _ref_commit(ref)
        chosen = snapshots / commit
        if not chosen.is_dir():
            raise ConfigError(
                f"{ref} names snapshot {shown(commit)}, which is not in {snapshots}; give "
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
    path = home_expanded(spec)
    if path is None:  # ~nobody/x: not a folder here, so a preset or a Hub id
        return None
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


# A Hub repository id (namespace/name) as huggingface_hub validates it (2.4.0,
# utils/_validators.py, validate_repo_id: each part 1 to 96 ASCII [\w.-] starting and
# ending with a word character, no "--" or "..", not ending in ".git"): anything else, asked
# of its cache, raised HFValidationError (`ftmem estimate ./nothing`: a traceback)
HUB_ID = re.compile(r"(?!.*(--|\.\.))(?!.*\.git$)\b[\w.-]{1,96}\b/\b[\w.-]{1,96}\b", flags=re.ASCII)


def _from_hub(repo_id: str) -> Path:
    """config.json of a Hub repository: huggingface_hub's cached copy when there is one
    (no request), else one request bounded by ``HF_HUB_ETAG_TIMEOUT`` before the
    download. ``hf_hub_download`` alone retries a failed request five times with
    backoff and a 60 s timeout (huggingface_hub 2.4.0 file_download.py l.1170-1189,
    utils/_http.py l.469-567), each try logged on stderr: about 23 s on a machine
    without a network, minutes behind a firewall that drops packets. HF_HUB_OFFLINE
    and HF_HUB_CACHE are honoured; only config.json is fetched, never weights."""
    try:
        from huggingface_hub import (
            constants,
            get_hf_file_metadata,
            hf_hub_download,
            hf_hub_url,
            try_to_load_from_cache,
        )
    except ImportError:
        raise ConfigError(
            'reading it from the Hub needs huggingface_hub: pip install "ftmem[hub]" '
            "(or give a local folder with config.json)."
        ) from None
    # huggingface_hub reads the entry's refs/main with open().read(): a FIFO there waits
    # for ever, bytes that are not UTF-8 raise UnicodeDecodeError; ftmem reads it first
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    if ref.exists() or ref.is_symlink():
        _ref_commit(ref)
    with _hub_logs_silenced():
        cached = try_to_load_from_cache(repo_id, "config.json")
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None:  # the cache records that the repository has no such file
            raise ConfigError(f"the Hub repository {repo_id} has no config.json.")
        if constants.HF_HUB_OFFLINE:
            raise ConfigError(
                "its config.json is not in the local Hugging Face cache (offline, or "
                "HF_HUB_OFFLINE=1); download it once, or give a local folder or a preset "
                "(`ftmem models`)."
            )
        timeout = constants.HF_HUB_ETAG_TIMEOUT
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=timeout)
            return Path(hf_hub_download(repo_id, "config.json", etag_timeout=timeout))
        # the network library's own errors (HTTP status, DNS, refused, timeout) are not
        # one class across huggingface_hub's versions; each becomes the same sentence
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"it could not be read from the Hub: {first}") from None


@contextmanager
def _hub_logs_silenced() -> Iterator[None]:
    """huggingface_hub's warnings (a retry, a slow request) kept off stderr, where ftmem
    writes one sentence for a model it cannot read."""
    import logging  # (huggingface_hub has imported it: not for an estimate from a preset)

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def config_of(spec: str) -> tuple[Mapping, str, str] | None:
    """The parsed config.json a path or Hub id names (its language model for a
    multimodal one), with the model's name and the file; None for a preset (or a Hub id
    matched offline to one)."""
    path, _ = _located(spec)
    if path is None:
        return None
    cfg, name, file = read_config_json(path)
    return language_part(cfg)[0], name, file


def quantized_base_of(spec: str) -> QuantizedBase | None:
    """The shipped base's quantisation: config.json's quantization_config, or what a
    re-upload's name says (``-GPTQ``, ``-bnb-4bit``) when its config is not at hand."""
    path, reupload = _located(spec)
    if path is not None:
        return quantized_base(read_config_json(path)[0])
    return reupload.base if reupload is not None else None


def resolve_model(spec: str) -> Architecture:
    """A preset id/alias, a path to config.json / a model folder / a Hugging Face cache
    entry, or a Hub repository id (through huggingface_hub and its cache; offline, a
    re-upload of a preset's repository is matched to the preset)."""
    path, reupload = _located(spec)
    if path is not None:
        return load_config_json(path)
    return get_model(reupload.preset_id if reupload is not None else spec)


def _located(spec: str) -> tuple[Path | None, Reupload | None]:
    """Where a model's config.json is: a local path, or a Hub id's in the cache; else
    (None, None) for a preset, or the preset a Hub id not at hand re-uploads."""
    if not spec.strip():  # Path("") is the current folder: "" would read ./config.json
        raise ConfigError("the model name is empty; give a preset id (`ftmem models`) or a path.")
    local = _local(spec)
    if local is not None:
        return local, None
    try:
        get_model(spec)
        return None, None
    except UnknownNameError as unknown:
        repo_id = spec.strip()
        if not HUB_ID.fullmatch(repo_id):
            raise
        path, problem = _hub_lookup(
            repo_id, os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_HUB_OFFLINE")
        )
        if path is not None:
            return path, None
        from ftmem.hub_names import reupload_of  # a Hub id only (CLI start-up)

        reupload = reupload_of(repo_id)
        if reupload is not None:
            return None, reupload
        import difflib  # (an error's text only)

        close = difflib.get_close_matches(spec.lower(), unknown.known, n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"Unknown model '{spec}': not a preset{hint}, and {problem}") from unknown


@lru_cache(maxsize=64)
def _hub_lookup(
    repo_id: str, _cache: str | None, _offline: str | None
) -> tuple[Path | None, str | None]:
    """A Hub id's config.json, or why not; asked once per command for each Hub setting
    (the environment's values are the key: huggingface_hub reads them)."""
    try:
        return _from_hub(repo_id), None
    except ConfigError as exc:
        return None, str(exc)


# Dropout keys of decoder-only configs that act in training (a classifier's or a summary
# head's dropout does not run in a causal LM's step)
_DROPOUT_KEYS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout",
    "attention_dropout",
    "residual_dropout",
    "embedding_dropout",
)


def dropout_note(cfg: Mapping) -> str | None:
    """A decoder config that trains with a dropout ftmem does not model (attention
    dropout; the residual and embedding dropouts of Family.dropout_keys are modelled):
    said rather than left silent."""
    family = families.by_model_type().get(str(cfg.get("model_type")))
    if family is None or family.encoder_decoder:
        return None
    modelled = set(family.dropout_keys.values())
    cfg = {**family.dropout_defaults, **{k: v for k, v in cfg.items() if v is not None}}
    given = [
        f"{k} {cfg[k]}"
        for k in _DROPOUT_KEYS
        if k not in modelled
        and isinstance(cfg.get(k), int | float)
        and not isinstance(cfg[k], bool)
        and cfg[k] > 0
    ]
    if not given:
        return None
    return (
        f"config.json trains with dropout ({', '.join(given)}): the masks these dropouts keep "
        "for backward are not counted for this family yet, so the activations may read low."
    )


def source_notes(spec: str) -> list[str]:
    """What the model source adds to an estimate: a multimodal config's left-out parts,
    and what the folder's safetensors headers say."""
    local, reupload = _located(spec)
    if reupload is not None:
        return [reupload.note(spec.strip())]
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
            text, left_out = language_part(cfg)
            if left_out:
                notes.append(left_out)
            dropout = dropout_note(text)
            if dropout:
                notes.append(dropout)
    from ftmem.safetensors_headers import read_checkpoint  # a local folder only

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


# buffers some checkpoints store beside the parameters (rotary tables, causal masks)
NON_PARAMETERS = (".inv_freq", ".masked_bias", ".attn.bias")
