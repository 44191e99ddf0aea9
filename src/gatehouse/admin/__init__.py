"""Admin workflows of the seed products over the system of record, each authorized by a
gatehouse decision (docs/admin.md)."""

from gatehouse.admin.authz import Authorizer, LocalAuthorizer, RemoteAuthorizer
from gatehouse.admin.config import AdminConfig, AdminError, load_config
from gatehouse.admin.service import Admin, Denied, NotFound, Result

__all__ = [
    "Admin",
    "AdminConfig",
    "AdminError",
    "Authorizer",
    "Denied",
    "LocalAuthorizer",
    "NotFound",
    "RemoteAuthorizer",
    "Result",
    "load_config",
]
