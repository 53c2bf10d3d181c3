"""Fixed retrieval, part (b): retrain the value path alone and compare it with an FFN of equal size.

For each HIVE memory block, the inputs the block sees and the contribution it makes are recorded on
the fit windows: its heads' queries q_h = norm(a_h), its retrieval (slots, weights) and its output m.
Two maps are then fitted to m by MSE (Adam), both from a fresh init:

    values  a fresh bank U' and projections P'_h reading the recorded retrieval (frozen):
            m' = sum_h P'_h^T sum_t w_h,t U'[I_h,t]                 (n^2 r + H r d parameters)
    ffn     Linear(H d_h -> f) - GELU - Linear(f -> d) on the concatenated queries, f chosen so the
            parameter count matches the value path's (rounded)

and put in the block's place on the held-out windows (retrieval fixed in every memory block). The
share of the memory's effect each recovers is (L_zero - L_fit) / (L_zero - L_model), where L_zero has
the block's memory output removed: 1 means as good as the trained model, 0 as good as no memory.
"""

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn
from tqdm.auto import tqdm

from ..model.retrieval import normalize_query
from ..model.values import HiveValues
from .probes import NEGLIGIBLE_LOSS, Block, captured_retrieval, is_hive, memory_blocks, replayed_retrieval, scored_tokens, token_nll

FIT_BATCH = 1024  # tokens per optimizer step


class PathFit(BaseModel):
    name: str = Field(description="values | ffn")
    parameters: int
    train_relative_mse: float = Field(description="MSE / mean square of the block's contribution, fit windows")
    heldout_relative_mse: float = Field(description="the same on the held-out windows")
    loss: float = Field(description="held-out loss with the fitted map in the block's place")
    delta: float = Field(description="loss - the model's held-out loss")
    recovered: float | None = Field(description="(zero loss - loss) / (zero loss - model loss); None: removing the memory does not raise the loss")


class BlockRetraining(BaseModel):
    layer: int
    label: str
    model_loss: float = Field(description="held-out loss of the model (retrieval fixed)")
    zero_loss: float = Field(description="held-out loss with this block's memory output removed")
    fits: list[PathFit]


class ValueRetraining(BaseModel):
    fit_windows: int
    heldout_windows: int
    steps: int
    lr: float
    ffn: str = "Linear(H*d_h -> f, no bias) - GELU - Linear(f -> d, no bias) on the concatenated normalised queries"
    blocks: list[BlockRetraining]


class FFN(nn.Module):
    def __init__(self, inputs: int, hidden: int, outputs: int):
        super().__init__()
        self.up, self.down = nn.Linear(inputs, hidden, bias=False), nn.Linear(hidden, outputs, bias=False)

    def forward(self, query: torch.Tensor) -> torch.Tensor:  # [N, H, d_h] -> [N, d]
        return self.down(F.gelu(self.up(query.flatten(1))))


def fresh_values(block: Block, seed: int) -> HiveValues:
    """A HIVE value path of the block's shapes with its own bank, freshly initialised (P random,
    so both factors learn from the first step)."""
    memory, values = block.layer.memory, block.layer.memory.values
    torch.manual_seed(seed)
    fresh = HiveValues(values.bank_shape[0], memory.heads, values.latent_dim, values.proj.out_features)
    nn.init.normal_(fresh.bank, std=values.latent_dim ** -0.5)
    return fresh


