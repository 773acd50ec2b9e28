"""What travels on the wire: the tensor codec (validation of untrusted bytes, LZ4) and request
assembly from pre-encoded tensors."""
