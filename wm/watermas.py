"""WaterMAS (De Sousa Trias, Mitrea, Fiandrotti, Cagnazzo, Chaudhuri, Tartaglione, ICPR 2024),
reconstructed, with the baselines it is compared against.

**What this is.** The paper's full text and code were not available (see
../shared/papers/paper3-watermas.md). This module is a *reconstruction*, and everything in it that
goes past the abstract is this module's own choice:

* From the abstract: a substitutive, white-box watermark; the secret key is the set of positions of
  the weights that carry it, drawn at random across several layers; the watermarked weights are
  kept unchanged during training while the gradient space around them is sharpened, so that moving
  them (to erase the bits) costs accuracy.
* Reconstructed here: one weight per bit with the value rule w_k = (2·b_k − 1)·κ·σ_ℓ (σ_ℓ the std
  of the host layer's weights when the key is drawn); extraction by sign; the SAM-style objective
  of `SharpnessHook`, min over the free weights of (1 + λ)·L(θ) − λ·L(θ + ε_K) with ε_K the SAM
  direction restricted to the keyed weights, with its ρ, λ and cap; the BatchNorm and dropout
  handling of the extra pass. The ancestor method (Tartaglione et al., ICPR 2020, "TART") and Uchida et al. 2017
  are implemented as baselines from their public code and papers.

The pieces:

* `wm.keys`: `Key`, `draw_key`, `embed_values`, `extract`, `ber`, `overwrite` (the secret and the
  bits it carries) and Uchida et al.'s `UchidaKey`;
* `wm.sharpness`: `FreezeHook` (the keyed weights kept bit-identical through training: gradient
  masking and writing the values back after every optimizer step, since weight decay and momentum
  would otherwise move them), `SharpnessHook` (WaterMAS) and `TartHook` (random replicas), the
  measured `sharpness`, and `UchidaHook`;
* here, re-exporting both: `Config`, `build_model`, `make_hooks`, `train` (what the notebook
  calls) and the segmentation experiment.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wm import models as wm_models
from wm.config import (FASHION_TEST, FASHION_TRAIN, MAX_BATCH, MAX_EPOCHS, MAX_SEED, MAX_SEEDS, MAX_WIDTH,
                       StudyConfig, param, require)
# the key and the hooks live in wm.keys and wm.sharpness; the notebook and the methods reach them here
from wm.keys import (KEY_FORMAT, OVERWRITE_MODES, Key, UchidaKey, ber, default_uchida_layer,  # noqa: F401
                     draw_key, draw_uchida_key, eligible_weights, embed_values, extract, overwrite, uchida_ber,
                     uchida_extract)
from wm.sharpness import FreezeHook, SharpnessHook, TartHook, UchidaHook, sharpness  # noqa: F401
from wm.train import History, Hook, TrainConfig, fit, seed_everything


METHODS = ("none", "freeze_only", "watermas", "tart", "uchida")
"""`none` (clean control), `freeze_only` (substitution without sharpening, λ = 0), `watermas`,
`tart` (ICPR 2020 random replicas) and `uchida` (projection regulariser)."""
MODELS = ("smallcnn", "resnet18", "vgg16", "mobilenet_v3_small", "swin_t")


# ---------------------------------------------------------------------------------------------
# 1. The notebook's parameters, models and training
# ---------------------------------------------------------------------------------------------


@dataclass
class Config(StudyConfig):
    """Parameters of the WaterMAS notebook. Fashion-MNIST (1×28×28, 10 classes) throughout."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """First seed (data draw, model init, key, batch order); the chapter repeats every experiment on
    seeds seed, seed+1, … (wm.watermas_study)."""
    seeds: int = param(3, ge=1, le=MAX_SEEDS)
    """Repetitions of every experiment (mean ± 95 % CI over seeds)."""
    merged: str = ""
    """A sweep of this chapter over seeds (the merged table of `python -m wm sweep watermas --grid
    seed=0,1,2 -p seeds 1`): the chapter shows its runs instead of training."""
    models: tuple = param(("smallcnn", "resnet18"), choices=MODELS)
    """Architectures (`MODELS`); the paper used VGG16, ResNet18, MobileNetV3 and Swin-T on CIFAR-10. Must
    include smallcnn, on which experiments 2-6 run."""
    width: int = param(16, ge=1, le=MAX_WIDTH)
    """Width of the small CNN."""
    n_train: int = param(30000, ge=1, le=FASHION_TRAIN)
    """Training images drawn from Fashion-MNIST's 60 000 (the small CNN trains on all of them)."""
    n_test: int = param(2000, ge=1, le=FASHION_TEST)
    """Held-out test images for accuracy (and the sharpness measurement's pool)."""
    n_val: int = param(2000, ge=1, le=FASHION_TRAIN)
    """Validation images: further training images of the seed's draw that no model trains on; the
    sharpness budget (the cap) is measured on them, never on the test images."""
    epochs: float = param(3, gt=0, le=MAX_EPOCHS)
    """Training epochs of the small CNN, from scratch with the watermark present from step 0."""
    resnet18_stem: str = param("imagenet", choices=("imagenet", "cifar"))
    """ResNet-18's stem (wm.models.resnet18): `imagenet` (torchvision's 7×7/2 conv + max-pool,
    ~0.03 GMAC per 28×28 image, ~660 images/s in training on 2 CPU cores) in the cpu profile;
    `cifar` (3×3/1, no pool, ~0.43 GMAC, ~80 images/s on 2 cores: only a token budget would fit)
    in the gpu profile."""
    large_n_train: int = param(8000, ge=1, le=FASHION_TRAIN)
    """Training images (the first ones of n_train) for the torchvision architectures."""
    large_epochs: float = param(2, gt=0, le=MAX_EPOCHS)
    """Training epochs of the torchvision architectures."""
    large_n_test: int = param(2000, ge=1, le=FASHION_TEST)
    """Test images (the first ones of n_test) for the torchvision architectures' evaluations."""
    batch_size: int = param(128, ge=2, le=MAX_BATCH)
    """Samples per step."""
    lr: float = param(0.05, gt=0, le=10)
    """Peak SGD (Nesterov) learning rate, warm-up then cosine decay."""
    weight_decay: float = param(5e-4, ge=0, le=1)
    """SGD weight decay (the group's 5e-4); the freeze keeps it off the keyed weights."""
    n_bits: int = param(256, ge=1, le=10**7)
    """Payload: keyed weights (one bit each) of the main experiments."""
    kappa: float = param(1.0, gt=0, le=1e6)
    """κ of the value rule w_k = ±κ·σ_ℓ: the keyed weights look like ordinary weights of their layer."""
    rho: float = param(0.05, gt=0, le=1e6)
    """ρ, the norm of WaterMAS's perturbation of the keyed weights (SAM's default)."""
    lam: float = param(5.0, ge=0, le=1e6)
    """λ of WaterMAS, (1+λ)·L(θ) − λ·L(θ+ε_K). What matters is λ·ρ: the extra gradient is
    λ·(g − g_pert) ≈ −λ·∇_F(ε_K·g_K), i.e. of order λ·ρ. Measured (small CNN width 16, 6400
    images, 100 steps, 256 bits, ρ = 0.05; SAM-sharpness at ρ = 0.05 on 1000 test images):
    freeze-only 0.0023 at 80.8% accuracy; λ = 0.5 and 2 indistinguishable from it; λ = 5 with
    the 0.05 cap 0.0036 (1.6× sharper) at 80.0%; λ = 10 uncapped ran away (0.28, 28.9%: the
    unbounded maximisation of pitfall 10). So the smallest λ with a visible effect, kept capped
    (longer runs: see max_sharpness, which then sets the trade-off)."""
    max_sharpness: float | None = param(0.01, gt=0, le=1e6)
    """Cap on S_K: a step whose perturbed loss already exceeds L(θ) by this much drops the −λ term
    (None: no cap). The cap, more than λ, sets the trade-off: measured (small CNN width 16, 30k
    images × 3 epochs, 256 bits, λ = 5), cap 0.05 gave SAM-sharpness 0.056 (28× freeze-only's
    0.002) at a cost of 4.35 accuracy points; cap 0.01 gave 0.0065 (3.3×) at 0.1 point. The
    default keeps the imperceptibility budget of 1 point; the notebook sweeps it (`sweep_caps`).
    TART's replica term gets the same cap."""
    sweep_caps: tuple = param((0.005, 0.02, 0.05), gt=0, le=1e6)
    """Caps of the sharpness-budget sweep (besides max_sharpness)."""
    tart_replicas: int = param(2, ge=1, le=64)
    """R, noisy replicas per step of the ICPR 2020 baseline (the group's testbed uses 2)."""
    tart_noise: float = param(1.0, gt=0, le=1e6)
    """Replica noise std relative to each keyed weight's magnitude κ·σ_ℓ (1.0: the scale of the
    first step of the noise-attack grid). The ancestor's absolute 0.01 was set for values of ±1-±10."""
    tart_lam: float = param(0.5, ge=0, lt=1)
    """λ of TART's L(Γ0) − (λ/R)·Σ_r L(Γ_r). Must stay below 1: the task loss's own weight is
    1 − λ (with λ ≥ 1 the objective would maximise the loss). Measured as above: λ = 0.5 with
    noise 0.5 / 2: sharpness 0.0027 / 0.0036 at 76.9% / 77.8% (the halved task weight costs
    accuracy in a short run)."""
    uchida_bits: int = param(64, ge=1, le=10**7)
    """T, bits of the Uchida baseline (≤ M of the host layer, 9·width for the small CNN's)."""
    uchida_lam: float = param(0.1, gt=0, le=1e6)
    """λ_U of the Uchida regulariser, on the summed BCE. Uchida et al.'s 0.01 assumed hundreds of
    epochs; measured here (width 16, 64 bits, 100 steps): 0.01 left 11% BER, 0.1 gave 0% at the
    same accuracy (80.6% vs 79.6%)."""
    payloads: tuple = param((64, 256, 1024, 4096), of=int, ge=1, le=10**7)
    """Payload sweep (bits) for the payload / imperceptibility / robustness trade-off."""
    noise_k: tuple = param((0.05, 0.1, 0.2, 0.35, 0.5, 1, 3, 9), gt=0, le=1e6)
    """Gaussian-noise attack: std = k × the layer's weight std. The group's grid is 1..9; on these
    models k = 1 already leaves chance accuracy (measured), so the grid adds fractions below 1."""
    prune_amounts: tuple = param((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), ge=0, le=1)
    """Per-layer L1 pruning fractions (the group's grid)."""
    quant_bits: tuple = param((16, 8, 6, 4, 3, 2), of=int, ge=1, le=32)
    """Min-max weight quantization bit widths."""
    finetune_epochs: tuple = param((1, 3), gt=0, le=MAX_EPOCHS)
    """Fine-tuning attack epochs."""
    finetune_lrs: tuple = param((0.001, 0.01), gt=0, le=10)
    """Fine-tuning attack learning rates (the group's attack: SGD 0.01, momentum 0.9, wd 5e-4)."""
    finetune_fraction: float = param(0.1, gt=0, le=1)
    """Share of the training set the fine-tuning attacker holds."""
    sharpness_samples: int = param(1000, ge=1, le=FASHION_TEST)
    """Test images the sharpness measurement uses."""
    sharpness_random: int = param(8, ge=1, le=10000)
    """Random directions averaged by the sharpness measurement."""
    seg_size: int = param(128, ge=32, le=4096)
    """Segmentation experiment: images resized to seg_size × seg_size."""
    seg_n_train: int = param(500, ge=1, le=10**6)
    """Segmentation experiment: at most this many training images."""
    seg_epochs: float = param(5, gt=0, le=MAX_EPOCHS)
    """Segmentation experiment: training epochs of DeepLabV3 (random initialisation)."""

    PROFILE_DEFAULTS = {
        "smoke": dict(seeds=2, models=("smallcnn",), width=8, n_train=1000, n_val=300, n_test=300, epochs=1, large_n_train=256,
                      large_epochs=0.5, large_n_test=100, n_bits=64, uchida_bits=16, payloads=(16, 64), noise_k=(0.1, 1), sweep_caps=(0.05,),
                      prune_amounts=(0.5, 0.9), quant_bits=(8, 2), finetune_epochs=(0.5,), finetune_lrs=(0.01,),
                      sharpness_samples=200, sharpness_random=2, seg_size=64, seg_n_train=16, seg_epochs=1),
        "cpu": dict(),
        # the small CNN stays: experiments 2-6 (robustness, payload, security, controls) run on it
        "gpu": dict(models=("smallcnn", "resnet18", "vgg16", "mobilenet_v3_small", "swin_t"), resnet18_stem="cifar", n_train=55000, n_val=5000, n_test=10000,
                    epochs=4, large_n_train=55000, large_epochs=4, large_n_test=10000, batch_size=256, lr=0.1, uchida_bits=256,
                    sharpness_samples=5000),
    }

    def check(self) -> None:
        require("smallcnn" in self.models, "models", self.models,
                "a tuple that includes smallcnn: experiments 2-6 (robustness, payload, security, controls) run on it")
        require(self.n_train + self.n_val <= FASHION_TRAIN, "n_val", self.n_val,
                f"at most {FASHION_TRAIN} - n_train ({FASHION_TRAIN - self.n_train}): validation images are not trained on")
        require(self.large_n_train <= self.n_train, "large_n_train", self.large_n_train, f"at most n_train ({self.n_train})")
        require(self.large_n_test <= self.n_test, "large_n_test", self.large_n_test, f"at most n_test ({self.n_test})")
        require(self.sharpness_samples <= self.n_test, "sharpness_samples", self.sharpness_samples,
                f"at most n_test ({self.n_test})")
        # every model trains on a full batch at least; the fine-tuning attacker's share is max(1, ...) images
        require(self.n_train >= self.batch_size, "n_train", self.n_train, f"at least batch_size ({self.batch_size})")
        require(self.large_n_train >= self.batch_size, "large_n_train", self.large_n_train,
                f"at least batch_size ({self.batch_size})")

    def budget(self, model: str) -> tuple[int, float, int]:
        """(training images, epochs, test images) for MODEL: the small CNN's or the torchvision
        architectures'."""
        if model == "smallcnn":
            return self.n_train, self.epochs, self.n_test
        return self.large_n_train, self.large_epochs, self.large_n_test

    def train_config(self, seed: int, epochs: float) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           seed=seed, progress=False)  # bars would be stored as notebook outputs


