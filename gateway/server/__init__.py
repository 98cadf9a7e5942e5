"""The gRPC server: the composition root (app.py), the interceptor every RPC goes through
(interceptors.py) and the servicers that convert protobuf to the domain types (servicers/)."""
