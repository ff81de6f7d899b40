"""Generated protobuf/gRPC stubs of navsvc.v1 (do not edit)."""
