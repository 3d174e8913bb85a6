"""Quickstart: a clean classifier through the shared attack suite (the pipeline end to end).

Not a paper's method: this is the utility side of every attack in `wm.attacks`, measured on an
unwatermarked small CNN trained on Fashion-MNIST. It proves the runner, the training loop, the
attacks and the results table work together, and gives the reference a watermark study needs:
how much accuracy each attack strength costs a model that carries no watermark at all.
It is removed once the three studies' notebooks exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from wm.config import StudyConfig, require


@dataclass
class Config(StudyConfig):
    """Parameters of the quickstart notebook."""

    profile: str = "cpu"
    """smoke, cpu or gpu (resolved from auto)."""
    seed: int = 0
    """Seeds the model's initialisation, the batch order, the subsets and the attacks."""
    n_train: int = 60000
    """Training images drawn from Fashion-MNIST's 60 000."""
    n_test: int = 10000
    """Test images drawn from Fashion-MNIST's 10 000."""
    epochs: float = 5
    """Training epochs of the clean model."""
    batch_size: int = 128
    """Samples per step."""
    lr: float = 0.05
    """Peak SGD learning rate (warm-up then cosine decay)."""
    width: int = 32
    """Channels of the small CNN's first layer."""
    attack_fraction: float = 0.1
    """Share of the training set the attacker holds for fine-tuning and distillation."""
    attack_epochs: float = 2
    """Epochs of the fine-tuning and distillation attacks."""

    PROFILE_DEFAULTS = {
        "smoke": dict(n_train=2000, n_test=500, epochs=1, width=8, attack_epochs=0.5),
        "cpu": dict(),
        "gpu": dict(epochs=10, width=64, batch_size=256, lr=0.1),
    }

    def check(self) -> None:
        require(isinstance(self.seed, int), "seed", self.seed, "an integer")
        require(isinstance(self.n_train, int) and 1 <= self.n_train <= 60000, "n_train", self.n_train, "an integer in 1..60000")
        require(isinstance(self.n_test, int) and 1 <= self.n_test <= 10000, "n_test", self.n_test, "an integer in 1..10000")
        require(self.epochs > 0, "epochs", self.epochs, "> 0")
        require(isinstance(self.batch_size, int) and self.batch_size >= 2, "batch_size", self.batch_size, "an integer ≥ 2")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(isinstance(self.width, int) and self.width >= 1, "width", self.width, "an integer ≥ 1")
        require(0 < self.attack_fraction <= 1, "attack_fraction", self.attack_fraction, "in (0, 1]")
        require(self.attack_epochs > 0, "attack_epochs", self.attack_epochs, "> 0")


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
