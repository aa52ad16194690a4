"""The analyses of trained models: barriers, the Hessian, loss landscapes and client-update statistics.

Each analysis is a package: `definitions` (torch-free: settings, table columns, what the plan and the
light jobs need), its maths, its workflow stage (checkpoints in, per-job tables out), its table gathering
and its figures (both torch-free).
"""
