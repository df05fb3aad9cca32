"""``avatarcam``: the command line. Parses flags, builds the stages, runs the live loop.

Errors the user can fix are printed as one line on stderr with a non-zero exit code.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import signal
import sys
from pathlib import Path
from typing import Sequence

from avatarcam.errors import AvatarcamError, one_line

log = logging.getLogger("avatarcam")

DEFAULT_SIZE = (1280, 720)
DEFAULT_FPS = 30.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
FITS = ("crop", "letterbox")
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}") from None
    if not (16 <= w <= 7680 and 16 <= h <= 4320):
        raise argparse.ArgumentTypeError(f"size {w}x{h} is out of range (16x16 to 7680x4320)")
    return w, h


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other avatarcam error
        self.exit(2, f"{self.prog}: error: {message} (see avatarcam --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from avatarcam.app import HOTKEYS

    keys = "\n".join(f"  {k}  {text}" for k, _, text in HOTKEYS)
    p = _Parser(
        prog="avatarcam",
        description="Drive a portrait with your webcam and send it to a virtual camera that Zoom, Meet "
                    "or OBS can pick (named after the virtual camera device, e.g. 'avatarcam').",
        epilog=f"preview window hotkeys:\n{keys}\n\nexamples:\n"
               "  avatarcam --face monalisa.jpg                      live, to the virtual camera\n"
               "  avatarcam --face monalisa.jpg --preview --no-virtual-cam\n"
               "  avatarcam --face me1.jpg --face me2.jpg            several photos of one person\n"
               "  avatarcam --face monalisa.jpg --input talk.mp4 --output mona.mp4\n\n"
               "commands:\n"
               "  avatarcam doctor                                   what is installed, what is missing, how to fix it\n"
               "  avatarcam prepare --avatars ~/avatars              prepare and cache avatars ahead of time",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--face", action="append", default=[], metavar="IMG",
                   help="portrait to animate (JPEG/PNG/WebP); repeat with more photos of the same person to combine them")
    p.add_argument("--avatars", metavar="DIR",
                   help="folder of further avatars to switch between with [ and ]: each image is one avatar, "
                        "each sub-folder of images one person")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", metavar="N|PATH",
                     help="webcam index or device path (default 0)")
    src.add_argument("--input", metavar="VIDEO",
                     help="drive from a video file (or an image) instead of the webcam")
    p.add_argument("--camera-size", type=parse_size, default=(640, 480), metavar="WxH",
                   help="resolution asked of the webcam (default 640x480: enough for tracking, cheap to decode)")
    p.add_argument("--output", metavar="FILE",
                   help="also write the avatar video to FILE (.mp4 or .y4m); with --input, every input frame "
                        "is rendered and avatarcam exits at the end")
    p.add_argument("--size", type=parse_size, metavar="WxH",
                   help=f"output size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}; with --output, the face image's own size)")
    p.add_argument("--fps", type=positive(float), metavar="N",
                   help="frame rate asked of the webcam and the virtual camera (default 30; a video file keeps its own)")
    vc = p.add_mutually_exclusive_group()
    vc.add_argument("--no-virtual-cam", dest="virtual_cam", action="store_false", default=None,
                    help="do not open a virtual camera (default: open one unless --output is given)")
    vc.add_argument("--virtual-cam", dest="virtual_cam", action="store_true",
                    help="open the virtual camera even when writing --output")
    p.add_argument("--vcam-backend", metavar="NAME", help="pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    p.add_argument("--vcam-device", metavar="DEV", help="virtual camera device, e.g. /dev/video10")
    p.add_argument("--vcam-name", metavar="NAME",
                   help="use the virtual camera with this name (on Linux the v4l2loopback card_label, e.g. avatarcam)")
    p.add_argument("--fit", choices=FITS, default="crop",
                   help="how the portrait fills the --size format: crop (default: zoomed on the face, filling the "
                        "frame) or letterbox (the whole portrait, black bars); the face is never stretched")
    p.add_argument("--preview", action="store_true", help="show a preview window with hotkeys")
    p.add_argument("--mirror", action="store_true", help="mirror the webcam image, so the avatar moves like a mirror image")
    p.add_argument("--engine", default="warp", help="renderer (default warp: mesh warp on the CPU)")
    p.add_argument("--model", metavar="DIR", help="--engine neural: exported model folder (default: one in the user data dir)")
    p.add_argument("--max-frames", type=positive(int), metavar="N", help="stop after N frames")
    p.add_argument("--cache-dir", metavar="DIR", help="where prepared avatars are cached (default: the user cache dir)")
    p.add_argument("-v", "--verbose", action="store_true", help="print progress and a summary (same as --log-level info)")
    _add_common(p)
    return p


def _add_common(p: argparse.ArgumentParser) -> None:
    """Flags every avatarcam command has."""
    p.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, metavar="LEVEL",
                   help=f"how much to print: {', '.join(LOG_LEVELS)} (default warning; -v means info)")
    p.add_argument("--config", metavar="FILE",
                   help="read default flags from this TOML file instead of the user config file "
                        "(~/.config/avatarcam/config.toml on Linux; see avatarcam doctor for its path)")


def _avatar_groups(faces: Sequence[str], avatars_dir: str | None) -> list[list[str]]:
    groups = [list(faces)] if faces else []
    given = len(groups)
    if avatars_dir:
        root = Path(avatars_dir)
        if not root.is_dir():
            raise AvatarcamError(f"--avatars {avatars_dir}: not a folder")
        for entry in sorted(root.iterdir()):
            if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
                groups.append([str(entry)])
            elif entry.is_dir():
                photos = sorted(str(f) for f in entry.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                if photos:
                    groups.append(photos)
        if len(groups) == given:
            raise AvatarcamError(f"--avatars {avatars_dir}: no images (.jpg .png .webp) found")
    if not groups:
        raise AvatarcamError("no face given: pass a portrait with --face IMG")
    return groups


def _vcam_device_named(name: str, sysfs: Path = Path("/sys/class/video4linux")) -> str:
    """The virtual camera device called ``name``: on Linux the /dev/videoN whose
    v4l2loopback card_label is ``name``; elsewhere the name itself (Unity Capture and OBS
    take device names)."""
    if platform.system() != "Linux":
        return name
    for node in sorted(sysfs.glob("video*")):
        try:
            if (node / "name").read_text().strip() == name:
                return f"/dev/{node.name}"
        except OSError:
            continue
    raise AvatarcamError(
        f"no virtual camera named {name!r}; create it with `sudo modprobe v4l2loopback devices=1 video_nr=10 "
        f"card_label={name} exclusive_caps=1` (avatarcam doctor lists the cameras)")


def _group_name(group: Sequence[str]) -> str:
    """An avatar's name before it is prepared: the photo's name, or the person's folder."""
    first = Path(group[0])
    return first.stem if len(group) == 1 else first.parent.name


