"""TorchServe gRPC API (vendored protos from TorchServe 0.12.0; generated code, see `make proto`)."""
