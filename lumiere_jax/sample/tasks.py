"""The conditional tasks of Lumiere section 4 as sampling requests: files in, ⟨C, M⟩ out.

`sample.task` picks one of TASKS; every prompt is a request with the same `sample.input`,
`sample.mask` and `sample.outpaint`, or `sample.tasks_file` (JSON Lines) gives each request its own
`{"prompt", "input", "mask", "outpaint", "negative_prompt"}`. Per request this module reads the files once
(`lumiere_jax.sample.inputs`) and builds, at any frame size (the base model's, and the SSR
output's for pasting the known pixels back after super-resolution), the clip the known pixels come
from and the known mask (1 = known), which `lumiere_jax.sample.masks.known_input` turns into the
model's 4 extra channels:

  t2v          nothing known;
  i2v          an image (sample.input) on frame 0;
  inpaint      a video (sample.input) known outside the region of sample.mask (white = generate);
  outpaint     a video placed inside the frame with sample.outpaint's border ("top,right,bottom,left"
               or one number, in pixels of the model's frame; "fit": the video's own aspect ratio,
               centred), the border generated;
  cinemagraph  an image (sample.input) on every frame, known on frame 0 and outside the region of
               sample.mask (white = the part that moves);
  edit         a video (sample.input) that SDEdit starts from (noised to sample.strength of the way,
               then denoised with the prompt): nothing is known, the clip is the starting point.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Optional

import numpy as np

from lumiere_jax.sample import inputs

TASKS = ("t2v", "i2v", "inpaint", "outpaint", "cinemagraph", "edit")
IMAGE_TASKS = ("i2v", "cinemagraph")
MASK_TASKS = ("inpaint", "cinemagraph")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"sample.task={task!r} is not a task; choose one of {', '.join(TASKS)}")
    return task


@dataclasses.dataclass(frozen=True)
class Request:
    """One clip to sample: its prompt and the files (or specs) its task reads."""

    prompt: str
    input: str = ""
    mask: str = ""
    outpaint: str = ""
    negative_prompt: str = ""  # guidance moves away from it (for an edit: what the input shows)


def load_requests(sample, prompts: Optional[list[str]]) -> list[Request]:
    """The job's requests: sample.tasks_file's lines, or every prompt with sample.input/mask/outpaint."""
    task = check_task(sample.task)
    if sample.tasks_file:
        path = pathlib.Path(sample.tasks_file)
        if not path.is_file():
            raise FileNotFoundError(f"sample.tasks_file {path} does not exist")
        requests = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                requests.append(Request(**{k: str(v) for k, v in row.items()}))
            except (json.JSONDecodeError, TypeError, AttributeError) as e:
                raise ValueError(f"sample.tasks_file {path} line {number} is not a JSON object with keys "
                                 f"prompt, input, mask, outpaint: {e}") from None
        if not requests:
            raise ValueError(f"sample.tasks_file {path} holds no requests")
    else:
        requests = [Request(p, sample.input, sample.mask, sample.outpaint, sample.negative_prompt) for p in prompts]
    for request in requests:
        _check_request(task, request)
    return requests


def _check_request(task: str, request: Request) -> None:
    if not request.prompt.strip():
        raise ValueError(f"a request of sample.task={task!r} has an empty prompt")
    if task == "t2v" and (request.input or request.mask or request.outpaint):
        raise ValueError("sample.input / mask / outpaint are set but sample.task='t2v' reads none of them: "
                         f"choose the task they are for ({', '.join(TASKS[1:])})")
    if task != "t2v" and not request.input:
        kind = "an image" if task in IMAGE_TASKS else "a video"
        raise ValueError(f"sample.task={task!r} needs sample.input: {kind}")
    if task in MASK_TASKS and not request.mask:
        raise ValueError(f"sample.task={task!r} needs sample.mask: a box 'x0,y0,x1,y1[,t0,t1]', an image, a folder "
                         "of one image per frame, or an .npz with 'mask' (white / true = the region to generate)")
    if task == "outpaint" and not request.outpaint:
        raise ValueError("sample.task='outpaint' needs sample.outpaint: 'top,right,bottom,left' pixels, one "
                         "number for every side, or 'fit'")


@dataclasses.dataclass
class LoadedRequest:
    """A request with its input read: PIL frames (1 for an image) and the files' hashes."""

    request: Request
    frames: list
    source_size: tuple[int, int]
    files: list[dict]
    source: dict


