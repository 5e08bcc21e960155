"""Does a generated clip show what its prompt asked for? Scores for the moving-shapes domain.

The domain is `data_pipelines.synthetic`: one shape of one colour on black, moving in a straight
line at constant speed, captioned "a {color} {shape} moving {direction}". Its palette, shapes,
sizes and the renderer itself are imported from there, so the evaluator and the data cannot drift
apart. Per clip and frame the object is found as the largest bright connected region; a frame
counts as *present* only when that region has a plausible size for the domain and holds most of
the frame's bright pixels (noise lights up the whole frame and fails both). From the present
frames:

  colour     majority vote of the frames' nearest palette colour (mean chroma of the region);
  shape      analysis by synthesis: every shape is rendered with the data's own renderer at the
             measured centroids over a grid of radii and blurs (one radius per clip, as in the
             data), fitted to the frames by least squares with a free brightness; the shape that
             explains most of the frames wins, and the share it explains is reported as the
             shape fit (how shape-like the object is). Rendering each shape's sub-pixel coverage
             of the clip's own pixel grid is what makes this work on the 3-8 pixel shapes of
             32x32 clips, where bounding-box fill ratios do not;
  direction  the least-squares constant-velocity fit of the centroid track; a clip that travels
             less than a quarter of the data's shortest path is "static" (never a prompt's answer);
  jitter     trajectory smoothness: the RMS second difference of the centroid track over runs of
             consecutive present frames, in frame widths; 0 for the data's constant-velocity
             motion, large when frames are generated independently (the object jumps);
  background the median brightness of the clip (0 on the domain's black), which a background
             style raises;
  seams      for a clip sampled in windows shorter than itself (MultiDiffusion), given the window
             layout: the seam ratio, the largest centroid step across a window boundary over the
             clip's median step (about 1 for a clip whose windows agree; a jump where the windows
             meet makes it large), and the largest step anywhere over the median (max step ratio).

Stationary motion (`motion='stationary'`, data_pipelines.synthetic --motion) wraps around the
borders: the object is found on the torus (the frame is also read rolled by half a frame along
each axis, so a shape split across a border is whole in one reading) and the centroid track is
unwrapped (a step of more than half a frame is a wrap, not a jump backwards; the domain's speeds are
at most SPEED_RANGE[1]) before direction, jitter and seams are measured.

Clips with no present frame get no colour, shape or direction: they count as wrong, so noise
scores below chance rather than at it. How far each score can be trusted, measured on real clips
clean and degraded: `python -m lumiere_jax.evaluation.validate`.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from data_pipelines.synthetic import (COLORS, DIRECTIONS, MOTIONS, RADIUS_RANGE, SHAPES, TRAVEL_RANGE, is_heldout,
                                      parse_heldout, shape_mask)
from lumiere_jax.diffusion.multidiffusion import check_aggregation, seam_pairs

FOREGROUND_THRESHOLD = 0.5  # of the brightest channel in [0, 1]: every palette colour has a channel at 1
AREA_SLACK = (0.4, 2.0)  # the region's brightness mass may be this far below/above the domain's smallest/largest shape
CORE_MARGIN = 0.02  # the object's position and mass are read this far (frame widths, >= 1 px) around its region
MAX_CLUTTER = 0.5  # bright mass outside the region, as a fraction of the region's, still allowed
RADIUS_GRID = np.geomspace(0.85 * RADIUS_RANGE[0], 1.15 * RADIUS_RANGE[1], 24)  # shape fits, in frame widths
BLUR_GRID = (0.0, 0.015, 0.03, 0.045, 0.06)  # Gaussian blurs of the fitted templates, in frame widths
MIN_TRAVEL = 0.25 * TRAVEL_RANGE[0] * (1.0 - 2.0 * RADIUS_RANGE[1])  # shortest path in the data, quartered
PALETTE = np.array(list(COLORS.values()), np.float32) / 255.0
MIN_STEP_PX = 1.0  # the median step's floor in seam ratios (below)
_PROMPT = re.compile(r"a (\w+) (\w+) moving (\w+)")


@dataclasses.dataclass(frozen=True)
class Target:
    """What a prompt asks for."""

    color: str
    shape: str
    direction: str

    @property
    def key(self) -> str:
        """'red:circle:left', the syntax of data_pipelines.synthetic --heldout."""
        return f"{self.color}:{self.shape}:{self.direction}"


def parse_prompt(prompt: str) -> Target:
    """'a red circle moving left' -> Target; ValueError naming the part that is not in the domain."""
    match = _PROMPT.fullmatch(" ".join(str(prompt).lower().split()))
    if match is None:
        raise ValueError(f"prompt {prompt!r} is not of the form 'a {{color}} {{shape}} moving {{direction}}'")
    target = Target(*match.groups())
    for value, allowed, what in ((target.color, COLORS, "colour"), (target.shape, SHAPES, "shape"),
                                 (target.direction, DIRECTIONS, "direction")):
        if value not in allowed:
            raise ValueError(f"prompt {prompt!r}: {what} {value!r} is not one of {sorted(allowed)}")
    return target


def to_unit_range(clips) -> np.ndarray:
    """uint8 [0, 255] or float [-1, 1] clips (N, T, H, W, 3) -> float32 [0, 1]; clear errors otherwise."""
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips must be (N, T, H, W, 3) RGB, got shape {clips.shape}")
    n, t, h, w, _ = clips.shape
    if h != w or h < 8:
        raise ValueError(f"clips must have square frames of at least 8x8 like the synthetic domain, got {h}x{w}")
    if t < 2:
        raise ValueError(f"clips need at least 2 frames to show motion, got {t}")
    if clips.dtype == np.uint8:
        return clips.astype(np.float32) / 255.0
    if not np.issubdtype(clips.dtype, np.floating):
        raise ValueError(f"clips must be uint8 or float in [-1, 1], got dtype {clips.dtype}")
    if not np.all(np.isfinite(clips)):
        raise ValueError("clips hold NaN or infinite values")
    low, high = float(clips.min()), float(clips.max())
    if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
        raise ValueError(f"float clips must lie in [-1, 1] (the model's range), got [{low:.3g}, {high:.3g}]; "
                         "pass uint8 frames for [0, 255] data")
    return ((np.clip(clips, -1.0, 1.0) + 1.0) / 2.0).astype(np.float32)


@functools.cache
def area_bounds() -> tuple[float, float]:
    """Plausible object mass per frame, as a fraction of the frame: the domain's smallest and
    largest shapes (measured with its renderer on a fine grid), widened by AREA_SLACK."""
    fine = 512
    areas = [shape_mask(s, fine, fine / 2, fine / 2, r * fine).mean() for s in SHAPES for r in RADIUS_RANGE]
    return AREA_SLACK[0] * min(areas), AREA_SLACK[1] * max(areas)


@dataclasses.dataclass
class Frame:
    """The object found in one frame: its brightness weights (zero beyond the grown region), where
    it is, its nearest palette colour, and whether it passes for the domain's object."""

    weights: np.ndarray  # (H, W)
    centroid: np.ndarray  # (x, y) in pixels, pixel centres at k + 0.5
    color: int  # index into COLORS
    present: bool
    mass: float = 0.0  # brightness mass around the region, in pixels
    offset: tuple = (0, 0)  # (x, y) pixels the frame was rolled by before reading (torus): weights and
    # centroid are in the rolled frame; the object's place in the frame is centroid - offset (mod size)


