"""`gatehouse list-allowed SUBJECT PERMISSION RESOURCE_TYPE`: one `type:id` per line."""

from __future__ import annotations

import argparse
from typing import Any

from gatehouse.server.client import add_client_args, run_client
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "list-allowed", help="list every resource of a type SUBJECT has PERMISSION on"
    )
    add_client_args(p)
    p.add_argument("--page-size", type=int, default=0, help="ids per page (0: server default)")
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("permission", metavar="PERMISSION")
    p.add_argument("resource_type", metavar="RESOURCE_TYPE")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def body(stub: pb_grpc.DecisionServiceStub, timeout: float) -> None:
        req = pb.ListAllowedRequest(
            subject=args.subject,
            permission=args.permission,
            resource_type=args.resource_type,
            page_size=args.page_size,
            at_least_revision=args.at_least_revision,
        )
        for page in stub.ListAllowed(req, timeout=timeout):
            for i in page.ids:
                print(i)

    return run_client(args, body)
