"""flowpin's control plane: daemon, CLI, tunnel registry, flow table, sweeper, lab."""
