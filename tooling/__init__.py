"""CarbonCP offline tooling: export, profiling, Q_theta, conformal calibration, evaluation."""
