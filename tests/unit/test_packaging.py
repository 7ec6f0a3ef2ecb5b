import importlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_import_operator_is_still_the_stdlib_module():
    import operator

    assert operator.add(2, 3) == 5
    assert "site-packages" not in (operator.__file__ or "") or "lib/python" in operator.__file__
    assert pathlib.Path(operator.__file__).parent != ROOT / "operator"


def test_import_breakglass_works_from_the_source_root():
    mod = importlib.import_module("breakglass")
    assert pathlib.Path(mod.__file__).parent == ROOT / "operator" / "breakglass"


def test_the_source_root_is_not_a_package():
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_crds_are_generated_from_hack_gen_crds_without_drift():
    sys.path.insert(0, str(ROOT / "hack"))
    import gen_crds

    for name, text in gen_crds.render().items():
        assert (ROOT / "crds" / name).read_text() == text, f"crds/{name} drifted: run make crds"
        assert (ROOT / "charts" / "breakglass-operator" / "crds" / name).read_text() == text


def _walk(schema, path="spec"):
    if "description" not in schema and path.count(".") > 0:
        yield path
    for key, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_crd_field_has_a_description():
    import yaml

    for path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        missing = [p for p in _walk(schema["properties"]["spec"], "spec.x")]
        missing += [p for p in _walk(schema["properties"]["status"], "status.x")]
        assert not missing, f"{path.name}: fields without description: {missing}"
        assert crd["spec"]["names"]["categories"] == ["breakglass"]