def build_model(name: str, cfg: Config | None = None, norm: str = "batch") -> nn.Module:
    """A freshly initialised 1×28×28 → 10-class classifier by name (`MODELS`). NORM: the small
    CNN's normalisation ("none": the variant without batch norm, same conv shapes, that the null
    populations use as a second architecture every key of this module can still read)."""
    if name == "smallcnn":
        return wm_models.SmallCNN(in_channels=1, num_classes=10, width=cfg.width if cfg else 16, norm=norm)
    if name == "swin_t":
        return wm_models.swin_t(1, 10)
    if name == "resnet18":
        return wm_models.resnet18(1, 10, stem=cfg.resnet18_stem if cfg else "cifar")
    if name in MODELS:
        return wm_models.build(name, in_channels=1, num_classes=10)
    raise ValueError(f"model={name!r} is unknown: choose from {', '.join(MODELS)}")


def make_hooks(method: str, key, cfg: Config, seed: int = 0, label_smoothing: float = 0.0) -> list[Hook]:
    """The hooks of METHOD: KEY is a `Key`, or a `UchidaKey` for `uchida`. Each sharpening hook
    includes the freeze; a list so the caller can add its own."""
    if method == "none":
        return []
    if method == "uchida":
        if not isinstance(key, UchidaKey):
            raise TypeError("method 'uchida' needs a UchidaKey")
        return [UchidaHook(key, cfg.uchida_lam)]
    if not isinstance(key, Key):
        raise TypeError(f"method {method!r} needs a Key")
    if method == "freeze_only":
        return [FreezeHook(key)]
    if method == "watermas":
        return [SharpnessHook(key, cfg.rho, cfg.lam, cfg.max_sharpness, label_smoothing)]
    if method == "tart":
        return [TartHook(key, cfg.tart_replicas, cfg.tart_noise, cfg.tart_lam, cfg.max_sharpness,
                         label_smoothing, seed=seed)]
    raise ValueError(f"method={method!r} is unknown: choose from {', '.join(METHODS)}")


