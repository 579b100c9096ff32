"""Install `fad` (with the `search/` and `augment/` stages as `fad.search` / `fad.augment`).

Set FAD_BUILD_OPS=1 to compile the C++/CUDA ops ahead of time; otherwise they are built
just-in-time on first use (and the pure-PyTorch fallback is used where no compiler exists).
docs/ops.md lists the ops, their backends and the build options.
"""
import os

from setuptools import find_namespace_packages, find_packages, setup


def _ext_modules():
    """The compiled ops when FAD_BUILD_OPS=1: the list in fad/ops/build.py (needs torch)."""
    if os.environ.get("FAD_BUILD_OPS", "0") != "1":
        return [], {}
    import importlib.util
    import sys

    root = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, root)  # build.py imports the light `fad.errors` and `fad.utils.csrc`
    path = os.path.join(root, "fad", "ops", "build.py")
    spec = importlib.util.spec_from_file_location("_fad_ops_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.setup_extensions()


packages = [p for p in find_packages(include=["fad", "fad.*"])]
packages += ["fad.search"] + ["fad.search." + p for p in find_packages("search")]
packages += ["fad.augment"] + ["fad.augment." + p for p in find_packages("augment")]
# kernel sources, so installed copies can JIT-build them: every csrc/ folder is a (data-only)
# package of its own, or setuptools warns that it is "absent from the packages configuration"
csrc_packages = ["fad._csrc"] + ["fad._csrc." + p for p in find_namespace_packages("csrc")]
packages += csrc_packages
ext_modules, cmdclass = _ext_modules()

setup(
    name="fad",
    version="0.1.0",
    description="Find and train fast object detectors: FAD search, SparseResNet, DETR variants",
    python_requires=">=3.9",
    packages=packages,
    package_dir={"fad.search": "search", "fad.augment": "augment", "fad._csrc": "csrc"},
    include_package_data=True,
    package_data={p: ["*.h", "*.cpp", "*.cu"] for p in csrc_packages},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "yacs",
        "tensorboardX",
        "graphviz",
        "pycocotools",
        "ninja",
        "scipy",
        "tqdm",
        "Pillow",
        "matplotlib",
    ],
    extras_require={
        "viz": ["tensorboard"],  # `tensorboard --logdir OUTPUT_DIR` to read the tb/ logs
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "tensorboard", "ruff"],  # ruff: .ci/run lints first
        "export": ["onnx", "onnxruntime", "onnxscript"],  # fad-export to ONNX, .onnx in fad-test
    },
    entry_points={"console_scripts": [  # the tools of fad.cli (tools/*.py wrap the same mains)
        "fad-search=fad.cli.search:run",
        "fad-train=fad.cli.train:run",
        "fad-test=fad.cli.test:run",
        "fad-eval=fad.cli.evaluate:run",
        "fad-demo=fad.cli.demo:run",
        "fad-visualize=fad.cli.visualize:run",
        "fad-bench=fad.cli.bench:run",
        "fad-convert=fad.cli.convert:run",
        "fad-make-data=fad.cli.make_data:run",
        "fad-check-data=fad.cli.check_data:run",
        "fad-device-audit=fad.cli.device_audit:run",
        "fad-export=fad.cli.export:run",
    ]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
