"""``avatarcam-train``: meta-learning and fine-tuning of the neural engine (Zakharov et al. 2019).

    avatarcam-train meta --data VIDEOS_DIR --out runs/tiny --preset tiny --steps 300
    avatarcam-train finetune --checkpoint runs/tiny/checkpoint.pt --face mona.jpg --out runs/mona
    python -m export --checkpoint runs/mona/checkpoint.pt --out ~/models/mona

Launched by ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel (one
process per GPU, rank 0 logs and saves); otherwise it is one process (CPU or one GPU).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avatarcam_train import losses as L
from avatarcam_train.data import (
    EpisodeSampler,
    VideoFrames,
    landmark_tensor,
    load_videos,
    warp_guide,
)
from avatarcam_train.model import (
    Discriminator,
    Embedder,
    Generator,
    ModelConfig,
    get_config,
)

log = logging.getLogger("avatarcam_train")

CHECKPOINT_FORMAT = 1


class TrainError(Exception):
    """A problem with the user's input, shown as one line."""


@dataclass
class LossWeights:
    l1: float = 10.0
    ssim: float = 1.0
    adv: float = 1.0
    fm: float = 10.0  # λ_FM of the paper
    mch: float = 80.0  # λ_MCH of the paper
    vgg: float = 1e-2  # λ for VGG19 in the paper, when weights are given


class GenerationNet(nn.Module):
    """E and G as one module (one forward per step, as DistributedDataParallel wants):
    K frames -> ê -> ψ = P·ê -> G(target landmarks, ψ)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embedder = Embedder(config)
        self.generator = Generator(config)

    def forward(self, frames: torch.Tensor, landmarks: torch.Tensor, target_landmarks: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = frames.shape[:2]
        e = self.embedder(frames.flatten(0, 1), landmarks.flatten(0, 1)).view(b, k, -1).mean(dim=1)
        return self.generator(target_landmarks, self.generator.adain_params(e)), e


class FinetuneNet(nn.Module):
    """G with its own ψ' (initialised from P·ê of the new person's photos), as the paper's
    fine-tuning stage."""

    def __init__(self, generator: Generator, adain_params: torch.Tensor) -> None:
        super().__init__()
        self.generator = generator
        self.psi = nn.Parameter(adain_params.detach().clone())

    def forward(self, target_landmarks: torch.Tensor) -> torch.Tensor:
        return self.generator(target_landmarks, self.psi.expand(target_landmarks.shape[0], -1))


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun, else (0, 1, 0)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA GPU is visible to torch")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _wrap(module: nn.Module, world: int, device: torch.device) -> nn.Module:
    if world <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in batch.items()}


class RunLog:
    """CSV log (always) and TensorBoard (when asked for and installed), rank 0 only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = out / "log.csv"
        self.writer = None
        self.fields: list[str] | None = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; logging to %s only", self.path)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: round(v, 6) for k, v in values.items()}}
        new = not self.path.exists()
        if self.fields is None:
            self.fields = list(row)
            if not new:
                with open(self.path, newline="") as f:
                    header = next(csv.reader(f), None)
                if header:
                    self.fields = header
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many types for a damaged file)
        raise TrainError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not an avatarcam-train checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _content_losses(fake, target, weights: LossWeights, vgg) -> dict[str, torch.Tensor]:
    out = {"l1": nn.functional.l1_loss(fake, target), "ssim": L.ms_ssim_loss(fake.float(), target.float())}
    if vgg is not None:
        out["vgg"] = vgg(fake, target)
    return out


