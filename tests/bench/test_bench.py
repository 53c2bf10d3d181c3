import json
import shutil

import pytest
import yaml
from transformers import AutoConfig
from typer.testing import CliRunner

from midus.bench import RATIO_METRICS, TIMING_METRICS, BenchReport, BenchSettings, bench
from midus.bench.report import figure
from midus.cli import app
from midus.load import load_model
from midus.parameters import count_parameters
from cli_helpers import assert_one_line_error
from model_helpers import TINY_MEMORY as MEMORY

TINY = BenchSettings(batch_size=1, train_seq_len=32, prefill_len=16, decode_tokens=4, warmup=1, repeats=3, threads=1)
MODEL_KEYS = {  # the documented schema (bench/report.py)
    "name", "source", "weights", "model_type", "layers", "grown_from", "params_total", "params_added", "train_peak_mb",
    "inference_peak_mb", "train_step_s", "prefill_s", "decode_s_per_token", "train_tokens_per_s",
    "prefill_tokens_per_s", "decode_tokens_per_s", "ratios", "base", "added_per_block", "added_ratios",
}
STAT_KEYS = {"median", "q1", "q3", "min", "max", "samples"}


def write_recipe(path, base, method, **fields):
    recipe = {"base": str(base), "method": method, "new_blocks": 2, "placement": "distributed", "dtype": "float32", **fields}
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def recipes(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipes")
    config_only = folder / "config-only-base"
    config_only.mkdir()
    shutil.copy(tiny_base / "config.json", config_only / "config.json")  # shapes, no weights
    return {
        "midus": write_recipe(folder / "midus.yaml", tiny_base, "midus", memory=MEMORY),
        "llama-pro": write_recipe(folder / "llama-pro.yaml", tiny_base, "llama-pro"),
        "midus-random": write_recipe(folder / "midus-random.yaml", config_only, "midus", memory=MEMORY),
    }


@pytest.fixture(scope="module")
def report(tiny_base, recipes):
    names = [str(tiny_base), recipes["midus"], recipes["llama-pro"], recipes["midus-random"]]
    return bench(names, TINY, reference=recipes["llama-pro"], isolate=False)


def test_bench_json_follows_its_schema(report):
    data = json.loads(report.to_json())
    assert set(data) == {"schema", "settings", "environment", "reference", "models"}
    assert data["schema"] == "midus.bench/2"
    assert data["environment"]["interleaved"] is True
    assert data["settings"] == TINY.model_dump()
    for model in data["models"]:
        assert set(model) == MODEL_KEYS
        assert set(model["ratios"]) == set(RATIO_METRICS)
        for key in ("train_step_s", "prefill_s", "decode_s_per_token"):
            stat = model[key]
            assert set(stat) == STAT_KEYS and len(stat["samples"]) == TINY.repeats
            assert stat["min"] <= stat["q1"] <= stat["median"] <= stat["q3"] <= stat["max"]
        assert model["train_tokens_per_s"] == pytest.approx(TINY.train_seq_len / model["train_step_s"]["median"])
        assert model["decode_tokens_per_s"] == pytest.approx(1 / model["decode_s_per_token"]["median"])
        assert model["train_peak_mb"] is None  # CPU memory is only measured in a fresh process per model
    assert BenchReport.model_validate_json(report.to_json()) == report


def test_ratios_agree_with_the_raw_figures(report):
    reference = next(m for m in report.models if m.name == report.reference)
    for model in report.models:
        for metric in RATIO_METRICS:
            value, ref = figure(model, metric), figure(reference, metric)
            if value is None or not ref:
                assert model.ratios[metric] is None
            else:
                assert model.ratios[metric] == pytest.approx(value / ref, rel=1e-12)
    assert all(r == pytest.approx(1.0) for r in reference.ratios.values() if r is not None)
    markdown = report.to_markdown()
    assert f"{report.reference} (ref)" in markdown and "×)" in markdown


def test_midus_adds_fewer_parameters_than_llama_pro_at_the_same_depth(report, tiny_base, recipes):
    by_name = {m.name: m for m in report.models}
    base, grown, pro = by_name[str(tiny_base)], by_name[recipes["midus"]], by_name[recipes["llama-pro"]]
    assert grown.layers == pro.layers == base.layers + 2
    assert 0 < grown.params_added < pro.params_added
    assert grown.params_added == grown.params_total - base.params_total
    assert pro.params_added == pro.params_total - base.params_total
    assert grown.ratios["params_added"] < 1
    assert base.params_total == count_parameters(load_model(str(tiny_base)).model)


def test_a_recipe_whose_base_has_no_weights_is_benched_with_random_weights_at_real_shapes(report, recipes):
    by_name = {m.name: m for m in report.models}
    loaded, random = by_name[recipes["midus"]], by_name[recipes["midus-random"]]
    assert (loaded.weights, random.weights) == ("loaded", "random")
    assert (random.params_total, random.params_added, random.layers) == (loaded.params_total, loaded.params_added, loaded.layers)


def test_added_cost_per_block_pairs_each_run_with_the_bases_run(report, tiny_base, recipes):
    by_name = {m.name: m for m in report.models}
    base, pro = by_name[str(tiny_base)], by_name[recipes["llama-pro"]]
    assert base.base is None and base.added_per_block is None and base.added_ratios == {}
    # grown on a config-only folder that was not benched: no base to subtract
    assert by_name[recipes["midus-random"]].base is None and by_name[recipes["midus-random"]].added_per_block is None
    for name in (recipes["midus"], recipes["llama-pro"]):
        grown = by_name[name]
        assert grown.grown_from == str(tiny_base) and grown.base == str(tiny_base)
        added = grown.added_per_block
        assert added.blocks == 2 == grown.layers - base.layers
        for metric in TIMING_METRICS:
            expected = [(x - y) / 2 for x, y in zip(getattr(grown, metric).samples, getattr(base, metric).samples)]
            assert getattr(added, metric).samples == pytest.approx(expected, rel=1e-12)
            assert grown.added_ratios[metric] == pytest.approx(
                getattr(added, metric).median / getattr(pro.added_per_block, metric).median, rel=1e-12)
    assert "Added cost per block" in report.to_markdown()


def test_models_take_turns_in_rounds_whose_order_rotates(monkeypatch, tiny_base, recipes):
    from midus.bench import measure as measure_module
    calls = []

    def recording(phase):
        def run(self):
            calls.append((phase, self.name))
            return (0.5, 0.25) if phase == "inference" else 1.0
        return run

    monkeypatch.setattr(measure_module.Subject, "inference", recording("inference"))
    monkeypatch.setattr(measure_module.Subject, "train_step", recording("train"))
    names = [str(tiny_base), recipes["midus"], recipes["llama-pro"]]
    settings = TINY.model_copy(update={"warmup": 2, "repeats": 4})
    measured = measure_module.measure_interleaved(names, settings)
    a, b, c = names
    rounds = [[a, b, c], [b, c, a], [c, a, b], [a, b, c]]
    for phase in ("inference", "train"):
        expected = [(phase, n) for n in names for _ in range(2)] + [(phase, n) for order in rounds for n in order]
        assert calls[:len(expected)] == expected
        del calls[:len(expected)]
    assert calls == []
    assert [m.name for m in measured] == names
    assert all(m.train_step_s.samples == [1.0] * 4 and m.decode_s_per_token.samples == [0.25] * 4 for m in measured)


def test_bench_cli_isolate_measures_each_model_in_its_own_process(tiny_base, recipes, tmp_path):
    args = ["bench", str(tiny_base), recipes["midus"], "--isolate", "--json", "--out", str(tmp_path), "--threads", "1",
            "--seq-len", "32", "--prefill-len", "16", "--decode-tokens", "4", "--repeats", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["reference"] == str(tiny_base)
    for model in data["models"]:
        assert model["train_peak_mb"] > 0 and model["inference_peak_mb"] > 0
        assert model["ratios"]["train_peak_mb"] == pytest.approx(model["train_peak_mb"] / data["models"][0]["train_peak_mb"])
    assert "fresh process" in data["environment"]["memory_method"] and data["environment"]["interleaved"] is False
    assert data["models"][1]["added_per_block"]["blocks"] == 2
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "bench.json").read_text()) == data
    assert "| model |" in (tmp_path / "bench.md").read_text()


