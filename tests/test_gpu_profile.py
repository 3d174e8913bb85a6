"""Every notebook runs the gpu profile's code paths on the CPU, at a tiny size.

A user with a GPU gets the gpu profile from `python -m wm book`; before this test, the first to
run it was that user (the WaterMAS notebook could not run at all: its gpu models left out the
small CNN its later cells use). Here each notebook runs with `--profile gpu --allow-cpu`: the
models, architectures and branches the gpu profile selects stay as they are, and only sizes,
epochs and grids are overridden (TINY), so that a cell that assumes a model or branch the profile
does not build fails here.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json

import pytest

from wm import module_name, runner

pytestmark = pytest.mark.slow

TINY = {
    "quickstart": dict(n_train=256, n_test=128, epochs=0.5, width=8, batch_size=64, attack_epochs=0.25),
    "null_embedding": dict(seeds=1, n_train=256, n_test=64, n_verify=64, epochs=0.25, batch_size=64,
                           sweep_n_train=256, sweep_epochs=0.25, pirate_lrs=(0.01,), pirate_epochs=(0.25,),
                           attack_epochs=0.25, sweep_lams=(1.0,), sweep_ns=(4,), width=8),
    "watermas": dict(seeds=1, n_train=256, n_val=64, n_test=128, epochs=0.25, width=8, batch_size=64, large_n_train=64,
                     large_epochs=0.5, large_n_test=64, n_bits=64, uchida_bits=16, payloads=(16, 64), noise_k=(0.1, 1),
                     sweep_caps=(0.05,), prune_amounts=(0.5, 0.9), quant_bits=(8, 2), finetune_epochs=(0.25,),
                     finetune_lrs=(0.01,), sharpness_samples=64, sharpness_random=2, seg_size=64, seg_n_train=8,
                     seg_epochs=1),
    "image_processing": dict(seeds=1, size=16, n_owner=32, n_attacker=32, n_test=16, batch_size=16, m_width=8, m_epochs=1,
                             h_width=8, r_width=8, d_width=8, stage1_epochs=1, stage2_epochs=1, sm_width=8,
                             sm_epochs=1, sm_losses=("l1_adv",), ss_bits=(16,)),
    "attack_suite": dict(seeds=1, width=8, n_train=256, n_attacker=128, n_test=128, epochs=0.25, batch_size=64,
                         n_bits=64, size=16, n_owner=32, n_attacker_pairs=32, n_test_pairs=16, m_epochs=1,
                         stage1_epochs=1, stage2_epochs=1, finetune_epochs=(0.25,), prune_amounts=(0.5,),
                         quant_bits=(8,), noise_k=(0.1,), distill_epochs=(0.25,), surrogate_epochs=(1,),
                         piracy_epochs=(0.25,), overwrite_psnr=(35.0,), timings=False),
    "nulls": dict(members=1, budget="width=8,n_train=256,n_attacker=128,n_test=128,epochs=0.25,batch_size=64,"
                                    "n_bits=64,size=16,n_owner=32,n_attacker_pairs=32,n_test_pairs=16,m_epochs=1,"
                                    "stage1_epochs=1,stage2_epochs=1"),
    "tuning": dict(seeds=1, n_val=64, ne_lrs=(0.1,), ne_fractions=(0.25,),
                   ne_budget="n_train=256,n_test=64,n_verify=64,epochs=0.25,batch_size=64,width=8",
                   ip_weights=(3e5,), ip_widths=(8,), ip_n_val=16,
                   ip_budget="size=16,n_owner=32,n_attacker=32,n_test=16,batch_size=16,m_width=8,m_epochs=1,"
                             "h_width=8,r_width=8,d_width=8,stage1_epochs=1,sm_epochs=1",
                   suite_weights=(3e4,), suite_budget="size=16,n_owner=32,n_attacker_pairs=32,n_test_pairs=16,m_epochs=1,"
                                                     "stage1_epochs=1"),
    "comparison": {},
}
"""Per notebook: sizes, epochs and grids small enough for a CPU. Never a model or a branch."""


def _choices(study: str) -> dict:
    """What the gpu profile selects besides sizes: strings, booleans and tuples of strings."""
    if importlib.util.find_spec(module_name(study)) is None:
        return {}
    gpu = importlib.import_module(module_name(study)).Config.PROFILE_DEFAULTS["gpu"]
    return {k: v for k, v in gpu.items()
            if isinstance(v, (str, bool)) or (isinstance(v, tuple) and all(isinstance(e, str) for e in v))}


def test_every_notebook_has_tiny_overrides_that_keep_the_gpu_choices():
    assert set(TINY) == set(runner.studies())
    for study, tiny in TINY.items():
        kept = _choices(study)
        assert not set(tiny) & set(kept), f"{study}: TINY overrides a model or branch of the gpu profile"
        if importlib.util.find_spec(module_name(study)) is not None:
            names = {f.name for f in dataclasses.fields(importlib.import_module(module_name(study)).Config)}
            assert set(tiny) <= names


@pytest.mark.parametrize("study", runner.studies())
def test_notebook_runs_the_gpu_code_paths_on_the_cpu(study, tmp_path):
    params = {k: repr(v) for k, v in TINY[study].items()}
    path = runner.run(study, "gpu", params, out=tmp_path, quiet=True, allow_cpu=True)
    nb = json.loads(path.read_text())
    prov = nb["metadata"]["wm_provenance"]
    assert prov["profile"] == "gpu"
    for name, value in _choices(study).items():  # the gpu profile's models and branches ran
        ran = json.loads((tmp_path / "results" / f"{study}.json").read_text())["parameters"][name]
        assert ran == (list(value) if isinstance(value, tuple) else value), name
