"""gRPC plumbing shared by every server and client: TLS, message limits, allocator tuning, the
serve-until-signalled loop."""
