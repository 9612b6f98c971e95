"""Prompt banks: built-in files, validation errors naming the file, per-class embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semclip_bench.data.types import DEFECT_TYPES, NORMAL_LABEL
from semclip_bench.errors import UserError
from semclip_bench.prompts import (
    BUILTIN_BANKS,
    class_text_embeddings,
    embed_prompt_groups,
    group_sums,
    load_prompt_bank,
)

CLASSES = (NORMAL_LABEL, *DEFECT_TYPES)


class FakeBackbone:
    """encode_text stand-in: a fixed random vector per distinct string, records the calls."""

    embed_dim = 16

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._table: dict[str, torch.Tensor] = {}
        self._gen = torch.Generator().manual_seed(0)

    def encode_text(self, texts, normalize: bool = True) -> torch.Tensor:
        self.calls.append(list(texts))
        for t in texts:
            if t not in self._table:
                self._table[t] = torch.randn(self.embed_dim, generator=self._gen)
        out = torch.stack([self._table[t] for t in texts])
        return F.normalize(out, dim=-1) if normalize else out


@pytest.mark.parametrize("name", BUILTIN_BANKS)
def test_builtin_banks_cover_every_class(name: str) -> None:
    bank = load_prompt_bank(name)
    assert bank.name == name and bank.source is not None and bank.source.is_file()
    assert bank.missing(CLASSES) == []
    for cls in CLASSES:
        prompts = bank.prompts_for(cls)
        assert len(prompts) == len(bank.templates) * len(bank.states_for(cls))
        assert all("{}" not in p for p in prompts)


def test_expert_bank_is_sem_specific_and_generic_is_bare() -> None:
    expert = load_prompt_bank("expert")
    assert len(expert.templates) >= 3 and len(expert.states_for(NORMAL_LABEL)) >= 3
    assert all(len(expert.states_for(d)) >= 3 for d in DEFECT_TYPES)
    assert any("SEM" in t for t in expert.templates)
    assert "A SEM image of a bridge between adjacent lines on wafer surface." in (
        expert.prompts_for("bridge")
    )
    generic = load_prompt_bank("generic")
    assert "a photo of a copper residue." in generic.prompts_for("copper_residue")
    assert all("SEM" not in p and "wafer" not in p for c in CLASSES for p in generic.prompts_for(c))


def test_class_embeddings_are_normalised_means() -> None:
    backbone = FakeBackbone()
    bank = load_prompt_bank("expert")
    emb = class_text_embeddings(backbone, CLASSES, bank)
    assert emb.shape == (len(CLASSES), backbone.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(CLASSES)))
    assert len(backbone.calls) == 1  # one batched text call
    for i, cls in enumerate(CLASSES):
        each = torch.stack([backbone._table[p] for p in bank.prompts_for(cls)])
        ref = F.normalize(F.normalize(each, dim=-1).mean(0), dim=-1)
        assert torch.allclose(emb[i], ref, atol=1e-6)
    generic = class_text_embeddings(backbone, CLASSES, "generic")
    assert not torch.allclose(generic, emb)


def test_user_bank_and_fallback_to_bare_names(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "templates: ['an image of {}', 'a SEM photo with {}']\nclasses:\n  good: [fine lines]\n"
    )
    bank = load_prompt_bank(path)
    assert bank.name == "mine" and bank.prompts_for("good") == [
        "an image of fine lines",
        "a SEM photo with fine lines",
    ]
    assert bank.prompts_for("copper_residue") == [
        "an image of copper residue",
        "a SEM photo with copper residue",
    ]
    emb = class_text_embeddings(FakeBackbone(), ("good", "copper_residue"), str(path))
    assert emb.shape == (2, 16)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("templates: [a photo]\n", "exactly one"),
        ("classes: {good: [x]}\n", "missing 'templates'"),
        ("templates: ['{}']\nclasses: {good: []}\n", "classes.good"),
        ("templates: ['{}']\nclases: {good: [x]}\n", "unknown key"),
        ("- just a list\n", "expected a mapping"),
        ("templates: ['{}'\n", "cannot be read as YAML"),
        ("templates: ['{} and {}']\n", "exactly one"),
    ],
)
def test_bad_bank_files_raise_user_error_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        load_prompt_bank(path)
    assert str(path) in str(info.value)


def test_missing_file_and_unknown_name_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_prompt_bank(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="expert"):
        load_prompt_bank("no-such-bank")


def test_embed_prompt_groups_rejects_empty_groups() -> None:
    with pytest.raises(ValueError):
        embed_prompt_groups(FakeBackbone(), [["a"], []])


def test_group_sums_add_each_group_in_row_order() -> None:
    """The same bits as the CPU's ``index_add_`` (so CPU rows do not move), by construction free
    of the atomics CUDA's ``index_add_`` uses outside deterministic mode."""
    g = torch.Generator().manual_seed(0)
    sizes = [1, 40, 7, 26]
    rows = torch.randn(sum(sizes), 64, generator=g)
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    expected = torch.zeros(len(sizes), 64).index_add_(0, owner, rows)
    assert torch.equal(group_sums(rows, sizes), expected)
    with pytest.raises(ValueError, match="do not split"):
        group_sums(rows, [1, 2])
