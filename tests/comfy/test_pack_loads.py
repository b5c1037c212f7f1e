"""The pack registers through the V3 entry point and every node has a described schema."""


def test_all_nodes_registered_with_tooltips(comfy_nodes, pack):
    schemas = [node.GET_SCHEMA() for node in pack.nodes.ALL_NODES]
    assert schemas, "the pack registers no node"
    for schema in schemas:
        assert comfy_nodes.NODE_CLASS_MAPPINGS[schema.node_id].GET_SCHEMA().node_id == schema.node_id
        assert schema.description, f"{schema.node_id} has no description"
        assert schema.category == "Tune-A-Video"
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
    assert pack.WEB_DIRECTORY == "./web"