def run(args: argparse.Namespace) -> int:
    from avatarcam.app import LiveLoop
    from avatarcam.avatar import AvatarCache, prepare_avatar
    from avatarcam.engines import engine_class
    from avatarcam.framing import Framing
    from avatarcam.pipeline import AvatarPipeline, PendingAvatar
    from avatarcam.sinks import PreviewWindow, VideoFileSink, VirtualCameraSink
    from avatarcam.sources import open_source
    from avatarcam.tracking import FaceTracker

    engine_cls = engine_class(args.engine, model_dir=getattr(args, "model", None))
    groups = _avatar_groups(args.face, args.avatars)
    use_vcam = args.virtual_cam if args.virtual_cam is not None else args.output is None
    if args.output:
        out = Path(args.output)
        if out.suffix.lower() not in (".mp4", ".y4m", ".mkv"):
            raise AvatarcamError(f"--output {args.output}: unsupported file type; use .mp4 or .y4m")
        if not out.parent.resolve().is_dir():
            raise AvatarcamError(f"--output {args.output}: folder {out.parent} does not exist")

    cache = AvatarCache(args.cache_dir)

    def prepare(group: list[str]):
        return prepare_avatar(group, engine_version=engine_cls.version, prepare_engine_data=engine_cls.prepare, cache=cache)

    # The first avatar now; the others (--avatars DIR) on a background thread when switched to.
    avatars: list = [prepare(groups[0])]
    avatars += [PendingAvatar(_group_name(g), functools.partial(prepare, g)) for g in groups[1:]]

    size = args.size or (None if args.output else DEFAULT_SIZE)
    fit = getattr(args, "fit", "crop")

    def framing_for(avatar) -> Framing:
        if size is None:
            return Framing.native(avatar.size)
        if fit == "letterbox":
            return Framing.contain(avatar.size, size)
        xy = avatar.landmarks[:, :2]
        box = (*xy.min(axis=0), *xy.max(axis=0))
        return Framing.cover(avatar.size, size, box)

    vcam_device = args.vcam_device
    if use_vcam and not vcam_device and getattr(args, "vcam_name", None):
        vcam_device = _vcam_device_named(args.vcam_name)
    camera = args.camera if args.camera is not None else "0"
    # A still image as driver: one frame into a file, or held for as long as a live run lasts.
    source = open_source(args.input if args.input else camera, size=args.camera_size if args.input is None else None,
                         fps=args.fps or DEFAULT_FPS, image_frames=1 if args.output else None)
    sinks: list = []
    tracker = None
    pipeline = None
    ok = False
    try:
        # Sinks open before the tracker starts, so a missing virtual camera is reported at once.
        out_size = framing_for(avatars[0]).output_size
        fps = args.fps or (source.fps if not source.live else DEFAULT_FPS)
        if use_vcam:
            sinks.append(VirtualCameraSink(out_size, fps, backend=args.vcam_backend, device=vcam_device))
            log.info("virtual camera: %s (%dx%d @ %g fps)", sinks[-1].device, *out_size, fps)
        if args.output:
            sinks.append(VideoFileSink(args.output, out_size, fps))
        preview = PreviewWindow() if args.preview else None
        if not sinks and preview is None:
            raise AvatarcamError("nothing to show the avatar on: drop --no-virtual-cam, or add --output FILE or --preview")
        tracker = FaceTracker()
        pipeline = AvatarPipeline(avatars, engine_cls, tracker, framing_for, mirror=args.mirror)
        # A file played into a live camera or window plays in real time; into a file, as fast as possible.
        pace = not source.live and (use_vcam or preview is not None)
        loop = LiveLoop(source, pipeline, sinks, preview=preview, pace=pace, max_frames=args.max_frames, fps=fps)
        # Ctrl-C and SIGTERM (a service manager, `kill`) end the run after the current frame,
        # so nothing is cut mid-write and files are finalised; a second Ctrl-C interrupts.
        signalled: list[int] = []

        def on_signal(signum, _frame) -> None:
            if signum == signal.SIGINT and signalled:
                raise KeyboardInterrupt
            signalled.append(signum)
            loop.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            stats = loop.run()
        except KeyboardInterrupt:
            stats = loop.stats
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if preview is not None:
            preview.close()
        if not source.live and stats.frames and stats.frames_with_face == 0:
            raise AvatarcamError(f"no face found in any frame of {args.input}; the driving video must show a face")
        ok = True
        log.info("%s", stats.summary())
        return 0
    finally:
        for sink in sinks:
            # A failed render of a file must not replace the user's file with half a video;
            # a live recording that ends in an error keeps what was recorded.
            if ok or source.live or not hasattr(sink, "abort"):
                sink.close()
            else:
                sink.abort()
        source.close()
        if pipeline is not None:
            pipeline.close()
        if tracker is not None:
            tracker.close()


