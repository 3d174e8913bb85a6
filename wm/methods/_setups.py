"""The data and budgets the methods of one kind share (not a method: nothing registers here).

`classifier_setup` and `image_setup` draw the owner's, the attacker's and the test data once; the
`*_config` functions turn a Setup's budget into the studies' own Configs, so that each method
keeps its paper's recipe (optimizer, learning rate, λ, loss weights) and only data, sizes and
epochs are shared.
"""

from __future__ import annotations

import torch

from wm import data
from wm import image_processing as ip
from wm import null_embedding as ne
from wm import watermas as wmas
from wm.methods import Method, Setup


# What the methods read from a Setup's budget beyond sizes: the decision rules' thresholds and the
# own attacks' strengths. Their one home is the attack suite's Config (wm.suite); a Setup built
# without them takes that Config's defaults.
EXTRA = {"classifier": ("ber_fpr", "piracy_epochs", "piracy_lr"),
         "image": ("sr_threshold", "ber_fpr", "stage2", "stage2_epochs", "overwrite_psnr", "ss_bits", "w_basic", "ss_psnr")}


def _suite_defaults(kind: str) -> dict:
    from wm.suite import Config  # imported here: wm.suite imports this module
    budget = Config().budget("image-service" if kind == "image" else "classifier-white")
    return {k: budget[k] for k in EXTRA[kind]}


def classifier_setup(profile: str, seed: int, device, n_train: int, n_attacker: int, n_test: int,
                     width: int, epochs: float, batch_size: int, n_bits: int, **budget) -> Setup:
    """Fashion-MNIST: the owner's N_TRAIN images, the attacker's disjoint N_ATTACKER, N_TEST held
    out. BUDGET: what EXTRA names, where it differs from the suite Config's defaults."""
    ds = data.load_classification("fashion_mnist", n_train=n_train + n_attacker, n_test=n_test, seed=seed,
                                  device=device)
    return Setup(seed, torch.device(device),
                 budget=dict(_suite_defaults("classifier"), profile=profile, width=width, epochs=epochs, batch_size=batch_size,
                             n_bits=n_bits, **budget),
                 data=dict(x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train], x_att=ds.x_train[n_train:],
                           y_att=ds.y_train[n_train:], x_test=ds.x_test, y_test=ds.y_test))


def image_setup(profile: str, seed: int, device, size: int, n_owner: int, n_attacker: int, n_test: int,
                m_epochs: float, stage1_epochs: float, **budget) -> Setup:
    """Deraining pairs from disjoint photos: the owner's, the attacker's and the test photos'.
    BUDGET: what EXTRA names, where it differs from the suite Config's defaults."""
    budget = dict(_suite_defaults("image"), profile=profile, size=size, n_owner=n_owner, n_attacker=n_attacker, n_test=n_test,
                  m_epochs=m_epochs, stage1_epochs=stage1_epochs, **budget)
    icfg = image_config(Setup(seed, torch.device(device), budget))
    ip.watermark_image(icfg.watermark, icfg.size, icfg.seed)  # the logo file is checked before any training
    owner_photos, attacker_photos = ip.split_photos(data.photos("train"))
    pairs = dict(own=ip.make_pairs(owner_photos, n_owner, size, seed, icfg.rain, device),
                 att=ip.make_pairs(attacker_photos, n_attacker, size, seed + 1, icfg.rain, device),
                 test=ip.make_pairs(data.photos("test"), n_test, size, seed + 2, icfg.rain, device))
    return Setup(seed, torch.device(device), budget, pairs)


def ne_config(setup: Setup) -> ne.Config:
    b, d = setup.budget, setup.data
    return ne.Config.from_profile(b["profile"], seed=setup.seed, model="smallcnn", width=b["width"],
                                  n_train=len(d["x_train"]), n_test=len(d["x_test"]), n_verify=len(d["x_test"]),
                                  epochs=b["epochs"], batch_size=b["batch_size"])


