"""Leaf tier: model repository with versions, signature-driven converter, dynamic batcher,
TorchScript inference on GPU or CPU, served over ``grpc.aio`` as ``rootleaf.v1.Leaf``."""