def test_bad_inputs_are_one_line_errors(tiny_base, tmp_path):
    runner = CliRunner()
    assert_one_line_error(runner.invoke(app, ["bench", str(tmp_path / "no" / "such" / "model")]), "no such folder",
                          code=1, other_lines=True)
    assert_one_line_error(runner.invoke(app, ["bench", str(tiny_base), "--reference", "other"]), "reference 'other' is not among the models",
                          code=2, other_lines=True)
    positions = AutoConfig.from_pretrained(tiny_base).max_position_embeddings
    assert_one_line_error(runner.invoke(app, ["bench", str(tiny_base), "--prefill-len", str(positions)]), f"prefill_len + decode_tokens = {positions + 32} is beyond the model's {positions} positions",
                          code=2, other_lines=True)
    assert_one_line_error(runner.invoke(app, ["bench", str(tiny_base), "--compile", "--warmup", "0"]),
                          "compile: the warm-up runs compile the forward; set warmup >= 1", code=2, other_lines=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_base / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert_one_line_error(runner.invoke(app, ["bench", str(broken)]), "cannot load its weights",
                          code=1, other_lines=True)
    # the same error comes back from the measuring process
    assert_one_line_error(runner.invoke(app, ["bench", str(broken), "--isolate"]), "cannot load its weights",
                          code=1, other_lines=True)


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile in bench with the `eager` backend: the same graph capture as inductor, no minutes of
    code generation. Yields the options bench passed."""
    import torch
    from midus.bench import measure as measure_module
    calls, real_compile = [], torch.compile

    def compile_eagerly(function, **options):
        calls.append(options)
        return real_compile(function, fullgraph=options["fullgraph"], dynamic=options["dynamic"], backend="eager")

    monkeypatch.setattr(measure_module.torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def test_compiled_inference_decodes_the_eager_tokens_run_after_run(eager_compile, recipes):
    """bench --compile: the forward compiled with fullgraph, the static cache emptied before each run."""
    import torch
    from midus.bench.measure import Subject

    eager = Subject(recipes["midus"], TINY, torch.device("cpu"))
    compiled = Subject(recipes["midus"], TINY.model_copy(update={"compile": True}), torch.device("cpu"))
    for _ in range(2):
        eager.inference()
        compiled.inference()
        assert compiled.generated.shape == (1, TINY.decode_tokens)
        assert torch.equal(compiled.generated, eager.generated)
    assert type(compiled.model).__name__ == "MidusForCausalLM"
    assert eager_compile == [{"fullgraph": True, "dynamic": False, "mode": "default"}]


def test_compiled_bench_of_five_models_runs_twice_in_one_process(eager_compile, tiny_base, recipes, tmp_path):
    """Two graphs per model shape (prefill, decode) under one shared code object: five shapes pass dynamo's
    default limit of 8, a hard error under fullgraph, unless bench makes room (and starts each run from
    an empty cache)."""
    from midus.bench.measure import measure_interleaved

    names = [str(tiny_base), recipes["midus"], recipes["llama-pro"],
             write_recipe(tmp_path / "pro-1.yaml", tiny_base, "llama-pro", new_blocks=1),
             write_recipe(tmp_path / "pro-3.yaml", tiny_base, "llama-pro", new_blocks=3)]
    settings = TINY.model_copy(update={"compile": True, "warmup": 1, "repeats": 1, "train_seq_len": 2})
    for _ in range(2):
        measurements = measure_interleaved(names, settings)
        assert [m.name for m in measurements] == names
    assert len(eager_compile) == 2 * len(names)
