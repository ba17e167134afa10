"""The training loop of the scaling study: one pass over the training data, validation at
log-spaced steps, every point logged with N (parameters), D (atoms seen), C (training FLOPs)
and wall-clock time.

    from nffk.train import TrainConfig, train
    result = train(TrainConfig("Equivariant", width=16, lmax=2), "data/qm9-xtb", "runs/eq16")

- Data: the training split (or its first `data_budget` atoms, a prefix of molecules) in an order
  drawn from `seed`, cut into global batches of `batch_size` structures; every structure is
  seen once (the last incomplete batch is dropped). Validation uses a fixed sample of the
  validation split, graphs built once.
- Optimiser: schedule-free AdamW with muP learning rates (`nffk.train.optim`), linear warm-up,
  gradient clipping; the loss of `nffk.train.loss`.
- Logging: `metrics.jsonl` (schema of `nffk.scaling.runlog`), one record per validation point.
  `wall` is training time only (validation and checkpoints excluded), summed over resumes.
- Checkpoints (`checkpoint.pt`, atomic, `weights_only` loading) at every validation point and
  every `checkpoint_seconds`; they hold the model, the optimiser, the position in the data and
  the RNG state, so an interrupted run, called again, resumes and logs the same numbers as an
  uninterrupted one. `model.pt` holds the final (averaged, evaluation) weights.
- Several processes (`torchrun --nproc-per-node K`): each takes a share of every global batch
  and the gradients are summed (`nffk.train.ddp`); the loss curve equals the one-process curve.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from nffk.models import build_model, model_from_config
from nffk.train.checkpoint import load_checkpoint, save_checkpoint
from nffk.train.compute import TRAINING_FACTOR, FlopModel, training_step_flops
from nffk.train.config import TrainConfig
from nffk.train.ddp import init_distributed, shard
from nffk.train.loss import LossTerms, Normalisation, loss_terms
from nffk.train.optim import make_optimizer

CHECKPOINT = "checkpoint.pt"
FINAL_MODEL = "model.pt"
DATA_STREAM = 0xDA7A  # keeps the data order's random stream apart from others
VAL_STREAM = 0x7A1


def eval_steps(total_steps: int, n_evals: int) -> list[int]:
    """Log-spaced validation steps over the last 99 % of the run, always ending at the last step."""
    steps = np.geomspace(max(1.0, total_steps / 100), total_steps, n_evals)
    return sorted({int(round(s)) for s in steps} | {total_steps})


def load_splits(data, data_budget: int | None):
    """(train, val) datasets from a dataset folder or a (train, val) pair; train cut to `data_budget` atoms."""
    from nffk.data import load_dataset

    if isinstance(data, (str, Path)):
        train_set, val_set = load_dataset(data, "train"), load_dataset(data, "val")
    else:
        train_set, val_set = data
    if data_budget is not None:
        if data_budget > train_set.total_atoms:
            raise ValueError(f"data_budget={data_budget} atoms exceeds the training split "
                             f"({train_set.total_atoms} atoms)")
        train_set = train_set.take_atoms(data_budget)
    if len(val_set) == 0:
        raise ValueError("the validation split is empty")
    return train_set, val_set


class _GlobalBatches(torch.utils.data.Dataset):
    """Item k: this process's share of global batch k, as a graph `Batch`."""

    def __init__(self, dataset, batches, cutoff, dtype, rank, world_size):
        self.dataset, self.batches, self.cutoff, self.dtype = dataset, batches, cutoff, dtype
        self.rank, self.world_size = rank, world_size

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        from nffk.data import collate

        part = shard(self.batches[k], self.rank, self.world_size)
        return collate([self.dataset[int(i)] for i in part], self.cutoff, self.dtype)


def _average_neighbors(dataset, order, cutoff) -> float:
    from nffk.data import collate

    sample = collate([dataset[int(i)] for i in order[:256]], cutoff)
    return max(sample.senders.shape[0] / sample.positions.shape[0], 1.0)


def _progress(enabled: bool, description: str, total: int):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    task = bar.add_task(description, total=total, loss="—", val="—")
    return bar, task


