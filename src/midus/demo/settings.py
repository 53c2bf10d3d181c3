"""What the demo runs: corpus split, base, recipes, CPT budget, evaluation and bench sizes, per preset.

Presets: `default` (the paper-style comparison, within 15 minutes on 2 CPU cores), `quick` (every stage
at a smaller size, within 3 minutes) and `test` (the smallest run that still exercises every stage).
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.corpus import CorpusSettings
from ..errors import MidusError, UsageError
from ..recipe import METHODS, Recipe
from .base import BaseSettings

REFERENCE = "llama-pro"  # every ratio in the report divides by LLaMA Pro's figure, as the paper compares
IDENTITY_METHODS = ("llama-pro", "midus")  # function-preserving at insertion: grown logits == base logits
RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "tiny"  # the repository's tiny recipes


@dataclass(frozen=True)
class DemoSettings:
    preset: str
    base: BaseSettings
    corpus: CorpusSettings = CorpusSettings()
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1)  # every method is grown (new tensors' init) and trained (data order) with each
    noise_methods: tuple[str, ...] = ()  # a cheaper noise probe: these methods once more with `noise_seeds`,
    noise_seeds: tuple[int, ...] = ()  # used for the noise estimate only (the table averages `seeds`)
    memory: dict = field(default_factory=dict)  # overrides of the midus recipe's memory section
    # continued pre-training, the same for every method
    cpt_tokens: int = 196_608  # 192 steps of 4 x 256 tokens, about one epoch of the CPT part
    cpt_lr: float = 1e-3
    cpt_memory_lr: float | None = None  # None: cpt_lr (memory keys and banks: constant, no weight decay)
    cpt_trainable: str = "all"
    seq_len: int = 256
    batch_size: int = 4
    cpt_evals: int = 4  # held-out loss points on each CPT curve
    cpt_eval_sequences: int = 16
    # held-out evaluation
    eval_max_length: int = 256  # perplexity window / truncation (the length the models were trained at)
    eval_stride: int = 128
    eval_documents: int | None = 480  # held-out documents for perplexity, spread evenly over the part (None: all)
    mc_items: int | None = 600  # multiple-choice items from held-out paragraphs of 16+ words, spread evenly (None: all)
    eval_batch_size: int = 16
    # bench
    bench_repeats: int = 21  # timed runs per model, split over the rounds
    bench_rounds: int = 3  # every model measured once per round; figures are medians over the rounds
    bench_threads: int | None = 1  # one thread: far steadier timings on a small shared CPU (None: torch's default)
    bench_prefill: int = 128
    bench_decode: int = 32

    def jobs(self) -> list[tuple[str, int, bool]]:
        """(method, seed, is_noise_probe) in run order: every method at the first seed, then the next seed..."""
        main = [(method, seed, False) for seed in self.seeds for method in self.methods]
        probes = [(method, seed, True) for method in self.noise_methods if method in self.methods
                  for seed in self.noise_seeds if seed not in self.seeds]
        return main + probes


def demo_recipe(method: str, base: Path, settings: DemoSettings, seed: int, recipes_dir: Path | None = None) -> Recipe:
    """The tiny recipe of `method` (recipes/tiny/<method>.yaml) pointed at the demo's base, in float32,
    with the demo's seed and, for midus, its memory overrides."""
    folder = Path(recipes_dir) if recipes_dir is not None else RECIPES
    path = folder / f"{method}.yaml"
    if not path.is_file():
        raise MidusError(f"recipe {path}: no such file; the demo grows the base by the tiny recipes "
                         f"(recipes/tiny/ of the repository); give their folder with --recipes")
    data = Recipe.from_yaml(path).model_dump(mode="json", exclude_none=True)
    data.update(base=str(base), dtype="float32", seed=seed)
    if method == "midus" and settings.memory:
        data["memory"] = {**data.get("memory", {}), **settings.memory}
    return Recipe.parse(data, source=str(path))


PRESETS = {
    "default": DemoSettings(preset="default", base=BaseSettings()),
    "quick": DemoSettings(
        preset="quick", base=BaseSettings(vocab_size=1024, hidden_size=64, intermediate_size=256, tokens=409_600),
        cpt_tokens=65_536, seeds=(0,), noise_methods=("llama-pro", "midus"), noise_seeds=(1,), cpt_evals=2,
        mc_items=200, eval_documents=200, bench_repeats=12, bench_prefill=64, bench_decode=16),
    "test": DemoSettings(
        preset="test", base=BaseSettings(vocab_size=512, hidden_size=64, intermediate_size=256, tokens=16_384,
                                         seq_len=128, batch_size=8),
        seq_len=128, batch_size=8, cpt_tokens=4096, seeds=(0,), cpt_evals=1, cpt_eval_sequences=4,
        eval_max_length=128, eval_stride=64, eval_documents=40, mc_items=24, bench_repeats=1, bench_rounds=1, bench_prefill=16,
        bench_decode=4),
}


def preset(name: str, **overrides) -> DemoSettings:
    if name not in PRESETS:
        raise UsageError(f"demo preset {name!r}: valid: {', '.join(PRESETS)}")
    settings = replace(PRESETS[name], **overrides)
    if unknown := [m for m in settings.methods if m not in METHODS]:
        raise UsageError(f"method {unknown[0]!r}: valid: {', '.join(METHODS)}")
    if REFERENCE not in settings.methods:
        raise UsageError(f"the demo's ratios divide by {REFERENCE}: keep it among the methods")
    if not settings.seeds:
        raise UsageError("the demo needs at least one seed")
    return settings
