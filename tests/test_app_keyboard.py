"""The pages' keyboard script is one static asset (``labeling_app/static/keyboard.js``): it ships in the
package built from a clean copy of the tracked files, and both pages' scripts are built from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from labeling_app.keyboard import ASSET, compare_script, rank_script

ROOT = Path(__file__).resolve().parent.parent


def test_both_pages_load_the_one_asset_with_their_own_keys():
    asset = ASSET.read_text(encoding="utf-8")
    compare, rank = compare_script(), rank_script()
    assert asset in compare and asset in rank
    assert '"name": "compare"' in compare and '"choice-left"' in compare and '"prefix": "crit"' in compare
    assert '"name": "rank"' in rank and '"rank_submit"' in rank and "choice-left" not in rank
    for script in (compare, rank):  # the sanitizer drops a script whose text holds anything tag-like
        body = script.removeprefix("<script>").removesuffix("</script>\n")
        assert "<" not in body and ">" not in body


@pytest.mark.slow
def test_the_asset_ships_in_the_wheel_of_a_fresh_copy(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    source = tmp_path / "src"
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("therapref-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("labeling_app/static/keyboard.js").decode("utf-8")
    assert shipped == ASSET.read_text(encoding="utf-8")
