"""Results reports generated from a run's JSON alone (see docs/reports.md)."""
