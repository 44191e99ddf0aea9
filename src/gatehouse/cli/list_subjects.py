"""`gatehouse list-subjects RESOURCE PERMISSION SUBJECT_TYPE`: one `type:id` per line."""

from __future__ import annotations

import argparse
from typing import Any

from gatehouse.server.client import add_client_args, run_client
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "list-subjects", help="list every subject of a type holding PERMISSION on RESOURCE"
    )
    add_client_args(p)
    p.add_argument("resource", metavar="RESOURCE")
    p.add_argument("permission", metavar="PERMISSION")
    p.add_argument("subject_type", metavar="SUBJECT_TYPE")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def body(stub: pb_grpc.DecisionServiceStub, timeout: float) -> None:
        req = pb.ListSubjectsRequest(
            resource=args.resource,
            permission=args.permission,
            subject_type=args.subject_type,
            at_least_revision=args.at_least_revision,
        )
        r = stub.ListSubjects(req, timeout=timeout)
        for s in r.subjects:
            print(s if ":" in s else f"{args.subject_type}:{s}")

    return run_client(args, body)
