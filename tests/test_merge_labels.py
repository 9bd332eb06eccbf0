"""merge_labels.py reproduces the authors' merged Politosphere files row by row."""
import json

import pytest

from conftest import DATA, run_script

GOLD = DATA / "politosphere" / "daccord_yifei_v2_leo.json"


def rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


@pytest.mark.parametrize("merge", ["pol_unpol_oth", "supp_anti_oth", "5labels_oth", "6labels_keep_neu"])
def test_named_merges_reproduce_the_authors_files(tmp_path, merge, capsys):
    out = tmp_path / f"{merge}.json"
    assert run_script("merge_labels", ["--input_file", GOLD, "--merge", merge, "--output_file", out]) == 0
    assert rows(out) == rows(DATA / "politosphere" / f"daccord_yifei_v2_leo_{merge}.json")
    printed = capsys.readouterr().out
    assert "before:" in printed and "after:" in printed


def test_the_source_projects_numbered_flags(tmp_path):
    out = tmp_path / "merged.json"
    code = run_script("merge_labels", ["--input_file", GOLD, "--merged_labels", "{1:[1,4],2:[2,5],3:[3,6,7]}",
                                       "--new_labels", "{1:'polarized',2:'unpolarized',3:'other'}",
                                       "--output_file", out])
    assert code == 0
    assert rows(out) == rows(DATA / "politosphere" / "daccord_yifei_v2_leo_pol_unpol_oth.json")
    out2 = tmp_path / "merged2.json"
    code = run_script("merge_labels", ["--input_file", GOLD, "--merged_labels", "{1:[1,2],2:[4,5],3:[3,6,7]}",
                                       "--new_labels", "{1:'support gun',2:'anti gun',3:'other'}",
                                       "--output_file", out2])
    assert code == 0
    assert rows(out2) == rows(DATA / "politosphere" / "daccord_yifei_v2_leo_supp_anti_oth.json")


@pytest.mark.parametrize("merged,new,message", [
    ("{1:[1,4],2:[2,4],3:[3,6,7,5]}", "{1:'a',2:'b',3:'c'}", "maps label 'Anti Gun Polarized' twice"),
    ("{1:[1,4],2:[2,5],3:[3,6]}", "{1:'a',2:'b',3:'c'}", "'Not Sure'] unmapped"),
    ("{1:[1,4],2:[2,5],3:[3,6,9]}", "{1:'a',2:'b',3:'c'}", "label number 9"),
    ("__import__('os').system('touch HACKED')", "{1:'a'}", "not a literal dict"),
])
def test_bad_merges_fail_with_one_line_and_write_nothing(tmp_path, capsys, merged, new, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.json"
    code = run_script("merge_labels", ["--input_file", GOLD, "--merged_labels", merged, "--new_labels", new,
                                       "--output_file", out])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "HACKED").exists()


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text("keep me")
    assert run_script("merge_labels", ["--input_file", GOLD, "--merge", "pol_unpol_oth", "--output_file", out]) == 2
    assert out.read_text() == "keep me"
    assert "already exists" in capsys.readouterr().err
    assert run_script("merge_labels", ["--input_file", GOLD, "--merge", "pol_unpol_oth", "--output_file", out,
                                       "--overwrite"]) == 0


def test_a_row_with_an_unknown_label_is_named(tmp_path, capsys):
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"id": "x", "User label": "Maybe Gun"}) + "\n")
    assert run_script("merge_labels", ["--input_file", src, "--merge", "pol_unpol_oth",
                                       "--output_file", tmp_path / "o.json"]) == 2
    assert "'Maybe Gun'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
