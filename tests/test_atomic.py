import json

import pytest

from ceed_vla.atomic import atomic_directory, atomic_write_json, atomic_write_text


class Unserialisable:
    def __str__(self):
        raise RuntimeError("cannot serialise")


def test_failed_write_raises_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError, match="cannot serialise"):
        atomic_write_json(path, {"a": Unserialisable()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left behind


def test_text_is_replaced_whole_and_readable_by_others(tmp_path):
    path = tmp_path / "x.md"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o044 == 0o044


def test_directory_replaced_only_on_success(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_directory(target) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_savefig_writes_a_whole_png_and_leaves_no_temp_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ceed_vla.atomic import atomic_savefig

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = atomic_savefig(fig, tmp_path / "plots" / "curve.png")
    assert out.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in out.parent.iterdir()] == ["curve.png"]
    assert not plt.get_fignums()  # the figure was closed
