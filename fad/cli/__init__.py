"""The command-line tools, importable so that an installed `fad` has its console commands.

This package is the one layer above the stages: it may import `fad.search` and `fad.augment`,
and nothing in `fad` (or in the stages) imports it. Dependencies point one way:
`tools/*.py` (thin wrappers) -> `fad.cli` -> `fad.search` / `fad.augment` -> `fad`.

Every module holds one tool: `main(argv)` parses and runs it (tests call it in-process) and
`run()` is the console command (`main` under `fad.engine.tool.run_tool`, so bad input is one
`error: ...` line and exit code 2):

    fad-search     fad.cli.search      tools/search_net.py
    fad-train      fad.cli.train       tools/train_net.py
    fad-test       fad.cli.test        tools/test_net.py
    fad-eval       fad.cli.evaluate    tools/eval_detections.py
    fad-demo       fad.cli.demo        tools/demo.py
    fad-visualize  fad.cli.visualize   tools/visualize_genotype.py
    fad-bench      fad.cli.bench       tools/benchmark.py
    fad-convert    fad.cli.convert     tools/convert_checkpoint.py
    fad-make-data  fad.cli.make_data   tools/make_synthetic_data.py
    fad-check-data fad.cli.check_data  tools/check_data.py
    fad-device-audit fad.cli.device_audit tools/device_audit.py
    fad-export     fad.cli.export      tools/export_model.py

Besides the tools, `fad.cli.pipeline` runs several of them from one process (each forked from
a parent that imports torch once): scripts/demo.py, the main job, is such a pipeline.
"""
