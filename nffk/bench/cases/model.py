"""A full model step of the scaling-study models on a batch of QM9 molecules: inference (energy
and forces) and a training step (energy and forces, the study's loss, backward). With
conservative forces the training step differentiates through the force computation, i.e. the
double backward of every kernel: the force-training pattern of NequIP/MACE users.

nffk's model on its fastest backend is compared with the same model, same weights, on nffk's
pure-torch reference backend (gather -> sparse-CG tensor product -> index_add, the unfused layout
of e3nn-based models). There is no e3nn peer: e3nn ships layers, not these models. Molecules are
QM9 geometries (see the neighbour-list cases) with elements drawn at random from H, C, N, O, F and
random labels: the timing does not depend on them."""
from __future__ import annotations

import numpy as np
import torch

from nffk.bench.cases._common import cached
from nffk.bench.cases.neighbor_list import qm9_molecules
from nffk.bench.registry import Built, Case, Implementation

ELEMENTS = (1, 6, 7, 8, 9)
CUTOFF = 5.0
# name -> (architecture, lmax, width, forces)
CONFIGS = {
    "equivariant-lmax2": ("Equivariant", 2, 16, "conservative"),
    "equivariant-lmax1": ("Equivariant", 1, 32, "conservative"),
    "equivariant-lmax3": ("Equivariant", 3, 8, "conservative"),
    "mpnn": ("MPNN", None, 64, "conservative"),
    "tiny": ("Equivariant", 1, 4, "conservative"),  # smoke tests
}
DEFAULTS = {"quick": ["equivariant-lmax2"], "default": ["equivariant-lmax2", "equivariant-lmax1"],
            "full": ["equivariant-lmax2", "equivariant-lmax1", "equivariant-lmax3", "mpnn"]}
MOLECULES = {"quick": 8, "default": 32, "full": 128}


def random_batch(molecules: int, seed: int, dtype):
    """A collated batch of `molecules` QM9 geometries with random elements and labels."""
    from nffk.data import collate
    from nffk.data.structure import Structure

    rng = np.random.default_rng(seed)
    structures = []
    for index, system in enumerate(qm9_molecules(molecules, seed)):
        n = system["positions"].shape[0]
        structures.append(Structure(numbers=rng.choice(ELEMENTS, n).astype(np.int64), positions=system["positions"],
                                    energy=float(rng.normal()), forces=rng.normal(size=(n, 3)), molecule=index))
    return collate(structures, cutoff=CUTOFF, dtype=dtype)


def _model(name: str, backend: str, device, dtype):
    from nffk.models import build_model

    arch, lmax, width, forces = CONFIGS[name]
    options = {"backend": backend} if arch == "Equivariant" else {}

    def build():
        torch.manual_seed(0)  # same weights for every backend
        return build_model(arch, width, lmax, elements=ELEMENTS, cutoff=CUTOFF, avg_num_neighbors=15.0,
                           forces=forces, **options).to(device=device, dtype=dtype)
    return cached(("model", name, backend, device, dtype), build)


def inference(model):
    def run(batch):
        model.eval()  # set per call: the same model object serves both passes
        return model(batch)["forces"].detach()
    return run


def training_step(model):
    from nffk.train import Normalisation, loss_terms

    norm = Normalisation(1.0, 1.0)

    def run(batch):
        model.train()  # conservative forces keep their graph only in training mode
        model.zero_grad(set_to_none=True)
        terms = loss_terms(model(batch), batch, norm)
        loss = terms.loss(terms.structures, terms.atoms)
        loss.backward()
        return loss.detach()
    return run


PASSES = {"inference": inference, "training step": training_step}


def _implementations(name, pass_name, device, dtype) -> list:
    def built(backend):
        def build():
            model = _model(name, backend, device, dtype)
            return Built(PASSES[pass_name](model), output=lambda batch: inference(model)(batch),
                         note=f"backend={backend}, {model.num_parameters} parameters")
        return build
    impls = [Implementation("nffk", built("auto"))]
    if CONFIGS[name][0] == "Equivariant":  # the MPNN has no nffk kernels to switch
        impls.append(Implementation("nffk[reference]", built("reference")))
    return impls


def cases(configs, mode: str, device, dtype, sweeps: bool = False, reference: bool = False) -> list:
    del sweeps, reference  # the reference backend is always the baseline here
    molecules = MOLECULES[mode]
    batches: dict = {}

    def make_inputs(seed):
        if seed not in batches:
            batch = random_batch(molecules, seed, dtype)
            batches[seed] = (batch.to(device),)
        return batches[seed]

    result = []
    for name in configs:
        arch, lmax, width, forces = CONFIGS[name]
        label = f"{arch}" + (f" lmax={lmax}" if lmax else "") + f", width {width}, {forces} forces"
        for pass_name in PASSES:
            result.append(Case(
                op="model", config=name, pass_name=pass_name, size=molecules, size_name="molecules",
                make_inputs=make_inputs, implementations=_implementations(name, pass_name, device, dtype),
                device=device, rtol=1e-3 if dtype == torch.float32 else 1e-9,
                description=f"{label}; {molecules} QM9 molecules, cutoff {CUTOFF} Å"))
    return result
