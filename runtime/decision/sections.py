"""Load-time checks of the bundle sections the decision reads (profile, objective, table).

They live above the bundle loader, which knows only files and partitions, so the bundle layer
never imports the decision layer.
"""

from __future__ import annotations

from carboncp.runtime.artifacts.bundle import Bundle
from carboncp.runtime.decision.costs import cost_model_of
from carboncp.runtime.decision.table import Table


def check_sections(bundle: Bundle) -> None:
    """Load every section the runtime reads (profile, objective, table) so that a corrupt one
    fails here with a BundleError/ConfigError naming its file, not later mid-run.

    Raises:
        BundleError: a section's file has the wrong type, shape or partition count.
        ConfigError: the objective or device profile in the bundle is invalid.
    """
    if bundle.section("profile") is not None:
        cost_model_of(bundle, objective_required=False)
    if bundle.section("table") is not None:
        Table.from_bundle(bundle)