def fresh(cfg: Config, method: str, seed: int, model_name: str = "smallcnn", n_bits: int | None = None,
          norm: str = "batch") -> tuple[nn.Module, Key | UchidaKey]:
    """The freshly initialised model (seeded by SEED) and the key METHOD draws on it: what `train`
    starts from, and the owner's key itself without training (its positions and bits depend only
    on the architecture, SEED and the payload)."""
    seed_everything(seed)
    model = build_model(model_name, cfg, norm)
    key = (draw_uchida_key(model, cfg.uchida_bits, seed) if method == "uchida"
           else draw_key(model, n_bits or cfg.n_bits, seed, cfg.kappa))
    return model, key


def train(cfg: Config, method: str, x: torch.Tensor, y: torch.Tensor, seed: int, key=None,
          model_name: str = "smallcnn", n_bits: int | None = None, epochs: float | None = None,
          hooks: list[Hook] | None = None, norm: str = "batch") -> tuple[nn.Module, Key | UchidaKey, History]:
    """Train MODEL_NAME from scratch on (X, Y) with METHOD; returns (model, key, History).

    The key is drawn on the fresh model (seeded by SEED) unless KEY is given, its values are
    written before the first step, and the method's hooks run throughout. For `none` the key is
    drawn but nothing is written: the clean model's negative control. For `uchida` the key is a
    `UchidaKey` (cfg.uchida_bits). HOOKS, if given, replace make_hooks' (e.g. to read their stats).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown: choose from {', '.join(METHODS)}")
    model, drawn = fresh(cfg, method, seed, model_name, n_bits, norm)
    model, key = model.to(x.device), drawn if key is None else key
    if method not in ("none", "uchida"):
        embed_values(model, key)
    n, e, _ = cfg.budget(model_name)
    hooks = make_hooks(method, key, cfg, seed) if hooks is None else hooks
    history = fit(model, x[:n], y[:n], cfg.train_config(seed, epochs or e), hooks=hooks)
    return model, key, history


# ---------------------------------------------------------------------------------------------
# 2. Segmentation (the paper's DeepLabV3 experiment, run when a data set is present)
# ---------------------------------------------------------------------------------------------


def train_segmentation(cfg: Config, method: str, seg, seed: int) -> tuple[nn.Module, Key, History]:
    """DeepLabV3 trained from scratch on SEG (a wm.data.Segmentation) with METHOD (none or a keyed
    method); returns (model, key, History)."""
    if method not in ("none",) + tuple(m for m in METHODS if m not in ("none", "uchida")):
        raise ValueError(f"segmentation supports none, freeze_only, watermas and tart; got {method!r}")
    seed_everything(seed)
    model = wm_models.SegmentationNet(seg.num_classes).to(seg.x_train.device)
    key = draw_key(model, cfg.n_bits, seed, cfg.kappa)
    if method != "none":
        embed_values(model, key)
    tc = TrainConfig(epochs=cfg.seg_epochs, batch_size=min(16, len(seg.x_train)), lr=cfg.lr,
                     weight_decay=cfg.weight_decay, seed=seed, progress=False)
    history = fit(model, seg.x_train, seg.y_train, tc, hooks=make_hooks(method, key, cfg, seed))
    return model, key, history
