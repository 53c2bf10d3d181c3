"""The optimiser rule: which parameter goes to which group, and the schedules."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from midus.errors import UsageError
from midus.parameters import memory_group_parameter_names
from midus.train.optim import Constant, WarmupCosine, build_scheduler, parameter_groups, select_trainable
from train_helpers import tiny_config


def test_groups_split_memory_matrices_and_vectors(tiny_midus):
    model = AutoModelForCausalLM.from_pretrained(tiny_midus)
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-3, memory_lr=2e-3, weight_decay=0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {key: {names[id(p)] for p in group["params"]} for key, group in groups.items()}
    assert members["memory"] == memory_group_parameter_names(model) and members["memory"]
    assert all(".memory." in n and n.endswith((".keys", ".bank")) for n in members["memory"])
    assert all(model.get_parameter(n).ndim >= 2 for n in members["decay"])
    assert all(model.get_parameter(n).ndim == 1 for n in members["no_decay"])
    assert any("values.proj" in n for n in members["decay"])  # HIVE's P is scheduled like the backbone
    assert sum(len(m) for m in members.values()) == len(list(model.parameters()))
    assert (groups["memory"]["lr"], groups["memory"]["weight_decay"], groups["memory"]["scheduled"]) == (2e-3, 0.0, False)
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.1, 0.0)


def test_projection_group_memory_moves_hive_projections_into_the_memory_group(tiny_midus):
    model = AutoModelForCausalLM.from_pretrained(tiny_midus)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]}
              for g in parameter_groups(model, 1e-3, 2e-3, 0.1, projection_group="memory")}
    projections = {n for n in names.values() if n.endswith("memory.values.proj.weight")}
    assert len(projections) == 2 and groups["memory"] == memory_group_parameter_names(model) | projections
    assert not projections & groups["decay"]


def test_frozen_parameters_are_in_no_group(tiny_midus):
    model = AutoModelForCausalLM.from_pretrained(tiny_midus)
    trainable = select_trainable(model, "new-blocks")
    assert 0 < trainable < sum(p.numel() for p in model.parameters())
    groups = parameter_groups(model, lr=1e-3, memory_lr=1e-3, weight_decay=0.1)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable


def test_plain_llama_has_no_memory_group_and_refuses_memory_training(tiny_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert [g["name"] for g in parameter_groups(model, 1e-3, 1e-3, 0.1)] == ["decay", "no_decay"]
    with pytest.raises(UsageError, match="no memory layers"):
        select_trainable(model, "memory")
    with pytest.raises(UsageError, match="no layer_map with new blocks"):
        select_trainable(model, "new-blocks")


def test_warmup_then_cosine_to_the_floor():
    schedule = WarmupCosine(warmup_steps=4, total_steps=14, floor=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # the 4th step reaches the maximum
    decay = [schedule(s) for s in range(4, 14)]  # 10 steps from 1 down to the floor at the last step
    assert decay == pytest.approx([0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 9)) for k in range(10)])
    assert decay[0] == 1.0 and decay[-1] == pytest.approx(0.1) and decay == sorted(decay, reverse=True)


def test_scheduler_keeps_the_memory_group_constant(tiny_midus, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_midus)
    config = tiny_config(tiny_midus, tmp_path, {"files": ["x.txt"]}, max_steps=10, warmup=3, lr=1e-2)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.lr, config.lr, 0.1), lr=config.lr)
    scheduler = build_scheduler(optimizer, config)
    assert [type(rule) for rule in scheduler.lr_lambdas] == [WarmupCosine, WarmupCosine, Constant]
    seen = []
    for _ in range(10):
        seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert all(lrs["memory"] == 1e-2 for lrs in seen)
    assert [round(lrs["decay"] / 1e-2, 6) for lrs in seen[:3]] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]
    assert seen[-1]["decay"] == pytest.approx(1e-2 * config.min_lr_ratio)
