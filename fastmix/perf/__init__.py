"""Stage 4, profile and cost: measured steps, calibration, and the cost model's predictions.
May import every stage below it (base, data, loaders, train)."""