def find_object(frame: np.ndarray) -> Optional[Frame]:
    """frame: (H, W, 3) in [0, 1]. None when nothing stands out: no bright pixel, or no mass above
    the background level.

    Weights are the brightness above the background level (the frame's median: the object covers
    a small part of it) over the region grown by three times the largest fitted blur, so that a
    blurred object keeps its tails; pixels farther away, including other bright regions, weigh 0.
    """
    size = frame.shape[0]
    brightness = frame.max(axis=-1)
    bright = brightness > FOREGROUND_THRESHOLD
    labels, count = ndimage.label(bright, structure=np.ones((3, 3)))
    if count == 0:
        return None
    masses = ndimage.sum(brightness, labels, index=np.arange(1, count + 1))
    region = labels == 1 + int(np.argmax(masses))
    grown = ndimage.binary_dilation(region, iterations=int(np.ceil(3 * BLUR_GRID[-1] * size)) + 1)
    weights = np.where(grown, brightness - np.median(brightness), 0.0)
    # Position and mass come from the region grown by a little: the wide margin holds mostly noise.
    core = np.where(ndimage.binary_dilation(region, iterations=int(np.ceil(CORE_MARGIN * size))), weights, 0.0)
    mass = core.sum()
    if mass <= 0:
        return None
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    # Weights below the background level are negative, so a faint region among brighter noise can put
    # the weighted mean outside the frame; it is kept on the frame (the shape fits crop around it).
    centroid = np.clip(np.array([(core * xs).sum(), (core * ys).sum()]) / mass, 0.0, size - 1e-3)
    chroma = (frame[region] * brightness[region, None]).sum(0)
    chroma /= chroma.max()
    color = int(np.argmin(((PALETTE - chroma) ** 2).sum(-1)))
    low, high = area_bounds()
    clutter = brightness[bright & ~grown].sum()
    present = low <= mass / size**2 <= high and clutter <= MAX_CLUTTER * mass
    return Frame(weights, centroid, color, bool(present), float(mass))


