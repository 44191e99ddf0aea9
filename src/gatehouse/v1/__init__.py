"""Generated protobuf and gRPC modules for the gatehouse.v1 API (see proto/gatehouse/v1/).

Regenerate with `python scripts/gen_protos.py`; never edit the *_pb2* files by hand.
"""
