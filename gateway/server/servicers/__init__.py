"""The gRPC servicers: protobuf to the domain types and back, nothing else (the interceptor and
the director do the rest)."""