def wmas_config(setup: Setup) -> wmas.Config:
    b, d = setup.budget, setup.data
    n, n_test = len(d["x_train"]), len(d["x_test"])
    return wmas.Config.from_profile(b["profile"], seed=setup.seed, models=("smallcnn",), width=b["width"],
                                    n_train=n, n_test=n_test, epochs=b["epochs"], batch_size=b["batch_size"],
                                    n_bits=b["n_bits"], large_n_train=n, large_n_test=n_test,
                                    sharpness_samples=min(1000, n_test))


def image_config(setup: Setup) -> ip.Config:
    b = setup.budget
    return ip.Config.from_profile(b["profile"], seed=setup.seed, size=b["size"], n_owner=b["n_owner"],
                                  n_attacker=b["n_attacker"], n_test=b["n_test"], m_epochs=b["m_epochs"],
                                  stage1_epochs=b["stage1_epochs"], stage2_epochs=b["stage2_epochs"],
                                  ss_bits=(b["ss_bits"],), w_basic=b["w_basic"])


def train_service(setup: Setup) -> tuple[torch.nn.Module, ip.Config]:
    """The unmarked deraining model M every image-service method protects (and its twin)."""
    icfg = image_config(setup)
    m_net, _ = ip.train_target(icfg, setup.data["own"], seed=setup.seed, arch=setup.budget.get("arch", "unet"))
    return m_net, icfg


def outputs(suspect, setup: Setup) -> torch.Tensor:
    """What a service delivers for the test inputs: SUSPECT's 8-bit outputs, or SUSPECT itself
    when it already is a batch of delivered images (an attack on the outputs)."""
    if isinstance(suspect, torch.Tensor):
        return suspect
    return ip.deliver(ip.apply(suspect, setup.data["test"].a))


OVERWRITE = 7
"""Seed offset of a thief's overwriting mark."""


class ServiceMethod(Method):
    """What the image-service methods share: their kind, their twin (the unmarked deraining
    model M), utility as the PSNR of the delivered test outputs against the clean ground truth,
    fidelity as the PSNR of the marked outputs against M's, and the overwrite attack: the thief
    stamps its own additive spread-spectrum mark on every output it resells, at a given PSNR
    (what a thief without the owner's embedder can cheaply do to claim the outputs as its own)."""

    kind = "image-service"
    unit = "PSNR (dB)"
    twin_recipe, twin_model = "deraining", "unet"
    own_attacks = {"overwrite": "PSNR of the thief's mark (dB)"}
    null_archs = ("unet", "resnet9")
    """M's residual U-Net, and pix2pix's ResNet-9 trained the same way but with L2, where L1 leaves it
    the identity (wm.image_processing.TARGET_LOSS)."""

    def train_twin(self, setup: Setup) -> torch.nn.Module:
        self.arch(setup)  # checked here: train_service reads it
        return train_service(setup)[0]

    def utility(self, suspect, setup: Setup) -> float:
        return ip.image_quality(outputs(suspect, setup), setup.data["test"].clean)["psnr"]

    def fidelity(self, trained, setup: Setup) -> dict[str, float]:
        return ip.image_quality(outputs(trained.marked, setup), outputs(trained.twin, setup))

    def own_grid(self, attack: str, setup: Setup) -> list:
        if attack == "overwrite":
            return list(setup.budget["overwrite_psnr"])
        raise ValueError(f"{self.name} has no attack {attack!r}")

    def attack(self, attack: str, strength, suspect, trained, setup: Setup):
        if attack != "overwrite":
            return super().attack(attack, strength, suspect, trained, setup)
        ss = ip.SpreadSpectrum.create(setup.budget["ss_bits"], setup.budget["size"], strength,
                                      setup.seed + OVERWRITE)
        out = ss.embed(outputs(suspect, setup))
        return out, {"bit_acc": ss.bit_accuracy(out)}