class Trainer:
    """Adversarial training of one generating network against D (shared by both stages)."""

    def __init__(self, net: nn.Module, disc: Discriminator, device: torch.device, *, lr_g: float, lr_d: float,
                 weights: LossWeights, world: int = 1, fp16: bool = False, vgg: nn.Module | None = None,
                 extra_g_params: Sequence[nn.Parameter] = ()) -> None:
        self.net = net.to(device)
        self.disc = disc.to(device)
        self.device = device
        self.world = world
        self.net_ddp = _wrap(self.net, world, device)
        self.disc_ddp = _wrap(self.disc, world, device)
        self.weights = weights
        self.vgg = vgg.to(device) if vgg is not None else None
        # Adam with the paper's β1 = 0, β2 = 0.999 (TTUR: D learns faster than G and E).
        self.opt_g = torch.optim.Adam(list(self.net.parameters()) + list(extra_g_params), lr=lr_g, betas=(0.0, 0.999))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr_d, betas=(0.0, 0.999))
        self.fp16 = fp16 and device.type == "cuda"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.fp16)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.fp16)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.fp16)

    def step(self, generate, target: torch.Tensor, landmarks: torch.Tensor, index: torch.Tensor | None,
             column: torch.Tensor | None = None) -> dict[str, float]:
        """One update of G (and E) then one of D. ``generate()`` -> (fake, embedding or None)."""
        w = self.weights
        cond = landmarks[:, :3]  # D sees the landmark image, not the warp guide
        b = target.shape[0]
        idx2 = torch.cat([index, index]) if index is not None else None
        col2 = torch.cat([column, column]) if column is not None else None
        with self._autocast():
            fake, embedding = generate()
            scores, feats = self.disc_ddp(torch.cat([target, fake]), torch.cat([cond, cond]), idx2, col2)
            real_feats = [f[:b] for f in feats]
            fake_feats = [f[b:] for f in feats]
            parts = _content_losses(fake, target, w, self.vgg)
            parts["adv"] = L.hinge_g_loss(scores[b:])
            parts["fm"] = L.feature_matching_loss(real_feats, fake_feats)
            if embedding is not None:
                parts["mch"] = L.embedding_match_loss(self.disc.column(index).detach(), embedding)
            total = sum(getattr(w, k) * v for k, v in parts.items())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(total).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()

        with self._autocast():
            scores, _ = self.disc_ddp(torch.cat([target, fake.detach()]), torch.cat([cond, cond]), idx2, col2)
            d_loss = L.hinge_d_loss(scores[:b], scores[b:])
            if embedding is not None:  # W_i is pulled towards ê_i too (it initialises w' when fine-tuning)
                d_loss = d_loss + w.mch * L.embedding_match_loss(self.disc.column(index), embedding.detach())
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(d_loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        out = {k: float(v.detach()) for k, v in parts.items()}
        out["g_total"] = float(total.detach())
        out["d"] = float(d_loss.detach())
        out["real_score"] = float(scores[:b].mean().detach())
        out["fake_score"] = float(scores[b:].mean().detach())
        return out


def _progress(total: int, start: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


def _load_vgg(path: str | None):
    if not path:
        return None
    if not Path(path).is_file():
        raise TrainError(f"--vgg-weights {path}: file not found")
    return L.VGGContentLoss(path)


def run_meta(args: argparse.Namespace) -> Path:
    rank, world, local_rank = _distributed()
    device = _device(args.device, local_rank)
    torch.manual_seed(args.seed + rank)
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    state = None
    if args.resume:
        if not ckpt_path.exists():
            raise TrainError(f"--resume: no checkpoint in {out}")
        state = load_checkpoint(ckpt_path)
        if state["stage"] != "meta":
            raise TrainError(f"--resume: {ckpt_path} is a {state['stage']} checkpoint, not meta-learning")
        config = ModelConfig.from_dict(state["config"])
    else:
        config = get_config(args.preset, **({"warp_guided": True} if args.warp_guided else {}))
        if args.image_size:
            config = get_config(config, image_size=args.image_size)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    try:
        videos = load_videos(args.data, config.image_size, every=args.every, max_frames=args.max_frames,
                             cache_dir=args.cache_dir, min_frames=2, progress=rank == 0 and not args.quiet)
    except FileNotFoundError as e:
        raise TrainError(str(e)) from None
    if not videos:
        raise TrainError(f"no faces found in any video under {args.data}")
    names = [v.name for v in videos]
    if state is not None and state["videos"] != names:
        raise TrainError("--resume: the training videos differ from the checkpoint's (D has one column per video)")
    sampler = EpisodeSampler(videos, args.k, warp_guided=config.warp_guided, seed=args.seed + 1000 * rank)
    net = GenerationNet(config)
    disc = Discriminator(config, len(videos))
    step = 0
    if state is not None:
        net.embedder.load_state_dict(state["embedder"])
        net.generator.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        step = int(state["step"])
    trainer = Trainer(net, disc, device, lr_g=args.lr_g, lr_d=args.lr_d, weights=LossWeights(), world=world,
                      fp16=args.fp16, vgg=_load_vgg(args.vgg_weights))
    if state is not None:
        trainer.opt_g.load_state_dict(state["opt_g"])
        trainer.opt_d.load_state_dict(state["opt_d"])
        if "rng" in state:
            sampler.rng.bit_generator.state = state["rng"]
    runlog = RunLog(out, rank == 0, args.tensorboard)

    def checkpoint() -> dict:
        return {"format": CHECKPOINT_FORMAT, "stage": "meta", "config": config.to_dict(), "step": step,
                "embedder": net.embedder.state_dict(), "generator": net.generator.state_dict(),
                "discriminator": disc.state_dict(), "opt_g": trainer.opt_g.state_dict(),
                "opt_d": trainer.opt_d.state_dict(), "videos": names, "rng": sampler.rng.bit_generator.state,
                "data": str(args.data), "k": args.k}

    bar = _progress(args.steps, step, rank == 0 and not args.quiet, "meta-learning")
    try:
        while step < args.steps:
            batch = _tensors(sampler.batch(args.batch), device)
            values = trainer.step(lambda b=batch: trainer.net_ddp(b["frames"], b["landmarks"], b["target_landmarks"]),
                                  batch["target"], batch["target_landmarks"], batch["index"])
            step += 1
            bar.update(1)
            bar.set_postfix(l1=f"{values['l1']:.3f}", d=f"{values['d']:.2f}")
            if step % args.log_every == 0 or step == args.steps:
                runlog.write(step, values)
            if rank == 0 and (step % args.save_every == 0 or step == args.steps):
                save_checkpoint(ckpt_path, checkpoint())
    finally:
        bar.close()
    return ckpt_path


def _sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def face_examples(paths: Sequence[str], size: int) -> VideoFrames:
    """Crops and landmarks of the new person's photos (one face each)."""
    from avatarcam.images import load_image
    from avatarcam.landmark_image import FaceCrop
    from avatarcam.tracking import detect_faces

    frames, points = [], []
    for p in paths:
        image = load_image(p)
        found = detect_faces(image, max_faces=1)
        if not found:
            raise TrainError(f"no face found in {p}")
        crop = FaceCrop.around(found[0], size)
        frames.append(crop.cut(image))
        points.append(crop.to_crop(found[0]).astype(np.float32))
    return VideoFrames("faces", np.stack(frames), np.stack(points))


def run_finetune(args: argparse.Namespace) -> Path:
    from avatarcam.errors import AvatarcamError
    from avatarcam.landmark_image import to_network

    device = _device(args.device, 0)
    torch.manual_seed(args.seed)
    if not args.face:
        raise TrainError("fine-tuning needs the new person's photos: --face a.jpg [--face b.jpg ...]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    resume = args.resume and ckpt_path.exists()
    state = load_checkpoint(ckpt_path if resume else args.checkpoint)
    config = ModelConfig.from_dict(state["config"])
    try:
        faces = face_examples(args.face, config.image_size)
    except AvatarcamError as e:
        raise TrainError(str(e)) from None
    size = config.image_size
    frames = torch.from_numpy(np.stack([to_network(f) for f in faces.frames])).to(device)
    lms = torch.from_numpy(np.stack([landmark_tensor(p, size) for p in faces.landmarks])).to(device)
    if config.warp_guided:  # each photo warped from the first one, as live from the avatar photo
        guides = [to_network(warp_guide(faces.frames[0], faces.landmarks[0], p)) for p in faces.landmarks]
        target_lms = torch.cat([lms, torch.from_numpy(np.stack(guides)).to(device)], dim=1)
    else:
        target_lms = lms

    embedder = Embedder(config)
    embedder.load_state_dict(state["embedder"])
    generator = Generator(config)
    generator.load_state_dict(state["generator"])
    disc_meta = Discriminator(config, len(state.get("videos", [])) or 1)
    disc_meta.load_state_dict(state["discriminator"])
    embedder.to(device).eval()
    with torch.no_grad():
        e_new = embedder(frames, lms).mean(dim=0, keepdim=True)  # ê_NEW
        psi = generator.to(device).adain_params(e_new)  # ψ' initialised to P·ê_NEW
    net = FinetuneNet(generator, psi)
    # D' keeps the trunk, w0 and b; its one video column w' starts at ê_NEW.
    disc = Discriminator(config, 1)
    disc.load_state_dict({k: v for k, v in disc_meta.state_dict().items() if k != "W"}, strict=False)
    with torch.no_grad():
        disc.W.copy_(e_new.T.cpu())
    step = 0
    if resume:
        net.load_state_dict(state["finetune_net"])
        disc.load_state_dict(state["discriminator"])
        step = int(state["step"])
    trainer = Trainer(net, disc, device, lr_g=args.lr_g, lr_d=args.lr_d, weights=LossWeights(),
                      fp16=args.fp16, vgg=_load_vgg(args.vgg_weights))
    if resume:
        trainer.opt_g.load_state_dict(state["opt_g"])
        trainer.opt_d.load_state_dict(state["opt_d"])
    runlog = RunLog(out, True, args.tensorboard)
    hashes = [_sha256(p) for p in args.face]
    index = torch.zeros(args.batch, dtype=torch.long, device=device)
    rng = np.random.default_rng(args.seed)

    def checkpoint() -> dict:
        gstate = {f"generator.{k}": v for k, v in net.generator.state_dict().items()}
        return {"format": CHECKPOINT_FORMAT, "stage": "finetune", "config": config.to_dict(), "step": step,
                "embedder": embedder.state_dict(), "generator": net.generator.state_dict(),
                "discriminator": disc.state_dict(), "finetune_net": {**gstate, "psi": net.psi.detach()},
                "opt_g": trainer.opt_g.state_dict(), "opt_d": trainer.opt_d.state_dict(),
                "videos": ["faces"], "identity": {"adain_params": net.psi.detach().cpu(),
                                                  "embedding": e_new.detach().cpu(), "faces_sha256": hashes},
                "faces": [str(p) for p in args.face], "base_checkpoint": str(args.checkpoint)}

    bar = _progress(args.steps, step, not args.quiet, "fine-tuning")
    try:
        while step < args.steps:
            pick = torch.from_numpy(rng.integers(len(frames), size=args.batch)).to(device)
            values = trainer.step(lambda p=pick: (trainer.net_ddp(target_lms[p]), None), frames[pick], target_lms[pick],
                                  index)
            step += 1
            bar.update(1)
            bar.set_postfix(l1=f"{values['l1']:.3f}")
            if step % args.log_every == 0 or step == args.steps:
                runlog.write(step, values)
            if step % args.save_every == 0 or step == args.steps:
                save_checkpoint(ckpt_path, checkpoint())
    finally:
        bar.close()
    return ckpt_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avatarcam-train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--out", required=True, metavar="DIR", help="run folder: checkpoint.pt, log.csv")
        s.add_argument("--steps", type=int, default=1000, help="total optimisation steps")
        s.add_argument("--batch", type=int, default=4, help="episodes (meta) or photos (finetune) per step")
        s.add_argument("--lr-g", type=float, default=5e-5, help="learning rate of G and E (paper: 5e-5)")
        s.add_argument("--lr-d", type=float, default=2e-4, help="learning rate of D (paper: 2e-4)")
        s.add_argument("--device", default="auto", help="auto, cpu or cuda")
        s.add_argument("--fp16", action="store_true", help="mixed precision on CUDA")
        s.add_argument("--vgg-weights", metavar="PTH", help="a VGG19 state dict: adds the paper's VGG content loss")
        s.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
        s.add_argument("--save-every", type=int, default=100, metavar="N")
        s.add_argument("--log-every", type=int, default=1, metavar="N")
        s.add_argument("--tensorboard", action="store_true", help="also log to DIR/tensorboard (if installed)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
        s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    m = sub.add_parser("meta", help="meta-learning on a folder of talking-head videos")
    m.add_argument("--data", required=True, metavar="DIR", help="videos (mp4/mov/...), VoxCeleb layout, or image folders")
    m.add_argument("--preset", default="small", help="tiny, small or paper")
    m.add_argument("--image-size", type=int, help="override the preset's image size")
    m.add_argument("--k", type=int, default=8, help="frames per episode for the embedder (paper: K=8)")
    m.add_argument("--every", type=int, default=5, help="keep every N-th video frame")
    m.add_argument("--max-frames", type=int, default=200, help="frames kept per video")
    m.add_argument("--cache-dir", metavar="DIR", help="extracted frames (default: the user cache dir)")
    m.add_argument("--warp-guided", action="store_true",
                   help="G also gets the warp engine's rendering of the target landmarks as input")
    common(m)

    f = sub.add_parser("finetune", help="fine-tune a meta-learnt model on the photos of one person")
    f.add_argument("--checkpoint", required=True, metavar="PT", help="a meta-learning checkpoint")
    f.add_argument("--face", action="append", default=[], metavar="IMG", help="a photo of the person; repeat for K photos")
    common(f)
    f.set_defaults(steps=40, batch=1, lr_g=5e-5)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="avatarcam-train: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        path = run_meta(args) if args.stage == "meta" else run_finetune(args)
    except TrainError as e:
        print(f"avatarcam-train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"avatarcam-train: checkpoint written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "FinetuneNet",
    "GenerationNet",
    "LossWeights",
    "TrainError",
    "Trainer",
    "load_checkpoint",
    "main",
    "read_log",
    "run_finetune",
    "run_meta",
]
