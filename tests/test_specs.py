import pytest

from tunnelscope.errors import SpecError
from tunnelscope.specs import Spec, parse_index_set, parse_spec


def test_parse_name_and_modifiers_in_order():
    spec = parse_spec("fashion-mnist[classes=0-4, size=32]")
    assert spec == Spec("fashion-mnist", {"classes": "0-4", "size": "32"})
    assert str(spec) == "fashion-mnist[classes=0-4,size=32]"
    assert parse_spec("digits") == Spec("digits", {})


@pytest.mark.parametrize("text", ["", "   ", "a[b]", "a[=1]", "a[b=]", "a[b=1,b=2]", "a[b=1]]", "a[[b=1]"])
def test_bad_specs_raise(text):
    with pytest.raises(SpecError):
        parse_spec(text)


def test_index_sets():
    assert parse_index_set("0-4", "classes", "s") == [0, 1, 2, 3, 4]
    assert parse_index_set("7", "classes", "s") == [7]
    assert parse_index_set("5-6+1+3", "classes", "s") == [5, 6, 1, 3]
    for bad in ("4-0", "a", "1+1", "-1", "1-"):
        with pytest.raises(SpecError):
            parse_index_set(bad, "classes", "s")
