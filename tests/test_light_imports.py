"""Tools that run no model start without torch (its import is seconds of every start)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import fad.data


@pytest.mark.parametrize("module", ["fad.cli.make_data", "fad.engine.tool", "fad.data.synthetic"])
def test_imports_without_torch(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_data_names_are_the_modules_objects():
    from fad.data import build as build_module
    from fad.data.voc import VOCDataset

    assert fad.data.build_dataset is build_module.build_dataset
    assert fad.data.VOCDataset is VOCDataset
    assert set(fad.data.__all__) == {"DataError", *fad.data._MODULE_OF}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fad.data.nothing  # noqa: B018
