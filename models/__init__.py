"""Model definitions the tooling exports; state_dict keys match torchvision's.

Generated bundles are written under models/<name>/ (not committed)."""