def hide_native_stderr() -> None:
    """Send what native libraries print on file descriptor 2 (MediaPipe's TFLite and absl
    start-up notes, from its own threads at any time) to /dev/null, while Python's
    ``sys.stderr`` keeps writing to the terminal: the user sees avatarcam's lines only.
    ``AVATARCAM_DEBUG=1`` keeps everything."""
    if os.environ.get("AVATARCAM_DEBUG"):
        return
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, some IDEs)
        pass


def build_prepare_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="avatarcam prepare",
                description="Prepare avatars ahead of time and cache them, so that `avatarcam --face ...` "
                            "and switching avatars start at once. Takes the same --face/--avatars as avatarcam.")
    p.add_argument("--face", action="append", default=[], metavar="IMG",
                   help="portrait(s) of one avatar, as for avatarcam --face")
    p.add_argument("--avatars", metavar="DIR", help="a folder of avatars, as for avatarcam --avatars")
    p.add_argument("--engine", default="warp", help="renderer the avatars are prepared for (default warp)")
    p.add_argument("--model", metavar="DIR", help="--engine neural: exported model folder")
    p.add_argument("--cache-dir", metavar="DIR", help="where prepared avatars are cached (default: the user cache dir)")
    _add_common(p)
    return p


def prepare_command(args: argparse.Namespace) -> int:
    """Prepare every avatar (with a progress bar); a bad image is one line, the rest go on."""
    from tqdm import tqdm

    from avatarcam.avatar import AvatarCache, prepare_avatar
    from avatarcam.engines import engine_class

    engine_cls = engine_class(args.engine, model_dir=getattr(args, "model", None))
    groups = _avatar_groups(args.face, args.avatars)
    cache = AvatarCache(args.cache_dir)
    failed = 0
    with tqdm(groups, desc="preparing", unit="avatar", file=sys.stderr, dynamic_ncols=True) as bar:
        for group in bar:
            bar.set_postfix_str(_group_name(group))
            try:
                prepare_avatar(group, engine_version=engine_cls.version, prepare_engine_data=engine_cls.prepare,
                               cache=cache)
            except AvatarcamError as e:
                failed += 1
                bar.write(f"avatarcam: error: {e}", file=sys.stderr)
    ready = len(groups) - failed
    print(f"avatarcam: {ready} of {len(groups)} avatars ready ({cache.hits} already cached) in {cache.directory}",
          file=sys.stderr)
    return 1 if failed else 0


