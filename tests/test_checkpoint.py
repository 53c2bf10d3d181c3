"""midus.checkpoint: names resolved with one-line errors, output folders written whole or not at all,
report files replaced all together or not at all, checksums that name what changed."""

import errno
import json

import pytest

from midus.checkpoint import (CHECKSUMS_FILE, atomic_dir, atomic_write_text, check_out_dir, checksum_problem,
                              first_line, load_config, resolve, write_checksums, write_files)
from midus.errors import MidusError, UsageError


def disk_full(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --- resolve / load_config -----------------------------------------------------------------------------


def test_resolve_keeps_a_model_folder_and_a_hub_id(tiny_base):
    assert resolve(str(tiny_base)) == str(tiny_base)
    assert resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # not looked up


@pytest.mark.parametrize("kind", ["empty-folder", "file"])
def test_resolve_refuses_what_is_not_a_model_folder(tmp_path, kind):
    path = tmp_path / kind
    path.mkdir() if kind == "empty-folder" else path.write_text("{}")
    with pytest.raises(MidusError) as error:
        resolve(str(path))
    assert one_line(error) == f"{path}: not a Hugging Face model folder (no config.json)"


def test_resolve_names_a_missing_folder(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(MidusError) as error:
        resolve(str(missing))
    assert one_line(error) == f"{missing}: no such folder"


def test_load_config_reads_a_folder_and_names_an_unreadable_config(tiny_base, tmp_path):
    assert load_config(str(tiny_base)).num_hidden_layers == 4
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(MidusError) as error:
        load_config(str(broken))
    assert one_line(error).startswith(f"{broken}: its config.json is unreadable (")
    with pytest.raises(MidusError) as error:
        load_config(str(tmp_path / "nowhere"))
    assert one_line(error) == f"{tmp_path / 'nowhere'}: no such folder"


def test_first_line_is_the_root_cause_s_first_line():
    try:
        try:
            raise KeyError("the reason\nand its details")
        except KeyError as cause:
            raise ValueError("a wrapper") from cause
    except ValueError as error:
        assert first_line(error) == "'the reason\\nand its details'"  # KeyError quotes its message
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(ValueError("")) == "ValueError"


# --- check_out_dir / atomic_dir ------------------------------------------------------------------------


def test_check_out_dir_accepts_a_new_or_empty_folder_only(tmp_path):
    assert check_out_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_out_dir(str(tmp_path / "empty")) == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    (tmp_path / "a-file").write_text("mine")
    for taken in ("full", "a-file"):
        with pytest.raises(UsageError) as error:
            check_out_dir(tmp_path / taken)
        assert one_line(error) == f"output {tmp_path / taken} exists and is not empty; choose a new folder"


def test_atomic_dir_renames_the_finished_folder_into_place(tmp_path):
    out = tmp_path / "made" / "for" / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.tmp-") and not out.exists()
        (tmp / "weights.txt").write_text("w")
    assert [p.name for p in out.iterdir()] == ["weights.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary sibling left


def test_atomic_dir_fills_an_existing_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]


def test_atomic_dir_leaves_nothing_when_the_block_fails(tmp_path):
    out = tmp_path / "made" / "for" / "out"
    with pytest.raises(KeyError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyError("interrupted")  # not an OSError: re-raised as it is
    assert list(tmp_path.iterdir()) == []  # the parents it made are gone too


def test_atomic_dir_keeps_the_parents_it_did_not_make(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "other").write_text("mine")
    with pytest.raises(KeyError):
        with atomic_dir(tmp_path / "runs" / "new" / "out"):
            raise KeyError("interrupted")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["other"]


def test_atomic_dir_turns_a_failed_write_into_one_line(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MidusError) as error:
        with atomic_dir(out) as tmp:
            disk_full(tmp / "model.safetensors")
    message = one_line(error)
    assert message.startswith("cannot write ") and message.endswith(
        f"model.safetensors: No space left on device; nothing was written to {out}")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_never_replaces_an_existing_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    entered = []
    with pytest.raises(UsageError, match="exists and is not empty"):
        with atomic_dir(out):
            entered.append(True)
    assert not entered  # refused before any work
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "mine.txt").read_text() == "mine"


def test_atomic_dir_does_not_replace_a_folder_filled_meanwhile(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MidusError):
        with atomic_dir(out) as tmp:
            (tmp / "ours.txt").write_text("ours")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")  # another process got there first
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]


# --- atomic_write_text / write_files -------------------------------------------------------------------


def test_atomic_write_text_keeps_the_old_text_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    monkeypatch.setattr("midus.checkpoint.os.replace", lambda src, dst: disk_full(dst))
    with pytest.raises(OSError):
        atomic_write_text(path, "newer")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_files_writes_every_file_and_keeps_the_others(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "report.json").write_text("old")
    paths = write_files(tmp_path, {"report.json": lambda p: p.write_text(json.dumps({"a": 1})),
                                   "report.md": lambda p: p.write_text("# report")})
    assert paths == [tmp_path / "report.json", tmp_path / "report.md"]
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.json", "report.md"]


def test_write_files_replaces_all_or_none(tmp_path):
    (tmp_path / "report.json").write_text("old")
    written = []

    def second_fails(path):
        written.append(path)
        disk_full(path)

    with pytest.raises(MidusError) as error:
        write_files(tmp_path, {"report.json": lambda p: p.write_text("new"), "report.md": second_fails})
    assert one_line(error).endswith(f"No space left on device; nothing in {tmp_path} was replaced")
    assert written and written[0].parent == tmp_path and written[0].name != "report.md"  # a temporary sibling
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left
    assert (tmp_path / "report.json").read_text() == "old"


def test_write_files_removes_the_folders_it_made_when_it_fails(tmp_path):
    with pytest.raises(ZeroDivisionError):
        write_files(tmp_path / "reports" / "run-1", {"a.txt": lambda p: p.write_text("a"), "b.txt": lambda p: 1 / 0})
    assert list(tmp_path.iterdir()) == []


# --- checksums (an edited file is tested in tests/train/test_run_folder.py) ------------------------------


def test_checksums_name_a_missing_file_or_a_missing_record(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.txt").write_text("b")
    assert checksum_problem(tmp_path) == f"no readable {CHECKSUMS_FILE} (an unfinished or damaged save)"
    write_checksums(tmp_path)
    assert checksum_problem(tmp_path) is None
    assert sorted((tmp_path / CHECKSUMS_FILE).read_text().split()[1::2]) == ["a.txt", "sub/b.txt"]
    (tmp_path / "sub" / "b.txt").unlink()
    assert checksum_problem(tmp_path) == "'sub/b.txt' is missing"
