"""The README's demo on the real all-MiniLM-L6-v2: the walkthrough (demo.py), two evaluation tasks on real
data (tasks.py) and the forward pass they need (encoder.py).

This folder is an example of using mlvc, not part of the installed package: `python -m mlvc.demo` finds it in
the source tree and loads it under the name `mlvc_example_minilm`; each file also runs as a script
(`python examples/minilm/demo.py`, `python examples/minilm/tasks.py TASK CHECKPOINT OUTPUT`).
"""