def _configure_logging(args: argparse.Namespace) -> None:
    level = args.log_level or ("info" if getattr(args, "verbose", False) else "warning")
    logging.basicConfig(format="avatarcam: %(message)s", stream=sys.stderr)
    logging.getLogger("avatarcam").setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    from avatarcam.config import parse_with_config

    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in ("prepare", "doctor") else None
    try:
        if command == "doctor":
            from avatarcam import doctor

            if len(args_list) > 1 and args_list[1] in ("-h", "--help"):
                print("usage: avatarcam doctor\n\nShow what avatarcam finds on this machine (cameras, virtual "
                      "cameras, models, runtimes, GPU) and how to fix what is missing.")
                return 0
            if len(args_list) > 1:
                print(f"avatarcam doctor: error: unexpected argument {args_list[1]!r}", file=sys.stderr)
                return 2
            return doctor.main()
        if command == "prepare":
            args = parse_with_config(build_prepare_parser(), args_list[1:], validate_with=build_parser())
        else:
            args = parse_with_config(build_parser(), args_list)
    except AvatarcamError as e:  # a bad config file
        print(f"avatarcam: error: {e}", file=sys.stderr)
        return 2
    if argv is None:  # only as the program itself, not when called from Python code
        hide_native_stderr()
    _configure_logging(args)
    try:
        return prepare_command(args) if command == "prepare" else run(args)
    except AvatarcamError as e:
        print(f"avatarcam: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - a bug met by the user's input: one line, the trace on request
        if os.environ.get("AVATARCAM_DEBUG"):
            raise
        what = one_line(e)[:300]
        print(f"avatarcam: internal error: {type(e).__name__}{': ' + what if what else ''} "
              "(run again with AVATARCAM_DEBUG=1 for the full trace, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
