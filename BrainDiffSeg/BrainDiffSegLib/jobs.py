"""The engine's jobs as requests: `run_request(request, workspace, progress, cancelled)` -> response.

One function for every place the engine runs a front end's job: the engine service (`BrainDiffSegService.server`),
the Logic's blocking calls in scripts (in process), and a worker thread where a front end's own loop allows one (the
browser annotator). A request (`transfer.EngineRequest`) carries plain values and arrays; the response
(`transfer.EngineResponse`) too, so it can cross a process boundary in the format of `transfer`.

- 'propagate': meta {"options": `options.to_strings` form, optionally "return": the result arrays wanted}, arrays
  {"annotation"}, the images by role in `request.volume` (or already in the workspace under `request.digest`).
  Response arrays: labels (int16), entropy and disagreement (float32), or those of "return"; meta:
  annotated_slices, label_values, timings, device, messages, cache, suggestions (`propagation.suggest.suggestions_of`).
- 'inpaint': meta {"steps", "seed", "model" (a checkpoint folder on the engine's machine, or null for the bundled
  one), "device", optionally "describe" (the volume and segments in words, for messages)}, arrays {"image",
  "mask"}. Response arrays: inpainted (float32); meta: seconds, device.

The workspace keeps the images of the last few volumes (float32) and each one's feature cache
(`cache.VolumeCache`), so that an update after one more painted slice reuses the features of every slice computed
before. A GPU out-of-memory error restarts a propagation on the CPU, with a message in the response.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Callable

import numpy as np

from .errors import InputError
from .transfer import EngineRequest, EngineResponse, images_digest

log = logging.getLogger(__name__)
KINDS = ("propagate", "inpaint")


class Workspace:
    """The volumes kept between jobs (images as float32) with their feature caches; the least recently used volume
    goes when more than `max_volumes` are held. Its methods are thread-safe (the service's uploads and its worker
    share it); a volume's cache serves one job at a time (the service refuses a second job on a busy volume; the
    Logic runs one job at a time)."""

    def __init__(self, max_volumes: int = 1, max_cache_bytes: int | None = None):
        self.max_volumes = max(1, int(max_volumes))
        self.max_cache_bytes = max_cache_bytes
        self._volumes: OrderedDict = OrderedDict()  # digest -> (images, VolumeCache or None)
        self._lock = threading.RLock()

    def __contains__(self, digest) -> bool:
        with self._lock:
            return digest in self._volumes

    def __len__(self) -> int:
        with self._lock:
            return len(self._volumes)

    def put(self, images: dict, digest: str | None = None) -> str:
        """Keep a volume's images (any numeric dtype; kept as float32); returns its digest."""
        if not isinstance(images, dict) or not images:
            raise InputError("The volume has no images: send the sequences by role (t1, t1ce, t2, flair).")
        digest = digest or images_digest(images)
        with self._lock:
            if digest in self._volumes:
                self._volumes.move_to_end(digest)
                return digest
        converted = {r: np.asarray(a, dtype=np.float32) for r, a in images.items()}
        with self._lock:
            self._volumes[digest] = (converted, None)
            while len(self._volumes) > self.max_volumes:
                old, _ = self._volumes.popitem(last=False)
                log.info("workspace: volume %s dropped (at most %d kept)", old[:8], self.max_volumes)
        return digest

    def get(self, digest: str):
        """(images, VolumeCache) of a kept volume; KeyError when it is not kept."""
        from .propagation.cache import DEFAULT_MAX_BYTES, VolumeCache

        with self._lock:
            images, cache = self._volumes[digest]
            if cache is None:
                cache = VolumeCache(self.max_cache_bytes or DEFAULT_MAX_BYTES)
                self._volumes[digest] = (images, cache)
            self._volumes.move_to_end(digest)
            return images, cache

    def drop(self, digest: str) -> bool:
        with self._lock:
            return self._volumes.pop(digest, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._volumes.clear()

    def describe(self) -> dict:
        with self._lock:
            caches = {d[:8]: c.describe() for d, (_, c) in self._volumes.items() if c is not None}
        return {"volumes": len(self._volumes), "cache_bytes": sum(c["bytes"] for c in caches.values()),
                "caches": caches}


def run_request(request: EngineRequest, workspace: Workspace, progress: Callable[[str, float], None] | None = None,
                cancelled: Callable[[], bool] | None = None) -> EngineResponse:
    """Run one request (see the module docstring). Bad requests raise InputError; cancelling, CancelledError."""
    if request.kind == "propagate":
        return _propagate(request, workspace, progress, cancelled)
    if request.kind == "inpaint":
        return _inpaint(request, progress, cancelled)
    raise InputError(f"Unknown job kind {request.kind!r}; use one of {', '.join(KINDS)}.")


def out_of_memory_errors() -> tuple:
    """The exception types of a GPU out of memory (torch.OutOfMemoryError from torch 2.5; torch.cuda's before)."""
    import torch

    return tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


def _propagate(request, workspace, progress, cancelled) -> EngineResponse:
    from .options import from_strings
    from .propagation.propagate import propagate
    from .propagation.suggest import suggestions_of

    options = from_strings(_meta(request, "options", dict))
    annotation = request.arrays.get("annotation")
    if annotation is None:
        raise InputError("The propagation request has no 'annotation' array.")
    digest = request.digest if request.volume is not None else request.meta.get("volume")
    if request.volume is not None:
        workspace.put(request.volume, digest)
    if digest not in workspace:
        raise InputError(f"Volume {str(digest)[:12]} is not loaded: send its images with the request.")
    images, cache = workspace.get(digest)
    messages = []
    try:
        result = propagate(images, annotation, options, progress=progress, cancelled=cancelled, features=cache,
                           images_key=digest)
    except out_of_memory_errors():
        if options.device == "cpu":
            raise
        import torch

        message = ("The GPU ran out of memory; continuing on the CPU (slower). Lower the batch size in the "
                   "advanced settings to stay on the GPU.")
        log.warning(message)
        messages.append(message)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if progress:
            progress(message, 0.0)
        result = propagate(images, annotation, replace(options, device="cpu"), progress=progress,
                           cancelled=cancelled, features=cache, images_key=digest)
    meta = {"annotated_slices": [int(z) for z in result.annotated_slices],
            "label_values": [int(v) for v in result.label_values],
            "timings": {k: float(v) for k, v in result.timings.items()}, "device": result.device,
            "messages": messages + list(result.warnings), "cache": cache.describe(),
            "warnings": list(result.warnings), "annotation_mode": result.annotation_mode,
            "seeded_slices": [int(z) for z in (result.seeded_slices or result.annotated_slices)],
            "suggestions": suggestions_of(result)}  # ranked here, not in the front end's process
    arrays = {"labels": result.labels, "entropy": result.entropy, "disagreement": result.disagreement}
    wanted = request.meta.get("return") or list(arrays)  # what the caller uses (less to send back)
    unknown = [name for name in wanted if name not in arrays]
    if unknown:
        raise InputError(f"Unknown result arrays {unknown}; a propagation returns {', '.join(arrays)}.")
    return EngineResponse(meta, {name: arrays[name] for name in wanted})


def _inpaint(request, progress, cancelled) -> EngineResponse:
    from .device import pick_device
    from .inpainting.inpaint import inpaint_volume

    image, mask = request.arrays.get("image"), request.arrays.get("mask")
    if image is None or mask is None:
        raise InputError("The inpainting request needs the arrays 'image' and 'mask'.")
    steps, seed = _meta(request, "steps", int, 25), _meta(request, "seed", int, 0)
    model = request.meta.get("model") or None
    device = str(request.meta.get("device") or "cpu")
    if device != "cpu":  # 'auto' -> the GPU if torch sees one; a GPU asked for but missing is an InputError
        device = str(pick_device(device))
    t = time.perf_counter()
    describe = request.meta.get("describe")  # what the front end calls the volume and segments, for messages
    try:
        out = inpaint_volume(np.asarray(image, dtype=np.float32), np.asarray(mask, dtype=bool), model=model,
                             steps=steps, seed=seed, progress=progress, cancelled=cancelled, device=device)
    except InputError as exc:
        if describe:
            raise InputError(f"Cannot inpaint {describe}: {exc}.") from exc
        raise
    return EngineResponse({"seconds": time.perf_counter() - t, "device": device},
                          {"inpainted": np.asarray(out, dtype=np.float32)})


def _meta(request, key: str, kind: type, default=None):
    value = request.meta.get(key, default)
    if value is None and default is None:
        raise InputError(f"The {request.kind} request has no '{key}'.")
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"'{key}' of the {request.kind} request must be {kind.__name__}, not {value!r}.")
    return value