def train(config: TrainConfig, data, run_dir, *, run_id: str | None = None, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train (or resume training) one model; returns a summary dict (also stored in the checkpoint).

    data: a dataset folder or a (train, val) pair of datasets. run_dir: where metrics.jsonl,
    checkpoint.pt and model.pt go. stop_after: stop (checkpointed) after this many steps, as if
    interrupted; calling again resumes.
    """
    from nffk.scaling.runlog import MetricsLog

    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    run_dir = Path(run_dir)
    run_id = run_id or run_dir.name
    device = torch.device(config.device)
    dtype = getattr(torch, config.dtype)
    if config.threads:
        torch.set_num_threads(config.threads)
    dist = init_distributed(device)
    if config.batch_size < dist.world_size:
        raise ValueError(f"batch_size={config.batch_size} must be at least the number of processes "
                         f"({dist.world_size})")

    # -- data: a fixed order, global batches, a validation sample --------------------------------
    train_set, val_set = load_splits(data, config.data_budget)
    norm = Normalisation.from_statistics(train_set.statistics)
    order = np.random.default_rng([config.seed, DATA_STREAM]).permutation(len(train_set))
    total_steps = len(train_set) // config.batch_size
    if total_steps < 1:
        raise ValueError(f"the training data ({len(train_set)} structures) is smaller than one batch "
                         f"({config.batch_size})")
    batches = [order[k * config.batch_size:(k + 1) * config.batch_size] for k in range(total_steps)]
    batch_atoms = [int(train_set.num_atoms[b].sum()) for b in batches]
    evals = eval_steps(total_steps, config.n_evals)
    val_count = len(val_set) if config.val_structures == 0 else min(config.val_structures, len(val_set))
    val_indices = np.sort(np.random.default_rng([VAL_STREAM]).permutation(len(val_set))[:val_count])

    # -- model, optimiser, state (fresh or from the checkpoint) ------------------------------------
    checkpoint_path = run_dir / CHECKPOINT
    saved = load_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
    if saved is not None:
        if saved["config"] != config.identity():
            changed = sorted(k for k in set(saved["config"]) | set(config.identity())
                             if saved["config"].get(k) != config.identity().get(k))
            raise ValueError(f"{checkpoint_path} belongs to a run with other settings ({changed}); "
                             "use another run directory or delete it")
        model = model_from_config(config.arch, saved["model_config"])
    else:
        avg_neighbors = _average_neighbors(train_set, order, config.cutoff)
        torch.manual_seed(config.seed)
        model = build_model(config.arch, config.width, config.lmax, elements=train_set.meta["elements"],
                            cutoff=config.cutoff, num_basis=config.num_basis, avg_num_neighbors=avg_neighbors,
                            forces=config.forces, statistics=train_set.statistics,
                            reference_energies=train_set.reference_energies, **config.model_options)
    model = model.to(device=device, dtype=dtype)
    dist.broadcast_parameters(model)
    params = model.num_parameters
    optimizer = make_optimizer(model, config.learning_rate, warmup_steps=round(config.warmup_fraction * total_steps),
                               weight_decay=config.weight_decay, mup=config.mup)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state = dict(saved["state"])
        flop_model = FlopModel(**saved["flop_model"])
        train_flops_ratio = saved["train_flops_ratio"]
    else:
        state = {"step": 0, "atoms_seen": 0, "edges_seen": 0, "flops": 0.0, "wall": 0.0, "train_sum": 0.0,
                 "train_steps": 0, "finished": False, "last_val_loss": None}
        sample = [train_set[int(i)] for i in batches[0][:16]]
        flop_model = FlopModel.measure(model, sample, config.cutoff, device, dtype)
        train_flops_ratio = _train_flops_ratio(model, sample[:4], config, norm, flop_model, device, dtype)
    summary_base = {"total_steps": total_steps, "params": params, "flop_model": flop_model.as_dict(),
                    "train_flops_ratio": train_flops_ratio, "eval_steps": evals,
                    "avg_num_neighbors": model.avg_num_neighbors, "parameters_by_role": _by_role(model)}
    if state["finished"]:
        _save_final_model(model, optimizer, config, run_dir, dist)
        return _summary(summary_base, state, flop_model, params)

    log = MetricsLog(run_dir) if dist.is_main else None
    if log is not None:
        log.rewind(state["step"])
    from nffk.data import collate

    val_batches = [collate([val_set[int(i)] for i in part], config.cutoff, dtype).to(device)
                   for part in np.array_split(val_indices, max(1, math.ceil(val_count / config.val_batch_size)))
                   ][dist.rank::dist.world_size]
    loader = torch.utils.data.DataLoader(
        _GlobalBatches(train_set, batches[state["step"]:], config.cutoff, dtype, dist.rank, dist.world_size),
        batch_size=None, shuffle=False, num_workers=config.num_workers)

    def record_point():
        val = _validate(model, optimizer, val_batches, norm, dist)
        state["last_val_loss"] = val["loss"]
        train_loss = state["train_sum"] / max(state["train_steps"], 1)
        if log is not None:
            log.append({"run": run_id, "arch": config.arch, "width": config.width, "lmax": config.lmax,
                        "step": state["step"], "params": params, "atoms_seen": state["atoms_seen"],
                        "flops": state["flops"], "wall": state["wall"], "val_loss": val["loss"],
                        "train_loss": train_loss, "val_energy_mae_per_atom": val["energy_mae_per_atom"],
                        "val_force_error": val["force_error"], "edges_seen": state["edges_seen"]})
        state["train_sum"], state["train_steps"] = 0.0, 0
        return val, train_loss

    def checkpoint():
        if dist.is_main:
            save_checkpoint(checkpoint_path, {
                "config": config.identity(), "model_config": model.config, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "state": dict(state),
                "flop_model": flop_model.as_dict(), "train_flops_ratio": train_flops_ratio})
        dist.barrier()

    model.train()
    optimizer.train()
    parameters = [p for p in model.parameters()]
    last_checkpoint = time.monotonic()
    bar, task = _progress(progress and dist.is_main, f"{run_id}", total_steps)
    with bar:
        if task is not None:
            bar.update(task, completed=state["step"])
        for batch in loader:
            start = time.perf_counter()
            batch = batch.to(device)
            k = state["step"]
            global_structures, global_atoms = len(batches[k]), batch_atoms[k]
            terms = loss_terms(model(batch), batch, norm)
            loss = terms.loss(global_structures, global_atoms)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.all_reduce_gradients(parameters)
            torch.nn.utils.clip_grad_norm_(parameters, config.clip)
            optimizer.step()
            totals = dist.all_reduce_sum(torch.tensor([float(loss.detach()), float(batch.senders.shape[0])],
                                                      dtype=torch.float64))
            step_loss, edges = float(totals[0]), int(totals[1])
            state["wall"] += time.perf_counter() - start
            state["step"] = k + 1
            state["atoms_seen"] += global_atoms
            state["edges_seen"] += edges
            state["flops"] += TRAINING_FACTOR * flop_model.forward_flops(global_atoms, edges, global_structures)
            state["train_sum"] += step_loss
            state["train_steps"] += 1
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"{run_id}: the training loss is {step_loss} at step {k + 1} "
                                         f"(lr {config.learning_rate}); lower the learning rate")
            if state["step"] in evals:
                val, _ = record_point()
                if task is not None:
                    bar.update(task, val=f"{val['loss']:.4f}")
            if state["step"] == total_steps:
                state["finished"] = True
            if state["step"] in evals or state["finished"] or \
                    time.monotonic() - last_checkpoint > config.checkpoint_seconds or state["step"] == stop_after:
                checkpoint()
                last_checkpoint = time.monotonic()
            if task is not None:
                bar.update(task, completed=state["step"], loss=f"{step_loss:.4f}")
            if state["step"] == stop_after and not state["finished"]:
                break
    if state["finished"]:
        _save_final_model(model, optimizer, config, run_dir, dist)
    dist.barrier()
    return _summary(summary_base, state, flop_model, params)


def _save_final_model(model, optimizer, config, run_dir: Path, dist) -> None:
    """model.pt: the averaged (schedule-free 'x') weights, the ones to use, with the model's config."""
    if dist.is_main and not (run_dir / FINAL_MODEL).exists():
        optimizer.eval()
        save_checkpoint(run_dir / FINAL_MODEL, {"arch": config.arch, "config": model.config,
                                                 "model": model.state_dict()})
        optimizer.train()


def _summary(base: dict, state: dict, flop_model: FlopModel, params: int) -> dict:
    atoms, edges = state["atoms_seen"], state["edges_seen"]
    kappa = state["flops"] / TRAINING_FACTOR / (params * atoms) if atoms else None
    return {**base, "finished": state["finished"], "steps": state["step"], "atoms_seen": atoms, "flops": state["flops"],
            "wall": state["wall"], "val_loss": state["last_val_loss"], "kappa": kappa,
            "edges_per_atom": edges / atoms if atoms else None,
            "steps_per_second": state["step"] / state["wall"] if state["wall"] else None,
            "atoms_per_second": atoms / state["wall"] if state["wall"] else None}


def _by_role(model) -> dict:
    from nffk.train.optim import parameter_roles

    counts = {}
    parameters = dict(model.named_parameters())
    for name, role in parameter_roles(model).items():
        counts[role] = counts.get(role, 0) + parameters[name].numel()
    return counts


def _train_flops_ratio(model, structures, config, norm, flop_model, device, dtype) -> float:
    """Counted FLOPs of a real training step over the FlopModel's forward FLOPs, on a small batch."""
    from nffk.data import collate

    batch = collate(structures, config.cutoff, dtype).to(device)
    counted = training_step_flops(model, batch, lambda p: loss_terms(p, batch, norm).loss(
        batch.num_atoms.shape[0], batch.positions.shape[0]))
    forward = flop_model.forward_flops(batch.positions.shape[0], batch.senders.shape[0], batch.num_atoms.shape[0])
    return counted / forward if forward else float("nan")


def _validate(model, optimizer, val_batches, norm: Normalisation, dist) -> dict:
    """The loss on the validation sample with the averaged (schedule-free 'x') weights."""
    optimizer.eval()
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        for batch in val_batches:
            prediction = model(batch)
            terms: LossTerms = loss_terms(prediction, batch, norm)
            energy_error = ((prediction["energy"] - batch.energy).abs() / batch.num_atoms).sum()
            force_error = (prediction["forces"] - batch.forces).norm(dim=-1).double().sum()
            sums += torch.tensor([float(terms.energy_sum), float(terms.force_sum), terms.structures, terms.atoms,
                                  float(energy_error), float(force_error)], dtype=torch.float64)
    dist.all_reduce_sum(sums)
    model.train()
    optimizer.train()
    structures, atoms = max(float(sums[2]), 1.0), max(float(sums[3]), 1.0)
    return {"loss": float(sums[0]) / structures + float(sums[1]) / atoms,
            "energy_mae_per_atom": float(sums[4]) / structures, "force_error": float(sums[5]) / atoms}
