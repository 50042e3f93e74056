"""LoRA adapters on one warm pipeline: loaded once, kept in an LRU bounded by count and
bytes, and switched per batch.

- Named adapters (the default): each LoRA is a peft adapter of its own on the pipeline;
  a batch turns on its set with its scales, and a batch without LoRAs turns every adapter
  layer off, so the base layers run alone, bit for bit as on a fresh pipeline.
- Hot-swap slots (``IMG2IMG_COMPILE``): a compiled denoiser must keep its graph, so it
  gets MAX_LORAS_PER_JOB adapter slots of rank ``IMG2IMG_LORA_MAX_RANK`` with zero
  weights before it is compiled; a batch copies its adapters' weights into the slots with
  diffusers' LoRA hotswap (the scale folded into ``lora_B``) and zeroes the slots it does
  not use. Text-encoder parts, never compiled, stay named adapters.

A LoRA that does not fit the base (layers the model lacks, other shapes, not a LoRA at
all) is a LoraMismatch naming both; nothing of it stays loaded.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from contract.errors import LoraMismatch, LoraNotFound
from contract.loras import MAX_LORAS_PER_JOB

log = logging.getLogger(__name__)

LoraSet = tuple[tuple[str, float], ...]  # (ref, scale) per adapter, as BatchKey holds it
SLOT_PREFIX = "slot"
# What follows a layer's name in a LoRA key (diffusers/peft and kohya-style names).
_LORA_SUFFIX = re.compile(r"\.(lora_[AB]|lora_magnitude_vector|lora\.(up|down)|lora_(up|down)"
                          r"|alpha)(\.|$)")
_DENOISERS = ("unet", "transformer")


@dataclass
class LoadedAdapter:
    ref: str
    name: str  # its adapter name on the pipeline's components
    nbytes: int
    components: tuple[str, ...]  # where it has weights: "unet", "text_encoder", ...
    slot_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # hot-swap only


@dataclass
class AdapterStats:
    loads: int = 0
    evictions: int = 0
    swaps: int = 0  # active sets switched
    slot_fills: int = 0  # hot-swap: adapter weights copied into a slot
    load_seconds: float = 0.0


class Adapters:
    """The LoRAs loaded on one pipeline; ``activate`` makes a batch's set the active one."""

    def __init__(self, pipe: Any, *, model: str, resolve: Callable[[str], str],
                 max_entries: int, max_bytes: int, hotswap: bool = False,
                 max_rank: int = 64) -> None:
        self.pipe = pipe
        self.model = model
        self._resolve = resolve
        self.max_entries = max(max_entries, MAX_LORAS_PER_JOB)
        self.max_bytes = max_bytes
        self.hotswap = hotswap
        self._entries: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._active: LoraSet | None = ()
        self._counter = 0
        self.stats = AdapterStats()
        self.denoiser = next((n for n in _DENOISERS if getattr(pipe, n, None) is not None),
                             None)
        self.max_rank = max_rank
        if hotswap:
            self._make_slots(max_rank)

    # -- the LRU ---------------------------------------------------------------------

    def loaded(self) -> list[str]:
        return list(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def _get(self, ref: str, pinned: set[str]) -> LoadedAdapter:
        entry = self._entries.get(ref)
        if entry is not None:
            self._entries.move_to_end(ref)
            return entry
        started = time.perf_counter()
        entry = self._load(ref)
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - started
        self._entries[ref] = entry
        while len(self._entries) > self.max_entries or (
                self.nbytes > self.max_bytes and len(self._entries) > 1):
            oldest = next((r for r in self._entries if r not in pinned | {ref}), None)
            if oldest is None:
                break
            self._evict(oldest)
        return entry

    def _evict(self, ref: str) -> None:
        entry = self._entries.pop(ref)
        self.stats.evictions += 1
        log.info("unloading LoRA %s from model %s", ref, self.model)
        self._delete(entry.name)
        if self._active is not None and any(r == ref for r, _ in self._active):
            self._active = None  # whatever was active is no longer what it was

    def _delete(self, name: str) -> None:
        present = {n for names in self.pipe.get_list_adapters().values() for n in names}
        if name in present:
            self.pipe.delete_adapters([name])

    # -- loading ---------------------------------------------------------------------

    def _load(self, ref: str) -> LoadedAdapter:
        location = self._resolve(ref)
        kwargs: dict[str, Any] = {"use_safetensors": True}
        if not Path(location).exists():  # a hub id: the cache, and the hub if reachable
            from worker.engine.engine import hub_reachable

            kwargs["local_files_only"] = not hub_reachable()
        try:
            result = self.pipe.lora_state_dict(location, **kwargs)
        except (OSError, ValueError) as exc:
            raise LoraNotFound(f"LoRA {ref!r} could not be read from {location}: "
                               f"{_first_line(exc)}") from None
        state = result[0] if isinstance(result, tuple) else result
        components = self._check_fits(ref, state)
        self._counter += 1
        name = f"lora{self._counter}"
        slot_weights: dict[str, torch.Tensor] = {}
        try:
            if self.hotswap and self.denoiser in components:
                slot_weights = self._slot_weights(state)
                rest = {k: v for k, v in state.items() if not k.startswith(self.denoiser + ".")}
                if rest:
                    self.pipe.load_lora_weights(rest, adapter_name=name)
                self._check_slot_keys(ref, slot_weights)
            else:
                self.pipe.load_lora_weights(dict(state), adapter_name=name)
        except Exception as exc:
            self._delete(name)
            if isinstance(exc, LoraMismatch):
                raise
            if isinstance(exc, (RuntimeError, ValueError, KeyError)):
                raise LoraMismatch(f"LoRA {ref!r} does not fit model {self.model!r}: "
                                   f"{_first_line(exc)}") from None
            raise
        nbytes = sum(t.numel() * t.element_size() for t in state.values()
                     if isinstance(t, torch.Tensor))
        log.info("loaded LoRA %s on model %s (%s, %d bytes)", ref, self.model,
                 ", ".join(components), nbytes)
        return LoadedAdapter(ref=ref, name=name, nbytes=nbytes, components=components,
                             slot_weights=slot_weights)

    def _check_fits(self, ref: str, state: dict[str, Any]) -> tuple[str, ...]:
        """The components the LoRA has weights for; LoraMismatch when it names a
        component or a layer the base does not have."""
        if not state:
            raise LoraMismatch(f"LoRA {ref!r} has no weights for model {self.model!r}")
        layers: dict[str, set[str]] = {}
        missing: list[str] = []
        for key in state:
            component, _, rest = key.partition(".")
            module = getattr(self.pipe, component, None)
            if not isinstance(module, torch.nn.Module):
                missing.append(key)
                continue
            if component not in layers:
                layers[component] = {n.removeprefix("_orig_mod.")
                                     for n, _ in module.named_modules()}
            if _LORA_SUFFIX.split(rest, maxsplit=1)[0] not in layers[component]:
                missing.append(key)
        if missing:
            raise LoraMismatch(
                f"LoRA {ref!r} does not fit model {self.model!r}: {len(missing)} of its "
                f"{len(state)} weights name layers the model lacks (e.g. {missing[0]!r}); "
                "is it made for another model family?")
        return tuple(sorted(layers))

    # -- activation ------------------------------------------------------------------

    def activate(self, loras: LoraSet) -> None:
        """Make ``loras`` (with their scales) the active adapters; none: base only."""
        if loras == self._active:
            return
        pinned = {ref for ref, _ in loras}
        self._active = None  # until this set is fully on (a failed load changes layers)
        entries = [(self._get(ref, pinned), scale) for ref, scale in loras]
        for component in self._components():
            if self.hotswap and component == self.denoiser:
                continue
            names = [e.name for e, _ in entries if component in e.components]
            scales = [s for e, s in entries if component in e.components]
            _set_active(getattr(self.pipe, component), names, scales)
        if self.hotswap:
            self._fill_slots([(e, s) for e, s in entries if self.denoiser in e.components])
        self._active = loras
        self.stats.swaps += 1

    def _components(self) -> list[str]:
        return [name for name in getattr(self.pipe, "_lora_loadable_modules", _DENOISERS)
                if isinstance(getattr(self.pipe, name, None), torch.nn.Module)]

    # -- hot-swap slots --------------------------------------------------------------

    def _make_slots(self, rank: int) -> None:
        """Zero adapters on every linear layer of the denoiser's attention blocks, made
        before compiling so swapping weights in later never changes the graph."""
        denoiser = getattr(self.pipe, self.denoiser or "", None)
        if denoiser is None:
            raise LoraMismatch(f"model {self.model!r} has no UNet or transformer for LoRA "
                               "slots")
        denoiser.enable_lora_hotswap(target_rank=rank)
        state = {}
        for name, module in denoiser.named_modules():
            if isinstance(module, torch.nn.Linear) and _in_attention(name):
                state[f"{name}.lora_A.weight"] = torch.zeros(
                    rank, module.in_features, dtype=module.weight.dtype)
                state[f"{name}.lora_B.weight"] = torch.zeros(
                    module.out_features, rank, dtype=module.weight.dtype)
        slots = [f"{SLOT_PREFIX}{slot}" for slot in range(MAX_LORAS_PER_JOB)]
        for slot in slots:
            denoiser.load_lora_adapter(dict(state), prefix=None, adapter_name=slot)
        _all_slots_on(denoiser, slots)
        self._slot_keys = set(state)

    def _slot_weights(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The denoiser's part of a LoRA, on the denoiser's device and dtype."""
        denoiser = getattr(self.pipe, self.denoiser)
        weight = next(denoiser.parameters())
        prefix = self.denoiser + "."
        return {k.removeprefix(prefix): v.to(weight.device, weight.dtype)
                for k, v in state.items() if k.startswith(prefix)}

    def _check_slot_keys(self, ref: str, weights: dict[str, torch.Tensor]) -> None:
        outside = sorted(set(weights) - self._slot_keys)
        rank = max((v.shape[0] for k, v in weights.items() if ".lora_A." in k), default=0)
        if rank > self.max_rank:
            raise LoraMismatch(
                f"LoRA {ref!r} has rank {rank}, above the hot-swap slots' rank "
                f"{self.max_rank} on model {self.model!r}; raise IMG2IMG_LORA_MAX_RANK")
        if outside:
            raise LoraMismatch(
                f"LoRA {ref!r} does not fit the hot-swap slots of model {self.model!r}: it "
                f"has weights outside the attention blocks' linear layers (e.g. "
                f"{outside[0]!r}); run it without IMG2IMG_COMPILE")

    def _fill_slots(self, entries: list[tuple[LoadedAdapter, float]]) -> None:
        denoiser = getattr(self.pipe, self.denoiser)
        for slot in range(MAX_LORAS_PER_JOB):
            name = f"{SLOT_PREFIX}{slot}"
            if slot < len(entries):
                entry, scale = entries[slot]
                weights = {k: (v * scale if ".lora_B." in k else v)
                           for k, v in entry.slot_weights.items()}
                denoiser.load_lora_adapter(weights, prefix=None, adapter_name=name,
                                           hotswap=True)
                self.stats.slot_fills += 1
            else:
                _zero_slot(denoiser, name)


def _set_active(module: torch.nn.Module, names: list[str], scales: list[float]) -> None:
    """Turn on exactly ``names`` (at ``scales``) on a component; none: all layers off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        if not names:
            layer.enable_adapters(False)
            continue
        layer.enable_adapters(True)
        layer.set_adapter(names)
        for name, scale in zip(names, scales, strict=True):
            layer.set_scale(name, scale)


def _all_slots_on(module: torch.nn.Module, slots: list[str]) -> None:
    """Every slot active at weight 1, each scaling a tensor: a swap then changes values
    in place, never what the compiled graph was traced with."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        layer.set_adapter(slots)
        for slot, value in list(layer.scaling.items()):
            if not isinstance(value, torch.Tensor):
                layer.scaling[slot] = torch.tensor(value, device=layer.weight.device)


def _zero_slot(module: torch.nn.Module, name: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer) and name in getattr(layer, "lora_B", {}):
                layer.lora_B[name].weight.zero_()
                layer.lora_A[name].weight.zero_()


def _in_attention(name: str) -> bool:
    return "attentions" in name or "transformer_blocks" in name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2])[:400] or type(exc).__name__