def find_object_on_torus(frame: np.ndarray) -> Optional[Frame]:
    """`find_object` for a frame whose borders wrap around: read as it is and rolled by half a frame
    along x and along y, keeping the reading that finds a present object with the most mass (a shape
    split across a border is whole in one of them; its across-motion coordinate stays inside)."""
    half = frame.shape[0] // 2
    readings = []
    for offset in ((0, 0), (half, 0), (0, half)):
        found = find_object(np.roll(frame, (offset[1], offset[0]), axis=(0, 1)))
        if found is not None:
            readings.append(dataclasses.replace(found, offset=offset))
    return max(readings, key=lambda f: (f.present, f.mass), default=None)


def position_of(found: Frame, size: int) -> np.ndarray:
    """The object's (x, y) in frame widths in the unrolled frame."""
    return np.mod(found.centroid - np.asarray(found.offset), size) / size


def unwrap_track(positions: np.ndarray) -> np.ndarray:
    """(F, 2) positions on the torus (frame widths) -> a continuous track: every step between
    consecutive entries is taken as its shortest form modulo one frame width."""
    steps = np.diff(positions, axis=0)
    steps -= np.round(steps)
    return np.concatenate([positions[:1], positions[:1] + np.cumsum(steps, axis=0)])


def seam_measures(centroids: Sequence, pairs: Sequence[int], size: int, wrap: bool) -> Optional[dict]:
    """Seam ratio and max step ratio of a centroid track (per frame (x, y) in frame widths or None),
    over the steps between consecutive present frames; `pairs`: frames f whose step to f + 1 crosses
    a window boundary. None when no boundary step has both frames present. The median step is
    floored at MIN_STEP_PX: the renderer draws whole pixels, so at the domain's sub-pixel speeds a
    true track steps 0 or 1 px (median 0 or 1); one pixel keeps a clean clip at a ratio of 1 or less
    and a still object's noise from making any jump look huge."""
    steps = {}
    for f in range(len(centroids) - 1):
        if centroids[f] is not None and centroids[f + 1] is not None:
            step = np.subtract(centroids[f + 1], centroids[f])
            steps[f] = float(np.hypot(*(step - np.round(step) if wrap else step)))
    at_seams = [steps[f] for f in pairs if f in steps]
    if not at_seams:
        return None
    median = max(float(np.median(list(steps.values()))), MIN_STEP_PX / size)
    return {"seam_ratio": max(at_seams) / median, "max_step_ratio": max(steps.values()) / median,
            "seam_jump": max(at_seams), "median_step": median}


