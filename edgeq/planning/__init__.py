"""Planning: from a loaded model and a target to a per-layer quantization plan.

Stages, each feeding the next and never reaching back:
``inventory`` / ``graphfacts`` (what layers there are and what the program does with
them) → ``sensitivity`` (each layer × scheme's measured error) → ``memory`` (what a plan
holds at run time) → ``solver`` (least error within the budgets, a pure function) →
``plan`` (the plan value) and ``planner`` (the orchestration, plan files and rules).

May import: ``edgeq.errors``, ``edgeq.schemes``, ``edgeq.progress``, ``edgeq.yamlio``, ``edgeq.jsonio``,
``edgeq.atomic``, ``edgeq.artifact`` / ``edgeq.manifest`` (reading an artifact's plan back),
``edgeq.backends`` (registry and per-format costs), ``edgeq.models``, ``edgeq.targets``,
``edgeq.algorithms`` (calibrated candidates: GPTQ).
``solver`` imports nothing from edgeq but the plan values; nothing here imports the CLI.
"""
