"""Where the split is chosen: context, objective, cost model, conformal prediction, the
threshold table and the policies (table modes R/M/A, baselines). numpy only; the tooling reuses
this layer offline."""
