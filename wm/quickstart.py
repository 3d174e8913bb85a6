"""Quickstart: a clean classifier through the shared attack suite (the pipeline end to end).

Not a paper's method: this is the utility side of every attack in `wm.attacks`, measured on an
unwatermarked small CNN trained on Fashion-MNIST. It proves the runner, the training loop, the
attacks and the results table work together, and gives the reference a watermark study needs:
how much accuracy each attack strength costs a model that carries no watermark at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from wm.config import FASHION_TEST, FASHION_TRAIN, MAX_BATCH, MAX_EPOCHS, MAX_SEED, MAX_WIDTH, StudyConfig, param, require


@dataclass
class Config(StudyConfig):
    """Parameters of the quickstart notebook."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = param(0, ge=0, le=MAX_SEED)
    """Seeds the model's initialisation, the batch order, the subsets and the attacks."""
    n_train: int = param(60000, ge=1, le=FASHION_TRAIN)
    """Training images drawn from Fashion-MNIST's 60 000."""
    n_test: int = param(10000, ge=1, le=FASHION_TEST)
    """Test images drawn from Fashion-MNIST's 10 000."""
    epochs: float = param(5, gt=0, le=MAX_EPOCHS)
    """Training epochs of the clean model."""
    batch_size: int = param(128, ge=2, le=MAX_BATCH)
    """Samples per step."""
    lr: float = param(0.05, gt=0, le=10)
    """Peak SGD learning rate (warm-up then cosine decay)."""
    width: int = param(32, ge=1, le=MAX_WIDTH)
    """Channels of the small CNN's first layer."""
    attack_fraction: float = param(0.1, gt=0, le=1)
    """Share of the training set the attacker holds for fine-tuning and distillation."""
    attack_epochs: float = param(2, gt=0, le=MAX_EPOCHS)
    """Epochs of the fine-tuning and distillation attacks."""

    PROFILE_DEFAULTS = {
        "smoke": dict(n_train=2000, n_test=500, epochs=1, width=8, attack_epochs=0.5),
        "cpu": dict(),
        "gpu": dict(epochs=10, width=64, batch_size=256, lr=0.1),
    }

    def check(self) -> None:
        require(self.n_train >= self.batch_size, "n_train", self.n_train, f"at least batch_size ({self.batch_size})")


# The attack grid: each attack's knob from harmless to destructive.
PRUNE_AMOUNTS = (0.1, 0.3, 0.5, 0.7, 0.9)
QUANT_BITS = (8, 6, 4, 3, 2)
NOISE_K = (0.1, 0.25, 0.5, 1.0, 2.0)
FINETUNE_LRS = (0.001, 0.01, 0.05)


def run_attacks(cfg: Config, model, data, results, make_student) -> None:
    """Every shared attack over its grid; one test_acc row per (attack, strength)."""
    from wm import attacks
    from wm.train import evaluate

    def record(attack: str, strength, attacked) -> None:
        results.add(method="none", model="smallcnn", experiment="robustness", attack=attack,
                    strength=strength, seed=cfg.seed, metric="test_acc",
                    value=evaluate(attacked, data.x_test, data.y_test))

    for amount in PRUNE_AMOUNTS:
        record("prune", amount, attacks.prune(model, amount))
    for bits in QUANT_BITS:
        record("quantize", bits, attacks.quantize(model, bits))
    for k in NOISE_K:
        record("noise", k, attacks.weight_noise(model, k, seed=cfg.seed))
    for lr in FINETUNE_LRS:
        record("finetune", lr, attacks.finetune(model, data.x_train, data.y_train, epochs=cfg.attack_epochs,
                                                lr=lr, fraction=cfg.attack_fraction, seed=cfg.seed,
                                                batch_size=cfg.batch_size))
    # Distillation: the attacker's unlabelled share of the data, a fresh student of the same shape.
    n = max(1, round(cfg.attack_fraction * len(data.x_train)))
    student = attacks.distill(model, make_student(), data.x_train[:n], epochs=cfg.attack_epochs * 2,
                              lr=cfg.lr, seed=cfg.seed, batch_size=cfg.batch_size)
    record("distill", cfg.attack_epochs * 2, student)
