"""Creating the open_clip model of a :class:`~semclip_bench.backbones.clip.BackboneSpec` and
filling it with weights: an open_clip tag (downloaded, or from the cache when offline), a local
checkpoint file (read strictly, wrapper prefixes stripped, position embeddings resized), or the
seeded random initialisation that serves as the backbone control.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import open_clip
import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import Tensor, nn

from semclip_bench.errors import UserError

if TYPE_CHECKING:
    from semclip_bench.backbones.clip import BackboneSpec

log = logging.getLogger(__name__)

#: Seed of the random initialisation used when ``pretrained`` is None.
RANDOM_INIT_SEED = 0

#: Anchor key used to locate the open_clip model inside a wrapped state dict.
_ANCHOR_KEY = "visual.conv1.weight"

_warned_random: set[str] = set()


def is_local_file(value: str) -> bool:
    """Whether a ``pretrained`` value names an existing file (rather than an open_clip tag)."""
    return os.path.isfile(os.path.expanduser(value))


def create_model(spec: BackboneSpec) -> nn.Module:
    """The open_clip model ``spec`` names, with its weights: a tag's download, a local file
    loaded strictly, or the seeded random initialisation; UserError where none applies."""
    if spec.name not in open_clip.list_models():
        raise UserError(
            f"backbone name {spec.name!r} is not an open_clip model "
            "(e.g. semclip-tiny, semclip-vit-m16, ViT-B-16-plus-240; see open_clip.list_models())"
        )
    if spec.image_size is not None and spec.image_size <= 0:
        raise UserError(f"backbone image_size must be positive, got {spec.image_size}")
    kwargs: dict = {"force_image_size": spec.image_size} if spec.image_size is not None else {}

    if spec.pretrained is not None and not is_local_file(spec.pretrained):
        return _create_from_tag(spec, kwargs)

    # Random init (seeded, without disturbing the caller's RNG), then optionally a local file.
    with torch.random.fork_rng(devices=[]), quiet_root_logger():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(spec.name, pretrained=None, pretrained_text=False, **kwargs)
    if spec.pretrained is None:
        if spec.name not in _warned_random:
            _warned_random.add(spec.name)
            log.warning(
                "backbone %s has random weights (pretrained=None): fine for tests and smoke runs, "
                "meaningless for results",
                spec.name,
            )
    else:
        _load_local_checkpoint(model, os.path.expanduser(spec.pretrained))
    return model


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Hide open_clip's root-logger chatter while it builds an architecture we then fill ourselves
    (its "No pretrained weights loaded ... initialized randomly" would be wrong here)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _create_from_tag(spec: BackboneSpec, kwargs: dict) -> nn.Module:
    tag = spec.pretrained
    assert tag is not None
    known = open_clip.list_pretrained_tags_by_model(spec.name)
    if tag not in known:
        raise UserError(
            f"backbone pretrained {tag!r} is neither an existing file nor an open_clip tag of "
            f"{spec.name} (tags: {', '.join(known) or 'none'})"
        )
    try:
        with _hub_offline_unless_reachable():
            return open_clip.create_model(spec.name, pretrained=tag, **kwargs)
    except Exception as exc:  # download / cache failures surface as various exception types
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(
            f"could not load open_clip weights {spec.name}/{tag} ({type(exc).__name__}: {first}); "
            "offline, pass a local checkpoint file as pretrained instead"
        ) from exc


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether ``host`` resolves within ``timeout`` s (a cheap test for "we are offline")."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


@contextlib.contextmanager
def _hub_offline_unless_reachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode while the hub is unreachable.

    Cached weights still load; missing ones fail at once instead of after ~45 s of retries.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # open_clip then downloads by URL, which fails fast when offline
        yield
        return
    if constants.HF_HUB_OFFLINE or _hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat {key: tensor} dict; UserError naming the file if not."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            zipfile.BadZipFile) as exc:  # fmt: skip
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(
            f"backbone checkpoint {path} cannot be read as a torch state dict "
            f"({type(exc).__name__}: {first}); save a plain model.state_dict() with torch.save"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise UserError(
            f"backbone checkpoint {path} holds no state dict (got {type(obj).__name__})"
        )
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not state:
        raise UserError(f"backbone checkpoint {path} holds no tensors")
    return state


def _strip_prefix(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Remove a wrapper prefix ("module.", "model.", "backbone.model.", ...) from the keys.

    The prefix is found from the anchor key ``visual.conv1.weight``; keys outside the prefix
    (e.g. a method's head in a Lightning checkpoint) are dropped.
    """
    if model_keys & state.keys():
        return state
    prefixes = sorted({k[: -len(_ANCHOR_KEY)] for k in state if k.endswith(_ANCHOR_KEY)}, key=len)
    for prefix in prefixes:
        candidate = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if model_keys & candidate.keys():
            return candidate
    out = state
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "model."):
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def state_dict_mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> str | None:
    """How ``state`` fails to fit a model whose state dict is ``own`` (missing and unexpected
    keys, shape mismatches, each counted with an example), or None where it fits exactly."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    parts = [f"{len(missing)} missing keys (e.g. {missing[0]})"] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} "
            f"vs model {tuple(own[k].shape)})"
        )
    return "; ".join(parts) or None


def _load_local_checkpoint(model: nn.Module, path: str) -> None:
    """Load a local state dict into ``model`` strictly, resizing position embeddings if needed."""
    own = model.state_dict()
    state = _strip_prefix(read_state_dict(path), set(own))
    if "logit_scale" in state and state["logit_scale"].ndim != own["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    except Exception as exc:  # a grid that is not square or a width mismatch
        raise UserError(
            f"backbone checkpoint {path}: position embeddings do not fit the model ({exc})"
        ) from exc
    mismatch = state_dict_mismatch(own, state)
    if mismatch:
        raise UserError(f"backbone checkpoint {path} does not match the architecture: {mismatch}")
    model.load_state_dict(state, strict=True)
