"""The documentation's code runs as written: every Python block of the tutorial (in order, one
namespace) and of the home page, with the values they print checked where the text claims them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", ["index.md", "tutorial.md"])
def test_every_python_block_runs(page, capsys):
    code = blocks(page)
    assert len(code) >= (1 if page == "index.md" else 7)
    scope: dict = {}
    for block in code:
        exec(compile(block, f"{page}", "exec"), scope)  # noqa: S102 - the documentation's own code
    if page == "tutorial.md":
        printed = capsys.readouterr().out.splitlines()
        assert printed[0].startswith("tensor(1.)")  # every sample of the first solve converged
        assert printed[2].endswith("sample evaluations instead of 2560")
        assert int(printed[2].split()[0]) < 2560  # converged samples stopped being evaluated
        assert scope["two"].a.parametrizations.weight.original1.grad.abs().sum() > 0  # weight norm gets gradients
        assert float(scope["est"].radius.max()) < 1.0  # the tutorial's cell is a contraction
        assert isinstance(scope["loss"], torch.Tensor)


def test_the_torchdeq_page_includes_both_versions_of_the_model():
    text = (DOCS / "torchdeq.md").read_text()
    assert '--8<-- "examples/mdeq_digits.py:model"' in text and '--8<-- "benchmarks/mdeq.py:torchdeq"' in text
    root = DOCS.parent
    for path, name in (("examples/mdeq_digits.py", "model"), ("benchmarks/mdeq.py", "torchdeq")):
        source = (root / path).read_text()
        assert f"# --8<-- [start:{name}]" in source and f"# --8<-- [end:{name}]" in source
