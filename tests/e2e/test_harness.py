"""The harness itself: CRDs applied, the operator process up, a request gets Pending."""

from .scenario import condition, policy, request, unique, wait_phase


def test_a_new_request_becomes_pending_with_a_condition(cluster, running_operator):
    ns = cluster.new_namespace()
    pol = unique("slice")
    cluster.apply(policy(pol))
    cluster.apply(request("first", ns, pol), user="alice", verb="create")
    obj = wait_phase(cluster, "first", ns, "Pending")
    approved = condition(obj, "Approved")
    assert approved["status"] == "False" and approved["reason"] == "AwaitingApproval"
    assert approved["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["spec"]["requester"] == "alice"


def test_the_control_plane_reports_version_1_20_2(cluster):
    out = cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.20.2"' in out