def matched_ffn(block: Block, parameters: int, seed: int) -> FFN:
    memory = block.layer.memory
    inputs, outputs = memory.heads * memory.head_dim, memory.values.proj.out_features
    torch.manual_seed(seed)
    return FFN(inputs, max(1, round(parameters / (inputs + outputs))), outputs)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def record_block_io(model, memory: list[Block], batches: list[torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Per memory block: queries [N, H, d_h], slots and weights [N, H, k], contribution m [N, d]."""
    records = {block.index: {"query": [], "slots": [], "weights": [], "target": []} for block in memory}
    handles = []

    def hook(index):
        def save(module, args, output):
            query = args[0].reshape(-1, module.heads, module.head_dim).float()
            records[index]["query"].append(normalize_query(query, module.query_norm))
            records[index]["target"].append(output.reshape(query.shape[0], -1).float())
        return save

    try:
        handles = [block.layer.memory.register_forward_hook(hook(block.index)) for block in memory]
        for ids in batches:
            with captured_retrieval(memory) as retrieved:
                model(input_ids=ids, use_cache=False)
            for index, (slots, weights) in retrieved.items():
                records[index]["slots"].append(slots)
                records[index]["weights"].append(weights.float())
    finally:
        for handle in handles:
            handle.remove()
    return {index: {name: torch.cat(parts) for name, parts in record.items()} for index, record in records.items()}


def fit(module: nn.Module, inputs: tuple[torch.Tensor, ...], target: torch.Tensor, steps: int, lr: float,
        seed: int, bar: tqdm) -> None:
    """Minimise the MSE of module(*inputs) to target with Adam on random token batches."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(target.shape[0], (min(FIT_BATCH, target.shape[0]),), generator=generator).to(target.device)
        loss = F.mse_loss(module(*(x[rows] for x in inputs)), target[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.update()


@torch.no_grad()
def relative_mse(module: nn.Module, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> float:
    return float(F.mse_loss(module(*inputs), target) / target.square().mean().clamp_min(1e-30))


def replacement(name: str, path: nn.Module | None, memory, heads_output: torch.Tensor, output: torch.Tensor):
    """What goes in place of the memory output: zeros, the fitted value path on the (fixed) retrieval,
    or the fitted FFN on the normalised queries."""
    if name == "zero":
        return torch.zeros_like(output)
    if name == "values":
        slots, weights = memory.retrieve(heads_output)
        return path(slots, weights.float())
    query = heads_output.reshape(-1, memory.heads, memory.head_dim).float()
    return path(normalize_query(query, memory.query_norm))


def substituted(block: Block, name: str, path: nn.Module | None):
    """A forward hook putting the `name` replacement in place of the block's memory output."""

    def hook(module, args, output):
        return replacement(name, path, module, args[0], output).reshape(output.shape).to(output.dtype)

    return block.layer.memory.register_forward_hook(hook)


@torch.no_grad()
def heldout_losses(model, memory: list[Block], block: Block, paths: dict[str, nn.Module | None],
                   batches: list[torch.Tensor]) -> dict[str, float]:
    """Held-out loss of the model and with each path in the block's place, all retrievals fixed."""
    nll = {"model": 0.0, **{name: 0.0 for name in paths}}
    for ids in batches:
        with captured_retrieval(memory) as recorded:
            nll["model"] += token_nll(model, ids).item()
        with replayed_retrieval(memory, dict(recorded)):
            for name, path in paths.items():
                handle = substituted(block, name, path)
                try:
                    nll[name] += token_nll(model, ids).item()
                finally:
                    handle.remove()
    tokens = scored_tokens(batches)
    return {name: value / tokens for name, value in nll.items()}


def retrain_values(model, fit_batches: list[torch.Tensor], heldout_batches: list[torch.Tensor], *, steps: int = 300,
                   lr: float = 3e-3, seed: int = 0, progress: bool = True) -> ValueRetraining:
    """Fit a fresh value path and an equal-size FFN to every HIVE memory block's contribution."""
    memory = memory_blocks(model)
    hive = [block for block in memory if is_hive(block)]
    fit_io, heldout_io = record_block_io(model, hive, fit_batches), record_block_io(model, hive, heldout_batches)
    results = []
    bar = tqdm(total=2 * steps * len(hive), desc="value retraining", unit="step", disable=not progress)
    for block in hive:
        train, held = fit_io[block.index], heldout_io[block.index]
        device = train["target"].device
        values = fresh_values(block, seed + block.index).to(device)
        ffn = matched_ffn(block, count(values), seed + block.index).to(device)
        inputs = {"values": lambda io: (io["slots"], io["weights"]), "ffn": lambda io: (io["query"],)}
        with torch.enable_grad():
            for name, path in (("values", values), ("ffn", ffn)):
                fit(path, inputs[name](train), train["target"], steps, lr, seed, bar)
        values.eval(), ffn.eval()
        losses = heldout_losses(model, memory, block, {"zero": None, "values": values, "ffn": ffn}, heldout_batches)
        effect = losses["zero"] - losses["model"]
        fits = [PathFit(name=name, parameters=count(path),
                        train_relative_mse=relative_mse(path, inputs[name](train), train["target"]),
                        heldout_relative_mse=relative_mse(path, inputs[name](held), held["target"]),
                        loss=losses[name], delta=losses[name] - losses["model"],
                        recovered=(losses["zero"] - losses[name]) / effect if effect > NEGLIGIBLE_LOSS else None)
                for name, path in (("values", values), ("ffn", ffn))]
        results.append(BlockRetraining(layer=block.index, label=block.label, model_loss=losses["model"],
                                       zero_loss=losses["zero"], fits=fits))
    bar.close()
    return ValueRetraining(fit_windows=sum(len(b) for b in fit_batches), heldout_windows=sum(len(b) for b in heldout_batches),
                           steps=steps, lr=lr, blocks=results)
