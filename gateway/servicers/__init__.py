"""gRPC servicers: the only gateway code that touches generated protobuf types."""
