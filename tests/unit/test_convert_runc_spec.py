"""A config.json as runc writes it survives the trip through Kata's grpc.Spec (what agentctl and the
end-to-end tests send): mounts keep their lowercase fields, device rules without numbers stay "any"."""

from __future__ import annotations

from agent.rpc.convert_oci import dict_to_spec, spec_to_dict
from tests.helpers.bundle import runc_default_spec


def test_runc_spec_round_trip() -> None:
    spec = runc_default_spec()
    back = spec_to_dict(dict_to_spec(spec))
    assert back["ociVersion"] == spec["ociVersion"]
    assert [(m["destination"], m["type"], m["source"]) for m in back["mounts"]] == [
        (m["destination"], m["type"], m["source"]) for m in spec["mounts"]
    ]
    assert [m.get("options", []) for m in back["mounts"]] == [m.get("options", []) for m in spec["mounts"]]
    rules = back["linux"]["resources"]["devices"]
    assert rules == [{"allow": False, "type": "", "access": "rwm"}]  # no major/minor: any device
    assert [ns["type"] for ns in back["linux"]["namespaces"]] == [ns["type"] for ns in spec["linux"]["namespaces"]]
    assert back["linux"]["maskedPaths"] == spec["linux"]["maskedPaths"]
    assert back["process"]["args"] == spec["process"]["args"]
    assert back["process"]["capabilities"]["bounding"] == spec["process"]["capabilities"]["bounding"]
    assert back["process"]["rlimits"] == spec["process"]["rlimits"]
