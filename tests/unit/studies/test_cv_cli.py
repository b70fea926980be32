"""``scnas cv`` on the command line without training: its help texts (the retraining's options, not
``scnas train``'s/``search``'s), and a command refused before it makes its ``--out`` folder."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import generated_set, invoke

BASELINE = Path(__file__).resolve().parents[3] / "specs" / "baselines" / "unet3d.scn"


def test_cv_help_describes_the_retraining_options() -> None:
    code, output = invoke("cv", "--help")
    assert code == 0, output
    text = re.sub(r"[\s│]+", " ", output)  # the help box: one line of words
    assert "200 search" not in text and "48 search" not in text and "4 search" not in text, text
    for option, words in (("--epochs", "epochs of each fold's retraining"),
                          ("--batch-size", "batch size of each fold's retraining"),
                          ("--stem-width", "stem width of each fold's retraining")):
        assert re.search(re.escape(option) + r".*?" + re.escape(words), text), (option, text)


def test_a_refused_cv_leaves_no_out_folder(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    code, output = invoke("cv", BASELINE, "--data", tmp_path / "nothing", "--out", out)
    assert code == 1 and "no such data set folder" in output, output
    assert not out.exists()
    _, pre = generated_set(tmp_path, "heart", size=16)
    code, output = invoke("cv", BASELINE, "--data", pre, "--out", out, "--fold", "7", "--quiet")
    assert code == 1 and "fold(s) 7 do not exist" in output, output
    assert not out.exists()  # so the corrected command runs without --force


def test_a_refused_cv_leaves_an_existing_empty_out_folder_empty(tmp_path: Path) -> None:
    out = tmp_path / "cv"
    out.mkdir()
    code, output = invoke("cv", BASELINE, "--data", tmp_path / "nothing", "--out", out)
    assert code == 1 and list(out.iterdir()) == [], output
