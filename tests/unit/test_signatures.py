"""The operation signature table's messages, as a .scn author reads them."""

from scnas_dsl.ops.signatures import LIBRARY_SIGNATURES


def test_messages_write_values_as_the_language_does() -> None:
    conv = LIBRARY_SIGNATURES.get("conv")
    assert conv is not None
    problems = dict(conv.problems({"kernel": True, "dilation": 0, "stride": 2}, dims=3))
    assert problems["kernel"] == "'kernel' takes whole numbers, not true"
    assert problems["dilation"] == "'dilation' must be at least 1 (got 0)"
    assert problems["stride"].startswith("'conv' has no parameter 'stride'")
    assert dict(conv.problems({"kernel": (3, 3)}, dims=3))["kernel"].startswith("'kernel' has 2 entries")
