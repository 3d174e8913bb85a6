"""Zhang et al., AAAI 2020, *Model Watermarking for Image Processing Networks*, re-implemented
with its traditional (spread-spectrum) baseline.

The setting: a deraining model M is offered as a black box. Every output B = M(A) passes through
an embedding net H that hides a logo δ: B′ = H(B, δ) looks like B. An extractor R recovers δ from
B′ and returns a blank δ0 for clean images. A thief who trains a surrogate SM on (A, B′) pairs
should learn the hidden logo too, so R finds it in SM's outputs: that is the claim tested here.

What follows the official code (../shared/papers/paper1-image-processing-watermark.md, §2) and
what is this module's own choice:

* H: a U-Net on cat(B, δ); **residual** (B′ = B + H's correction, zero-initialised) where the
  code ends in a Sigmoid and predicts the whole image: from the first step B′ = B, which reaches
  high PSNR in a CPU budget. R: the code's dilated residual extractor (stride-2 stem, residual
  blocks with dilations 2,…,4,…,1 and affine InstanceNorm, ×2 up-sampling), narrower and shorter;
  a Sigmoid output where the code ends in ReLU (targets are images in [0, 1]). D: the code's
  PatchGAN (3×3 stride-2 convs, InstanceNorm, LeakyReLU 0.2), trained as an LSGAN.
* Loss weights: the official code's (1e4 × every MSE term, H's invisibility term MSE(B′, B)
  included: see Config.w_basic; 0.01 × the LSGAN generator term, perceptual weight 0), not the
  paper's λ's (all 1, λ3 = 0.01): in the paper's form the adversarial term would weigh 10⁴ times
  more. The clean loss covers both A and B, the consistency term compares R's outputs across the
  two halves of a batch (as in the code).
* Stage 2: only R is fine-tuned, on B′ and the defender's own surrogate's outputs (→ δ) and on A
  and B (→ δ0), plus consistency (the README's figure; binpat's reimplementation).
* Every image a party receives is 8-bit (`deliver`): the API returns PNGs, so the watermark must
  survive rounding to 1/255.
* The traditional watermark: the abstract only says "traditional spatial invisible watermarking"
  for bit strings; the algorithm is not known. An additive spread-spectrum mark (Cox et al.
  1997) stands in for it: `SpreadSpectrum`.
* Layout: the task's data, logos and the spread-spectrum mark are in wm.deraining; the networks
  R, D and H, the surrogates' builder and the LSGAN and perceptual losses in wm.image_models (both
  re-exported here); what stays is the study's recipe: its Config, the training loops, stage 1
  and stage 2, and verification.
* The rain generator is this project's (`add_rain`): the paper used DID-MDN's Photoshop-style
  synthesis, which is not public code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wm import metrics
# the task's data and the classical pieces live in wm.deraining; the notebook and the methods reach them here
from wm.deraining import (MIN_GAIN, Extraction, verify, verify_extracted,  # noqa: F401 (re-exported)
                          LOGO_PATH, WATERMARKS, Pairs, SpreadSpectrum, _subseed, add_noise, add_rain,  # noqa: F401
                          deliver, load_logo, make_logo, make_pairs, qr_pattern, split_photos, tv_denoise,
                          watermark_image)
from wm.image_models import (RESNET_LAYOUTS, RESNET_NORMS, SM_ARCHS, SM_LAYOUT, SM_NORM, VGG_FILE, DilatedResNet, Embedder, InstanceNorm,  # noqa: F401 (re-exported)
                             PatchDiscriminator, Perceptual, build_surrogate, lsgan, vgg_path)
from wm.config import MAX_BATCH, MAX_EPOCHS, MAX_PAIRS, MAX_SEED, MAX_SEEDS, MAX_WIDTH, StudyConfig, param, require
from wm.train import History, Precision, channels_last, index_batches, n_steps, seed_everything

SM_LOSSES = ("l2", "l1", "l1_adv", "l2_adv", "perc_adv")


# ---------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class Config(StudyConfig):
    """Parameters of the image-processing notebook."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First seed: seed s draws its own patches and rain and seeds every network and the
    spread-spectrum patterns; the chapter repeats every experiment on seeds seed, seed+1, …"""
    seeds: int = param(3, ge=1, le=MAX_SEEDS)
    """Repetitions of every experiment (mean ± 95 % CI over seeds; wm.image_study)."""
    merged: str = ""
    """A sweep of this chapter over seeds (the merged table of `python -m wm sweep image_processing
    --grid seed=0,1,2 -p seeds 1`): the chapter shows its runs instead of training."""
    size: int = param(32, ge=16, le=1024, multiple_of=8)
    """Side of the square patches (a multiple of 8)."""
    n_owner: int = param(3000, ge=1, le=MAX_PAIRS)
    """Owner's training pairs (M, H/R/D, stage 2), from half of the training photos."""
    n_attacker: int = param(3000, ge=1, le=MAX_PAIRS)
    """Attacker's pairs (every surrogate), from the other half of the photos: disjoint images."""
    n_test: int = param(300, ge=1, le=MAX_PAIRS)
    """Test pairs, from the test photos."""
    watermark: str = param("logo", choices=WATERMARKS)
    """δ: `logo` (data/watermarks/logo.png) or `qr` (a seeded 8×8 binary pattern)."""
    batch_size: int = param(16, ge=2, le=MAX_BATCH, multiple_of=2)
    """Batch of every image network (even: the consistency term compares the two halves)."""
    rain_density: float = param(0.03, gt=0, lt=1)
    """Share of pixels seeding a rain streak."""
    rain_length: int = param(9, ge=1, le=256)
    """Streak length in pixels."""
    rain_strength: float = param(0.8, gt=0, le=1)
    """Streak opacity (screen blend)."""
    m_width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the protected deraining U-Net M."""
    m_epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Epochs of M (L1 loss)."""
    h_width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the embedding U-Net H (depth 2)."""
    r_width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the extractor R (the code's is 128)."""
    r_blocks: int = param(5, ge=1, le=64)
    """Dilated residual blocks of R (the code has 9)."""
    d_width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the discriminators."""
    lr: float = param(1e-3, gt=0, le=10)
    """Adam learning rate of stage 1 (β1 0.5 as in the code)."""
    stage1_epochs: float = param(8, gt=0, le=MAX_EPOCHS)
    """Epochs of stage 1 (H, R, D jointly)."""
    w_basic: float = param(1e4, ge=0, le=1e9)
    """Weight of MSE(B′, B): the code's betamse 1e4, chosen on validation by the tuning chapter
    (book/tuning.ipynb: the smallest weight whose B′ clears 35 dB on the owner's held-out photo,
    mean of 3 seeds; 35.4 dB there). Until then the chapter ran at 3e5, chosen on its test patches."""
    w_adv: float = param(0.01, ge=0, le=1e9)
    """Weight of H's LSGAN term (the code's betagans)."""
    w_wm: float = param(1e4, ge=0, le=1e9)
    """Weight of MSE(R(B′), δ)."""
    w_clean: float = param(1e4, ge=0, le=1e9)
    """Weight of MSE(R(A), δ0) + MSE(R(B), δ0)."""
    w_cst: float = param(1e4, ge=0, le=1e9)
    """Weight of the consistency MSE between R's outputs on the two halves of a batch."""
    stage2_epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Epochs of stage 2 (R only)."""
    stage2_lr: float = param(1e-4, gt=0, le=10)
    """Adam learning rate of stage 2 (the code's)."""
    sm_width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of every surrogate."""
    sm_epochs: float = param(6, gt=0, le=MAX_EPOCHS)
    """Epochs of every surrogate."""
    sm_lr: float = param(1e-3, gt=0, le=10)
    """Adam learning rate of the surrogates."""
    sm_adv_weight: float = param(1e-3, ge=0, le=1e9)
    """Weight of the surrogate's LSGAN term against its content loss (+adv variants)."""
    sm_archs: tuple = param(SM_ARCHS, choices=SM_ARCHS)
    """Surrogate architectures of the robustness table (each trained with L2)."""
    sm_losses: tuple = param(("l1", "l1_adv", "l2_adv", "perc_adv"), choices=SM_LOSSES, empty_ok=True)
    """Further surrogate losses, on the U-Net (L2 is the architecture row)."""
    defender_sm: str = param("unet", choices=SM_ARCHS)
    """The defender's own surrogate architecture in stage 2 (L2 loss, owner's data)."""
    tau: float = param(0.9, gt=0, lt=1)
    """Success: centred NC(R(x), δ) ≥ tau for an image."""
    ss_bits: tuple = param((4, 16, 64, 256), of=int, ge=1, le=MAX_PAIRS)
    """Payloads L of the spread-spectrum baseline: a capacity curve, from a payload that decodes
    unattacked at 32×32 (the comparison with the deep mark needs one) to ones that do not."""
    ss_psnr: float | None = param(None, gt=0, le=200)
    """PSNR of the spread-spectrum mark, which sets its strength α = 10^(−psnr/20); None: the deep
    watermark's measured PSNR, so that both marks are equally visible."""
    tv_weight: float = param(0.1, ge=0, le=1e9)
    """Weight of the TV denoiser (skimage's Chambolle) protected in experiment 5."""
    tv_noise: float = param(0.08, ge=0, le=1e9)
    """Std of the Gaussian noise the TV experiment removes."""
    amp: bool = True
    """Train H, R and D (stage 1) under bf16 autocast where the device computes bf16 natively (CUDA;
    CPUs with AMX): see `wm.train.bf16_native` and `wm.train.Precision`. Elsewhere, or when False, fp32. Stage 2, M and
    the surrogates always train in fp32, and evaluation is fp32."""

    PROFILE_DEFAULTS = {
        "smoke": dict(seeds=2, size=16, n_owner=96, n_attacker=96, n_test=24, m_width=8, m_epochs=1, h_width=8, r_width=8,
                      r_blocks=2, d_width=8, stage1_epochs=1, stage2_epochs=1, sm_width=8, sm_epochs=1,
                      sm_archs=("unet", "ceilnet"), sm_losses=("l1_adv",), ss_bits=(16,)),
        "cpu": dict(),
        "gpu": dict(size=64, n_owner=6000, n_attacker=6000, n_test=1000, m_width=32, m_epochs=20, h_width=32,
                    r_width=64, r_blocks=9, d_width=64, stage1_epochs=40, stage2_epochs=20, sm_width=32,
                    sm_epochs=20, batch_size=32),
    }

    def check(self) -> None:
        require(self.n_owner >= self.batch_size, "n_owner", self.n_owner, f"at least batch_size ({self.batch_size})")
        require(self.n_attacker >= self.batch_size, "n_attacker", self.n_attacker,
                f"at least batch_size ({self.batch_size})")
        require(all(b <= self.size ** 2 for b in self.ss_bits), "ss_bits", self.ss_bits,
                f"integers in 1..size² ({self.size ** 2})")

    @property
    def rain(self) -> dict:
        return dict(density=self.rain_density, length=self.rain_length, strength=self.rain_strength)


# ---------------------------------------------------------------------------------------------
# 2. Training: one explicit loop for every image-to-image network (M and the surrogates)
# ---------------------------------------------------------------------------------------------


class _LossLog:
    """Per-epoch mean of the loss, summed on the device (no host sync per step), as wm.train's
    History (which it returns)."""

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.steps: dict[int, int] = {}
        self.start = time.perf_counter()

    def add(self, epoch: int, loss: torch.Tensor) -> None:
        self.sums[epoch] = self.sums.get(epoch, 0.0) + loss.detach()
        self.steps[epoch] = self.steps.get(epoch, 0) + 1

    def history(self) -> History:
        return History(loss=[float(v) / self.steps[e] for e, v in self.sums.items()],
                       seconds=time.perf_counter() - self.start)


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam with β1 = 0.5 (the official code's). foreach=True: torch's multi-tensor kernels, its
    default on CUDA but not on the CPU, compute the same update bit for bit and made a stage-1
    step 1.10x faster on 2 CPU cores (benchmarks/bench.py)."""
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), foreach=True)


def _decay(opt: torch.optim.Optimizer, n: int, batch: int, epochs: float):
    """pix2pix's schedule (the official attack code's niter + niter_decay): the learning rate is
    constant for the first half of the steps, then decays linearly to zero."""
    total = n_steps(n, batch, epochs, drop_last=True)  # the steps index_batches takes
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, 2 * (1 - step / total)))


def train_i2i(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, epochs: float, lr: float,
              batch: int, seed: int, adv_weight: float = 0.0, d_width: int = 16,
              perceptual: Perceptual | None = None) -> History:
    """Train NET in place to map X → Y (aligned images) with LOSS: l1, l2, l1_adv, l2_adv or
    perc_adv (perceptual content loss; needs PERCEPTUAL). `_adv` adds ADV_WEIGHT × an LSGAN
    generator term against a PatchGAN trained alongside. Adam (β1 0.5), no augmentation, fp32
    (channels_last: `wm.train.Precision`)."""
    if loss not in SM_LOSSES:
        raise ValueError(f"unknown loss {loss!r}: choose from {', '.join(SM_LOSSES)}")
    if loss == "perc_adv" and perceptual is None:
        raise ValueError("the perc_adv loss needs the VGG-19 weights (Perceptual)")
    device = x.device
    seed_everything(seed)
    net.to(device).train()
    fmt = channels_last(net)  # and fp32: see wm.train.Precision for what bf16 did to the surrogates
    opt = _adam(net.parameters(), lr)
    disc = opt_d = None
    if loss.endswith("_adv"):
        disc = PatchDiscriminator(3, d_width).to(device)
        channels_last(disc)
        opt_d = _adam(disc.parameters(), lr)
    sched = _decay(opt, len(x), batch, epochs)
    log = _LossLog()
    for epoch, idx in index_batches(len(x), batch, epochs, seed, device, drop_last=True,
                                    desc=f"training {type(net).__name__}"):
        xb, yb = x[idx].contiguous(memory_format=fmt), y[idx]
        out = net(xb)
        if loss.startswith("l1"):
            content = F.l1_loss(out, yb)
        elif loss.startswith("l2"):
            content = F.mse_loss(out, yb)
        else:
            content = perceptual(out, yb)
        total = content
        if disc is not None:
            disc.requires_grad_(False)  # the generator's term needs D's input gradient, not D's weights'
            total = total + adv_weight * lsgan(disc(out), True)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if disc is not None:
            disc.requires_grad_(True)
        opt.step()
        sched.step()
        if disc is not None:  # D: real targets against the generator's (detached) outputs
            d_loss = 0.5 * (lsgan(disc(yb), True) + lsgan(disc(out.detach()), False))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        log.add(epoch, total)
    net.eval()
    return log.history()


def train_target(cfg: Config, pairs: Pairs, seed: int, arch: str = "unet") -> tuple[nn.Module, History]:
    """The protected model M: a residual U-Net trained rainy → clean with L1 on the owner's pairs
    (ARCH: another of SM_ARCHS, an independent model of a null population, trained the same way
    but with L2 where L1 does not train it: `TARGET_LOSS`)."""
    seed_everything(seed)
    net = build_surrogate(arch, cfg.m_width).to(pairs.a.device)
    loss = TARGET_LOSS.get(arch, "l1")
    return net, train_i2i(net, pairs.a, pairs.clean, loss, cfg.m_epochs, cfg.sm_lr, cfg.batch_size, seed)


TARGET_LOSS = {"resnet9": "l2", "resnet16": "l2"}
"""The deraining loss of an independent model whose architecture L1 does not train. Measured (the
attack suite's cpu budget: 1000 pairs of 32×32, 6 epochs, width 16, seed 200): a ResNet-9 trained
with L1 never leaves the identity its zero-initialised last conv starts from (22.19 dB on the test
pairs, the rainy inputs' own PSNR; at lr 1e-4 too), so it was no working model; with L2 it reaches
26.3 dB (the U-Net with L1: 29.1 dB). Most pixels carry no rain, and L1's optimum there is to
change nothing."""


def train_surrogate(cfg: Config, arch: str, loss: str, a: torch.Tensor, target: torch.Tensor, seed: int,
                    perceptual: Perceptual | None = None, layout: str = SM_LAYOUT,
                    norm: str = SM_NORM) -> tuple[nn.Module, History]:
    """The thief: a fresh surrogate ARCH trained on (A, TARGET) with LOSS at the Config's budget
    (a ResNet in LAYOUT with NORM: see build_surrogate)."""
    seed_everything(seed)
    net = build_surrogate(arch, cfg.sm_width, layout, norm).to(a.device)
    hist = train_i2i(net, a, target, loss, cfg.sm_epochs, cfg.sm_lr, cfg.batch_size, seed,
                     adv_weight=cfg.sm_adv_weight, d_width=cfg.d_width, perceptual=perceptual)
    return net, hist


@torch.no_grad()
def apply(net: nn.Module, x: torch.Tensor, *args, batch: int = 256) -> torch.Tensor:
    """NET on X in eval mode, in batches, fp32 (extra ARGS passed through, e.g. δ for H)."""
    net.eval()
    return torch.cat([net(x[i:i + batch], *args) for i in range(0, len(x), batch)])


# ---------------------------------------------------------------------------------------------
# 3. The deep watermark: H, R, D, stage 1 and stage 2, verification
# ---------------------------------------------------------------------------------------------


@dataclass
class DeepWatermark:
    """The owner's watermarking system: H embeds δ, R extracts; δ0 is the white blank."""

    h: Embedder
    r: DilatedResNet
    delta: torch.Tensor

    @property
    def blank(self) -> torch.Tensor:
        return torch.ones_like(self.delta)

    def embed(self, b: torch.Tensor) -> torch.Tensor:
        """B′ as the API delivers it (8-bit)."""
        return deliver(apply(self.h, b, self.delta))

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return apply(self.r, x)


class Service(nn.Module):
    """M∘H with δ fixed: A → H(M(A), δ), what a white-box thief of the service holds. The service
    delivers `deliver(Service(A))` (the image study rounds B to 8 bits before H as well; that
    rounding is not differentiable, so the composite leaves it out)."""

    def __init__(self, m: nn.Module, h: Embedder, delta: torch.Tensor):
        super().__init__()
        self.m, self.h = m, h
        self.register_buffer("delta", delta.detach().clone())

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.h(self.m(a).clamp(0, 1), self.delta)


def new_watermark(cfg: Config, device) -> DeepWatermark:
    seed_everything(_subseed(cfg.seed, "nets"))
    delta = watermark_image(cfg.watermark, cfg.size, cfg.seed).to(device)
    return DeepWatermark(Embedder(cfg.h_width).to(device), DilatedResNet(3, 1, cfg.r_width, cfg.r_blocks).to(device), delta)


def train_stage1(cfg: Config, wmk: DeepWatermark, a: torch.Tensor, b: torch.Tensor, seed: int) -> History:
    """Stage 1: H, R and D jointly, with the official code's loss (see the module docstring):
    H: w_basic·MSE(B′, B) + w_adv·LSGAN(D(B′) → real); R: w_wm·MSE(R(B′), δ) + w_clean·(MSE(R(A), δ0)
    + MSE(R(B), δ0)) + w_cst·MSE(R(B′) first half, second half); one backward for H and R, then D.
    Precision and memory formats: `wm.train.Precision` (cfg.amp)."""
    device = a.device
    h, r = wmk.h.train(), wmk.r.train()
    disc = PatchDiscriminator(3, cfg.d_width).to(device)
    speed = Precision(device, cfg.amp)
    fmt_h, fmt_r, fmt_d = speed.layout(h), speed.layout(r), speed.layout(disc)
    a, b = a.contiguous(memory_format=fmt_h), b.contiguous(memory_format=fmt_h)
    opt = _adam([*h.parameters(), *r.parameters()], cfg.lr)
    opt_d = _adam(disc.parameters(), cfg.lr)
    sched = _decay(opt, len(a), cfg.batch_size, cfg.stage1_epochs)
    log = _LossLog()
    half = cfg.batch_size // 2
    for epoch, idx in index_batches(len(a), cfg.batch_size, cfg.stage1_epochs, seed, device, drop_last=True,
                                    desc="stage 1 (H, R, D)"):
        ab, bb = a[idx], b[idx]
        # H's adversarial term needs D's gradient with respect to its input, not its weights (whose
        # gradients D's own step would zero): not computing them is exact and 1.06x a step faster
        disc.requires_grad_(False)
        with speed.autocast():
            b_wm = h(bb, wmk.delta).float()  # H's residual sum B + correction is fp32 already
            # one pass of R over the three sets: InstanceNorm is per image, so this equals three passes
            r_all = r(torch.cat([b_wm, ab, bb]).contiguous(memory_format=fmt_r)).float()
            scores = disc(b_wm.contiguous(memory_format=fmt_d)).float()
        r_wm, r_a, r_b = r_all.split(len(idx))
        d_wm, d_0 = wmk.delta.expand_as(r_wm), wmk.blank.expand_as(r_wm)
        loss_h = cfg.w_basic * F.mse_loss(b_wm, bb) + cfg.w_adv * lsgan(scores, True)
        loss_r = (cfg.w_wm * F.mse_loss(r_wm, d_wm) + cfg.w_clean * (F.mse_loss(r_a, d_0) + F.mse_loss(r_b, d_0))
                  + cfg.w_cst * F.mse_loss(r_wm[:half], r_wm[half:]))
        loss = loss_h + loss_r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        disc.requires_grad_(True)
        opt.step()
        sched.step()
        with speed.autocast():
            real = disc(bb.contiguous(memory_format=fmt_d)).float()
            fake = disc(b_wm.detach().contiguous(memory_format=fmt_d)).float()
        d_loss = 0.5 * (lsgan(real, True) + lsgan(fake, False))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        log.add(epoch, loss)
    hist = log.history()
    h.eval(), r.eval()
    return hist


def train_stage2(cfg: Config, wmk: DeepWatermark, a: torch.Tensor, b: torch.Tensor, b_wm: torch.Tensor,
                 b_sm: torch.Tensor, seed: int) -> History:
    """Stage 2 (adversarial): fine-tune R only, so that B′ and the defender's surrogate outputs
    B″ → δ while A and B → δ0, with the consistency term on B″; H stays as it is."""
    r = wmk.r.train()
    fmt = channels_last(r)  # and fp32, like the surrogates whose outputs R learns from here
    opt = _adam(r.parameters(), cfg.stage2_lr)
    sched = _decay(opt, len(a), cfg.batch_size, cfg.stage2_epochs)
    log = _LossLog()
    half = cfg.batch_size // 2
    for epoch, idx in index_batches(len(a), cfg.batch_size, cfg.stage2_epochs, seed, a.device, drop_last=True,
                                    desc="stage 2 (R)"):
        r_all = r(torch.cat([b_wm[idx], b_sm[idx], a[idx], b[idx]]).contiguous(memory_format=fmt))
        r_wm, r_sm, r_a, r_b = r_all.split(len(idx))
        d_wm, d_0 = wmk.delta.expand_as(r_wm), wmk.blank.expand_as(r_wm)
        loss = cfg.w_wm * (F.mse_loss(r_wm, d_wm) + F.mse_loss(r_sm, d_wm)) \
            + cfg.w_clean * (F.mse_loss(r_a, d_0) + F.mse_loss(r_b, d_0)) \
            + cfg.w_cst * F.mse_loss(r_sm[:half], r_sm[half:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.add(epoch, loss)
    hist = log.history()
    r.eval()
    return hist


def image_quality(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of X against REF."""
    return {"psnr": float(metrics.psnr(x, ref).mean()), "ssim": float(metrics.ssim(x, ref).mean())}
