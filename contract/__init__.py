"""The contract every tier shares: version order, name rules, the bundle file format, the
model signature, the dtype table and the one bounded-cache policy. Pure Python and numpy: no
gRPC, no torch."""