def _crops(weights: np.ndarray, centroids: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(F, 2h+1, 2h+1) windows of the weight maps around each centroid's pixel, and each window's
    top-left corner in pixels; the maps are zero-padded so windows may cross the border."""
    padded = np.pad(weights, ((0, 0), (half, half), (half, half)))
    corners = np.floor(centroids).astype(int) - half
    side = 2 * half + 1
    crops = np.stack([p[y + half:y + half + side, x + half:x + half + side]
                      for p, (x, y) in zip(padded, corners)])
    return crops, corners


def shape_fits(weights: np.ndarray, centroids: np.ndarray) -> list[dict]:
    """Per shape of SHAPES, its best fit to the present frames: 'explained' (the share of the
    weight maps' energy it explains, 0..1), 'radius' and 'blur' (frame widths).

    weights: (F, H, W); centroids: (F, 2) pixels. Per shape, the templates are the data's renderer
    at each frame's centroid for every radius of RADIUS_GRID (area-averaged over a supersampled
    grid, then blurred by each of BLUR_GRID), scaled per frame by the least-squares brightness.
    The explained energy <w, t>^2 / <t, t> (the weights' energy minus the fit's residual) is
    summed over frames and maximised over one radius and blur per clip, as the data keeps both.
    """
    size = weights.shape[-1]
    supersample = max(1, int(np.ceil(128 / size)))  # ~constant cost: finer sampling for small frames
    half = int(np.ceil(1.25 * RADIUS_GRID[-1] * size + 2 * BLUR_GRID[-1] * size + 1))
    crops, corners = _crops(weights, centroids, half)
    energy = max(float((crops**2).sum()), 1e-12)
    side = crops.shape[-1]
    centre = (centroids - corners)[:, :, None, None, None] * supersample  # (F, 2, 1, 1, 1)
    radii = (RADIUS_GRID * size * supersample)[None, :, None, None]
    fits = []
    for shape in SHAPES:
        mask = shape_mask(shape, side * supersample, centre[:, 0], centre[:, 1], radii)
        coverage = mask.reshape(*mask.shape[:2], side, supersample, side, supersample).mean((3, 5))
        best = {"explained": 0.0, "radius": None, "blur": None}
        for blur in BLUR_GRID:
            templates = ndimage.gaussian_filter(coverage, (0, 0, blur * size, blur * size)) if blur else coverage
            dot = np.maximum(np.einsum("fhw,frhw->fr", crops, templates), 0.0)
            explained = (dot**2 / np.maximum((templates**2).sum((-2, -1)), 1e-12)).sum(0) / energy
            if explained.max() > best["explained"]:
                best = {"explained": float(explained.max()), "radius": float(RADIUS_GRID[explained.argmax()]),
                        "blur": blur}
        fits.append(best)
    return fits


def fit_direction(times: np.ndarray, positions: np.ndarray, num_frames: int) -> tuple[str, np.ndarray]:
    """Least-squares constant-velocity fit of (x, y) positions in frame widths at frame `times`
    (at least two): the travel over the whole clip at that velocity, and the direction whose unit
    vector best matches it ("static" when it is shorter than MIN_TRAVEL)."""
    times = times - times.mean()
    velocity = (times[:, None] * (positions - positions.mean(0))).sum(0) / (times**2).sum()
    travel = velocity * (num_frames - 1)
    if np.hypot(*travel) < MIN_TRAVEL:
        return "static", travel
    names = list(DIRECTIONS)
    return names[int(np.argmax([np.dot(travel, DIRECTIONS[d]) for d in names]))], travel


def track_jitter(times: np.ndarray, positions: np.ndarray) -> Optional[float]:
    """RMS second difference of the track over triples of consecutive frames (None without one)."""
    consecutive = (times[2:] - times[:-2]) == 2
    if not consecutive.any():
        return None
    second = positions[2:] - 2 * positions[1:-1] + positions[:-2]
    return float(np.sqrt((second[consecutive] ** 2).sum(-1).mean()))


def analyze_clip(clip: np.ndarray, wrap: bool = False) -> dict:
    """clip: (T, H, W, 3) in [0, 1] -> what it shows: colour, shape (and its `shape_fits` entry:
    how well it explains the object, at what radius and blur), direction, travel ((x, y) over the
    clip, in frame widths), jitter, presence (fraction of frames) and per-frame centroids
    (normalised (x, y), None where no object is present). `wrap`: the borders wrap around
    (stationary motion): the object is found on the torus and its track unwrapped."""
    size = clip.shape[1]
    frames = [(find_object_on_torus if wrap else find_object)(f) for f in clip]
    present = [i for i, f in enumerate(frames) if f is not None and f.present]
    found = [frames[i] for i in present]
    result = {"color": None, "shape": None, "shape_fit": None, "direction": None, "travel": None,
              "jitter": None, "presence": len(present) / len(frames), "centroids": [None] * len(frames),
              "background": float(np.median(clip.max(axis=-1)))}
    if not found:
        return result
    positions = np.stack([position_of(f, size) for f in found])
    for i, position in zip(present, positions):
        result["centroids"][i] = [round(float(v), 5) for v in position]
    result["color"] = list(COLORS)[int(np.bincount([f.color for f in found], minlength=len(COLORS)).argmax())]
    fits = shape_fits(np.stack([f.weights for f in found]), np.stack([f.centroid for f in found]))
    best = int(np.argmax([fit["explained"] for fit in fits]))
    result.update(shape=SHAPES[best], shape_fit=fits[best])
    if len(found) >= 2:
        times = np.array(present)
        track = unwrap_track(positions) if wrap else positions
        direction, travel = fit_direction(times.astype(np.float64), track, len(frames))
        result.update(direction=direction, travel=[float(v) for v in travel], jitter=track_jitter(times, track))
    return result


def check_motion(motion: str) -> str:
    if motion not in MOTIONS:
        raise ValueError(f"motion {motion!r} (eval.motion) is not one of {MOTIONS}, the --motion of "
                         "data_pipelines.synthetic")
    return motion


def check_layout(layout: Optional[dict]) -> Optional[dict]:
    """A window layout {'window', 'overlap', 'aggregation'} (the sampling job's samples.json 'windows')."""
    if layout is None:
        return None
    missing = {"window", "overlap", "aggregation"} - set(layout)
    if missing:
        raise ValueError(f"window layout {layout} lacks {sorted(missing)}: give window, overlap and aggregation "
                         "(what --mode=sample wrote under samples.json's 'windows')")
    check_aggregation(layout["aggregation"])
    return layout


def clip_seams(found: dict, size: int, layout: Optional[dict], wrap: bool) -> dict:
    """{'seams': seam_measures} for a clip longer than the layout's window; {} otherwise."""
    frames = len(found["centroids"])
    if layout is None or frames <= layout["window"]:
        return {}
    pairs = seam_pairs(frames, layout["window"], layout["overlap"], layout["aggregation"])
    return {"seams": seam_measures(found["centroids"], pairs, size, wrap)}


def score_clip(clip: np.ndarray, prompt: str, motion: str = "traverse", layout: Optional[dict] = None) -> dict:
    """One clip ((T, H, W, 3) in [0, 1]) against its prompt: the analysis, the target and what is
    right; with a window `layout` (`check_layout`) and a clip longer than its window, its seams."""
    target = parse_prompt(prompt)
    wrap = check_motion(motion) == "stationary"
    found = analyze_clip(clip, wrap)
    return {"prompt": prompt, "target": dataclasses.asdict(target), **found,
            "present_frames": sum(c is not None for c in found["centroids"]), "frames": len(found["centroids"]),
            "correct": {k: found[k] == getattr(target, k) for k in ("color", "shape", "direction")},
            **clip_seams(found, clip.shape[1], check_layout(layout), wrap)}


def aggregate(records: Sequence[dict]) -> dict:
    """Accuracies over clips, presence over frames, jitter averaged over the clips that have one."""
    jitters = [r["jitter"] for r in records if r["jitter"] is not None]
    scores = {"num_clips": len(records)}
    for what in ("color", "shape", "direction"):
        scores[f"{what}_accuracy"] = float(np.mean([r["correct"][what] for r in records]))
    scores["presence_rate"] = sum(r["present_frames"] for r in records) / sum(r["frames"] for r in records)
    scores["trajectory_jitter"] = float(np.mean(jitters)) if jitters else None
    scores["clips_with_jitter"] = len(jitters)
    # The brightness the object stands on (0 for the domain's black; what a background style changes).
    scores["background_level"] = float(np.mean([r["background"] for r in records]))
    fits = [r["shape_fit"]["explained"] for r in records if r["shape_fit"] is not None]
    scores["shape_fit"] = float(np.mean(fits)) if fits else None  # how shape-like the objects are: 1 = exactly
    seams = [r["seams"] for r in records if r.get("seams")]
    if any("seams" in r for r in records):  # clips longer than their model's window
        for key in ("seam_ratio", "max_step_ratio"):
            scores[key] = float(np.mean([m[key] for m in seams])) if seams else None
        scores["worst_seam_ratio"] = max((m["seam_ratio"] for m in seams), default=None)
        # The typical clip's: a few clips whose object jumps far (two objects, one vanishing) pull the mean.
        scores["median_seam_ratio"] = float(np.median([m["seam_ratio"] for m in seams])) if seams else None
        scores["clips_with_seams"] = len(seams)
    return scores


def split_scores(records: Sequence[dict], heldout: str) -> dict:
    """{'heldout': scores, 'seen': scores} for `heldout` combinations (data_pipelines.synthetic
    --heldout syntax) and the rest; a side with no clips is None. Marks each record's 'heldout'."""
    patterns = parse_heldout(heldout)
    for record in records:
        target = record["target"]
        record["heldout"] = is_heldout((target["color"], target["shape"], target["direction"]), patterns)
    sides = {"heldout": [r for r in records if r["heldout"]], "seen": [r for r in records if not r["heldout"]]}
    return {name: aggregate(group) if group else None for name, group in sides.items()}


def build_report(records: Sequence[dict], heldout: str = "") -> dict:
    """The JSON-able report: overall scores, the same for held-out and seen combinations when
    `heldout` names them, per (colour, shape, direction) combination (keyed 'red:circle:left'),
    chance levels, the evaluator's settings and every clip's record."""
    if not records:
        raise ValueError("no clips to evaluate")
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(Target(**record["target"]).key, []).append(record)
    return {
        "overall": aggregate(records),
        **({"heldout_combinations": heldout, **split_scores(records, heldout)} if heldout else {}),
        "per_combination": {key: aggregate(group) for key, group in sorted(groups.items())},
        "chance": {"color_accuracy": 1 / len(COLORS), "shape_accuracy": 1 / len(SHAPES),
                   "direction_accuracy": 1 / len(DIRECTIONS)},
        "settings": {"foreground_threshold": FOREGROUND_THRESHOLD, "area_bounds": list(area_bounds()),
                     "max_clutter": MAX_CLUTTER, "min_travel": MIN_TRAVEL,
                     "radius_grid": [float(RADIUS_GRID[0]), float(RADIUS_GRID[-1]), len(RADIUS_GRID)],
                     "blur_grid": list(BLUR_GRID)},
        "clips": list(records),
    }


def evaluate_clips(clips, prompts: Sequence[str], progress: bool = True, heldout: str = "",
                   motion: str = "traverse", layout: Optional[dict] = None) -> dict:
    """clips: uint8 or [-1, 1] float (N, T, H, W, 3); prompts: N strings 'a {color} {shape} moving
    {direction}'; `motion` and `layout` as `score_clip`. Returns `build_report` of every clip;
    ValueError for a bad clip array, prompt, motion or layout."""
    parse_heldout(heldout)
    check_motion(motion)
    check_layout(layout)
    clips = to_unit_range(clips)
    if len(prompts) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts")
    for prompt in prompts:
        parse_prompt(prompt)  # every prompt is checked before the slow part
    records = [score_clip(clip, prompt, motion, layout)
               for clip, prompt in tqdm(zip(clips, prompts), total=len(clips), desc="eval", disable=not progress)]
    return build_report(records, heldout)
