"""Per-role measurements (memory, FLOPs), computed the same way by every engine so they compare."""
