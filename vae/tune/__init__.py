"""Ray Tune searches of a pipeline's settings on the same Ray, each trial a Ray Train run and an
MLflow child run; the best trial registered through the gate.

May import: vae's root modules and every stage package (it drives train, evaluate and registry).
"""
