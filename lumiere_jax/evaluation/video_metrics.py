"""`eval.metrics` fvd, is and clip: the field's video scores of a sampling run, at scale.

- fvd: Fréchet distance between I3D (Kinetics-400) features of the run's clips and of a reference
  set (eval.reference). The reference's statistics are computed once and cached beside what they
  were computed from, so a second run (or a sweep over checkpoints) reads them back.
- is: Inception Score of C3D (UCF101) class probabilities over eval.is_splits splits.
- clip: CLIP similarity of each clip's frames with its prompt, averaged over clips.

Every network runs through FeatureExtractor (batched, sharded over the mesh); every clip is cut to
its first eval.num_frames frames, and the report states N, frames and splits, on which FVD and IS
depend.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import pathlib
from typing import Optional

import numpy as np
from tqdm import tqdm

from lumiere_jax.evaluation.feature_pass import FeatureExtractor
from lumiere_jax.evaluation.feature_stats import FeatureStats, load_stats, save_stats
from lumiere_jax.evaluation.network_weights import file_sha256
from lumiere_jax.evaluation.scores import clip_similarity, frechet_distance, inception_score
from lumiere_jax.evaluation.video_sets import VideoSet, batches, clips_of_length, open_video_set
from lumiere_jax.parallel import logical_axis_rules, mesh_from_config

METRICS = ("shapes", "fvd", "is", "clip")
NETWORK_METRICS = ("fvd", "is", "clip")
FVD_FEATURES = ("logits", "pool")
C3D_FRAMES = 16  # C3D's input length: the Inception Score of the UCF101 protocol is defined on 16 frames


def parse_metrics(text: str) -> list[str]:
    """eval.metrics ('shapes,fvd') -> ['shapes', 'fvd']; an unknown name is an error listing the known ones."""
    names = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"eval.metrics={text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; "
                         f"choose from {', '.join(METRICS)} (comma separated)")
    return list(dict.fromkeys(names))


def check_eval_config(e, metrics: list[str]) -> None:
    """Bad values fail before any network is loaded or video decoded."""
    if not isinstance(e.num_frames, int) or e.num_frames < 1:
        raise ValueError(f"eval.num_frames={e.num_frames!r} must be a positive integer")
    if not isinstance(e.batch_size, int) or e.batch_size < 1:
        raise ValueError(f"eval.batch_size={e.batch_size!r} must be a positive integer")
    if "fvd" in metrics and e.fvd_feature not in FVD_FEATURES:
        raise ValueError(f"eval.fvd_feature={e.fvd_feature!r}: choose {' or '.join(FVD_FEATURES)}")
    if "fvd" in metrics and not e.reference and not e.reference_stats:
        raise ValueError("eval.metrics has fvd but neither eval.reference (real videos) nor eval.reference_stats "
                         "is set")
    if "is" in metrics and (not e.c3d_weights or not e.c3d_mean):
        raise ValueError("eval.metrics has is: set eval.c3d_weights (TGAN's conv3d_deepnetA_ucf.npz) and "
                         "eval.c3d_mean (its mean2.npz)")
    if "is" in metrics and e.num_frames != C3D_FRAMES:
        raise ValueError(f"eval.metrics has is, which C3D defines on {C3D_FRAMES} frames; eval.num_frames="
                         f"{e.num_frames}")
    if "clip" in metrics and not e.clip_model:
        raise ValueError("eval.metrics has clip: set eval.clip_model to a Hugging Face CLIP directory")


def _progress(clips, desc: str, progress: bool):
    return tqdm(clips, desc=desc, unit="clip", disable=not progress)


def clip_features(extractor: FeatureExtractor, video_set: VideoSet, key: str, e, desc: str, progress: bool,
              limit: int = 0):
    """Yields (clips, features[key]) batch by batch over the set's first `limit` usable clips (0: all)."""
    clips = clips_of_length(video_set, e.num_frames, video_set)
    if limit:
        clips = itertools.islice(clips, limit)
    for batch in batches(_progress(clips, desc, progress), e.batch_size):
        yield batch, extractor(np.stack([c.frames for c in batch]))[key]


