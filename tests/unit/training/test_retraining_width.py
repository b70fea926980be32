"""Which stem width a retraining uses when none is given."""

from __future__ import annotations

from scnas_dsl.training.config import PAPER_RETRAINING_WIDTH, TrainConfig, retraining_width


def test_the_command_line_wins() -> None:
    assert retraining_width(12, 32, True) == (12, "--stem-width")
    assert retraining_width(12, 48, False)[0] == 12


def test_a_file_that_defines_its_network_keeps_its_width() -> None:
    width, why = retraining_width(None, 32, True)
    assert width == 32 and "spec" in why


def test_a_genotype_of_an_imported_space_gets_the_papers_retraining_width() -> None:
    width, why = retraining_width(None, 48, False)
    assert width == PAPER_RETRAINING_WIDTH == 68
    assert "the space says 48" in why


def test_the_default_is_unresolved() -> None:
    assert TrainConfig(genotype="g.scn", data="d").stem_width is None