def load_inputs(task: str, request: Request, num_frames: int, fps: float) -> LoadedRequest:
    if task == "t2v":
        return LoadedRequest(request, [], (0, 0), [], {})
    if task in IMAGE_TASKS:
        image = inputs.open_image(request.input, "sample.input image").convert("RGB")
        frames, source = [image], {"source_size": list(image.size)}
    else:
        frames, source = inputs.read_video(request.input, num_frames, fps)
    files = [{"role": "input", "path": request.input, "sha256": inputs.sha256(pathlib.Path(request.input))}]
    if request.mask and inputs.parse_box(request.mask) is None:
        files.append({"role": "mask", "path": request.mask, "sha256": inputs.sha256(pathlib.Path(request.mask))})
    return LoadedRequest(request, frames, frames[0].size, files, source)


def outpaint_border(spec: str, source_size: tuple[int, int], size: int, scale: float) -> tuple[int, int, int, int]:
    """(top, right, bottom, left) pixels of a size x size frame from sample.outpaint."""
    if spec == "fit":
        w, h = source_size
        inner_w, inner_h = (size, round(size * h / w)) if w >= h else (round(size * w / h), size)
        top, left = (size - inner_h) // 2, (size - inner_w) // 2
        border = (top, size - inner_w - left, size - inner_h - top, left)
    else:
        try:
            values = [float(v) for v in spec.split(",")]
        except ValueError:
            values = []
        if len(values) not in (1, 4) or any(v < 0 for v in values):
            raise ValueError(f"sample.outpaint={spec!r} must be 'top,right,bottom,left' (pixels >= 0 of the model's "
                             "frame), one number for every side, or 'fit'")
        values = values * 4 if len(values) == 1 else values
        border = tuple(int(round(v * scale)) for v in values)
    top, right, bottom, left = border
    if top + bottom >= size or left + right >= size:
        raise ValueError(f"sample.outpaint={spec!r} leaves no room for the input in a {size}x{size} frame")
    if not any(border):
        raise ValueError(f"sample.outpaint={spec!r} adds no border (the input {source_size[0]}x{source_size[1]} "
                         "already fills the frame): nothing to outpaint")
    return border


def build_known(task: str, loaded: LoadedRequest, size: int, num_frames: int, scale: float = 1.0):
    """(clip (T, size, size, 3) float in [-1, 1], known (T, size, size) bool, fit info) for a request.

    `scale` is size / the base model's frame size: box masks and outpaint borders are given in the
    base model's pixels. Errors for masks that leave nothing to generate or nothing known.
    """
    request = loaded.request
    clip = np.zeros((num_frames, size, size, 3), np.float32)
    known = np.zeros((num_frames, size, size), bool)
    info: dict = {}
    if task == "t2v":
        return clip, known, info
    if task in IMAGE_TASKS:
        image = _unit(inputs.fit_image(loaded.frames[0], size, size))
        info["input"] = inputs.describe_fit(loaded.source_size, size, size)
        if task == "i2v":
            clip[0], known[0] = image, True
        else:
            region = _region(request.mask, loaded, size, num_frames, scale).any(0)
            clip[:] = image
            known[:] = ~region
            known[0] = True
    elif task in ("inpaint", "edit"):
        clip[:] = [_unit(inputs.fit_image(f, size, size)) for f in loaded.frames]
        info["input"] = inputs.describe_fit(loaded.source_size, size, size)
        if task == "inpaint":
            known = ~_region(request.mask, loaded, size, num_frames, scale)
    else:  # outpaint
        top, right, bottom, left = outpaint_border(request.outpaint, loaded.source_size, size, scale)
        inner_w, inner_h = size - left - right, size - top - bottom
        for t, frame in enumerate(loaded.frames):
            clip[t, top:top + inner_h, left:left + inner_w] = _unit(inputs.fit_image(frame, inner_w, inner_h))
        known[:, top:top + inner_h, left:left + inner_w] = True
        info["input"] = inputs.describe_fit(loaded.source_size, inner_w, inner_h)
        info["border_top_right_bottom_left"] = [top, right, bottom, left]
    info["known_fraction"] = round(float(known.mean()), 4)
    return clip, known, info


def _region(spec: str, loaded: LoadedRequest, size: int, num_frames: int, scale: float) -> np.ndarray:
    """The region to generate, checked to be neither empty nor everything."""
    region = inputs.read_mask(spec, loaded.source_size, size, size, num_frames, scale)
    if not region.any():
        raise ValueError(f"sample.mask {spec!r} marks no pixel to generate (white / true = generate): "
                         "the output would be the input")
    if region.all():
        raise ValueError(f"sample.mask {spec!r} marks every pixel of every frame: nothing is known, "
                         "so this is text-to-video (sample.task='t2v')")
    return region


def _unit(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) / 127.5 - 1.0
