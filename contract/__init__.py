"""The contract every tier shares: version order, name rules, the bundle file format, the
model signature and the dtype table. Pure Python and numpy: no gRPC, no torch."""
