"""Admission decisions for requests and approvals. Identity comes only from the API server's userinfo.

Functions here return `Verdict`s or patches; `handlers.py` turns a failed verdict into
`kopf.AdmissionError` (whose message reaches kubectl verbatim).
"""

from .approvals import stamp_approval_request, validate_approval_create, validate_approval_update
from .changes import authorize_request_change, only_revokes, operator_only_metadata, validate_request_update
from .common import (
    CONTROL_PLANE_USERS,
    IMMUTABLE_REQUEST_FIELDS,
    MAX_REQUEST_NAME,
    OK,
    stamp_approval_identity,
    stamp_request_identity,
)
from .requests import (
    RequestRules,
    check_namespaces_exist,
    is_identity_probe,
    validate_request,
    validate_request_create,
)

__all__ = [
    "CONTROL_PLANE_USERS",
    "IMMUTABLE_REQUEST_FIELDS",
    "MAX_REQUEST_NAME",
    "OK",
    "RequestRules",
    "authorize_request_change",
    "check_namespaces_exist",
    "is_identity_probe",
    "only_revokes",
    "operator_only_metadata",
    "stamp_approval_identity",
    "stamp_approval_request",
    "stamp_request_identity",
    "validate_approval_create",
    "validate_approval_update",
    "validate_request",
    "validate_request_create",
    "validate_request_update",
]