class FVD:
    """I3D features of video sets, their statistics, and the distance between them."""

    def __init__(self, e, mesh, rules):
        from lumiere_jax.evaluation.i3d import preprocess_for_i3d
        from lumiere_jax.evaluation.i3d_weights import load_i3d, resolve_i3d_weights

        path = resolve_i3d_weights(e.i3d_weights or None)
        self.e = e
        self.meta = {"network": "i3d_kinetics400", "weights_sha256": file_sha256(path), "feature": e.fvd_feature,
                     "num_frames": e.num_frames, "resolution": 224}
        self.extractor = FeatureExtractor(load_i3d(path), lambda net, v: net(preprocess_for_i3d(v)), mesh, rules)

    def statistics(self, video_set: VideoSet, desc: str, progress: bool, limit: int = 0) -> FeatureStats:
        stats = None
        for _, features in clip_features(self.extractor, video_set, self.e.fvd_feature, self.e, desc, progress, limit):
            stats = stats or FeatureStats(features.shape[1])
            stats.update(features)
        if stats is None or stats.count < 2:
            reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in video_set.skipped[:3])
            raise ValueError(f"{video_set.description}: fewer than 2 usable clips for FVD ({reasons or 'none found'})")
        return stats

    def reference_cache(self, workdir: pathlib.Path) -> pathlib.Path:
        """Where the reference statistics live: eval.reference_stats, or a name made of the reference
        and everything the statistics depend on (a different setup gets its own file)."""
        if self.e.reference_stats:
            return pathlib.Path(self.e.reference_stats)
        key = json.dumps({**self.meta, "reference": str(pathlib.Path(self.e.reference).absolute()),
                          "max_samples": self.e.num_reference}, sort_keys=True)
        return workdir / "eval_cache" / f"fvd_reference_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"

    def reference_statistics(self, workdir: pathlib.Path, progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
        """(mean, covariance, info) of the reference set, read from the cache when it holds them."""
        path = self.reference_cache(workdir)
        expected = {**self.meta, "max_samples": self.e.num_reference}
        if path.is_file():
            mean, covariance, meta = load_stats(path, expected)
            return mean, covariance, {"num_reference": meta["num_samples"], "stats_file": str(path), "cached": True,
                                      "reference": meta.get("reference"), "skipped": []}
        if not self.e.reference:
            raise FileNotFoundError(f"eval.reference_stats={path} does not exist and no eval.reference is set to "
                                    "compute it from")
        reference = open_video_set(self.e.reference, self.e.num_frames)
        stats = self.statistics(reference, "fvd reference", progress, self.e.num_reference)
        save_stats(path, stats, {**expected, "reference": self.e.reference})
        return stats.mean, stats.covariance, {"num_reference": stats.count, "stats_file": str(path), "cached": False,
                                              "reference": self.e.reference, "skipped": reference.skipped}

    def report(self, generated: VideoSet, workdir: pathlib.Path, progress: bool) -> dict:
        mean_ref, cov_ref, reference = self.reference_statistics(workdir, progress)
        ours = self.statistics(generated, "fvd samples", progress)
        return {"fvd": frechet_distance(ours.mean, ours.covariance, mean_ref, cov_ref), "num_samples": ours.count,
                **self.meta, "reference": reference}


def inception_score_report(e, generated: VideoSet, mesh, rules, progress: bool) -> dict:
    from lumiere_jax.evaluation.c3d import load_c3d, preprocess_for_c3d

    network, mean = load_c3d(e.c3d_weights, e.c3d_mean)
    extractor = FeatureExtractor(network, lambda net, v: {"logits": net(preprocess_for_c3d(v, mean))}, mesh, rules)
    logits = [f for _, f in clip_features(extractor, generated, "logits", e, "is", progress)]
    if not logits:
        raise ValueError(f"{generated.description}: no usable clips for the Inception Score")
    logits = np.concatenate(logits)
    score, std = inception_score(logits, e.is_splits)
    return {"inception_score": score, "std": std, "num_samples": int(logits.shape[0]), "splits": e.is_splits,
            "num_frames": e.num_frames, "network": "c3d_ucf101", "weights_sha256": file_sha256(e.c3d_weights)}


def clip_similarity_report(e, generated: VideoSet, mesh, rules, progress: bool) -> dict:
    from lumiere_jax.evaluation.clip import load_clip, preprocess_for_clip

    model, tokenizer = load_clip(e.clip_model)

    def frame_embeddings(net, videos):
        b, t = videos.shape[:2]
        pixels = preprocess_for_clip(videos.reshape(b * t, *videos.shape[2:]), net.config.vision.image_size)
        return {"image": net.image_features(pixels).reshape(b, t, -1)}

    images = FeatureExtractor(model, frame_embeddings, mesh, rules)
    texts = FeatureExtractor(model, lambda net, ids: {"text": net.text_features(ids)}, mesh, rules)
    scores = []
    for batch, embeddings in clip_features(images, generated, "image", e, "clip", progress):
        text = texts(tokenizer([c.caption for c in batch]))["text"]
        scores += [clip_similarity(frames, t) for frames, t in zip(embeddings, text)]
    if not scores:
        raise ValueError(f"{generated.description}: no usable clips for CLIP similarity")
    return {"clip_similarity": float(np.mean(scores)), "num_samples": len(scores), "num_frames": e.num_frames,
            "network": f"clip {pathlib.Path(e.clip_model).name}"}


def network_metrics(config, generated: VideoSet, workdir: pathlib.Path, metrics: list[str], mesh=None,
                    rules=None, progress: bool = True) -> dict:
    """{metric: report} for the network metrics in `metrics`, on the clips of `generated`."""
    e = config.eval
    mesh = mesh if mesh is not None else mesh_from_config(config.mesh)
    rules = rules if rules is not None else logical_axis_rules(config.mesh.rules)
    reports: dict[str, dict] = {}
    if "fvd" in metrics:
        reports["fvd"] = FVD(e, mesh, rules).report(generated, workdir, progress)
    if "is" in metrics:
        reports["is"] = inception_score_report(e, generated, mesh, rules, progress)
    if "clip" in metrics:
        reports["clip"] = clip_similarity_report(e, generated, mesh, rules, progress)
    return reports


def metrics_table(reports: dict, skipped: Optional[list] = None) -> str:
    """The network metrics as a few lines of text."""
    lines = []
    if "fvd" in reports:
        r = reports["fvd"]
        lines.append(f"FVD {r['fvd']:.2f}  ({r['num_samples']} samples vs {r['reference']['num_reference']} "
                     f"reference clips, {r['num_frames']} frames, I3D {r['feature']})")
    if "is" in reports:
        r = reports["is"]
        lines.append(f"IS  {r['inception_score']:.2f} ± {r['std']:.2f}  ({r['num_samples']} samples, "
                     f"{r['splits']} splits, {r['num_frames']} frames, C3D UCF101)")
    if "clip" in reports:
        r = reports["clip"]
        lines.append(f"CLIP similarity {r['clip_similarity']:.2f}  ({r['num_samples']} samples, "
                     f"{r['num_frames']} frames, {r['network']})")
    if skipped:
        lines.append(f"skipped {len(skipped)} generated clips (reasons in the report)")
    return "\n".join(lines)
