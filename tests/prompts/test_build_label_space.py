import json
import subprocess
import sys


def test_the_shipped_label_space_is_what_its_build_makes_and_help_writes_nothing(tmp_path):
    from freeatm_hf.prompts.build_label_space import OUT, build, main

    shipped = OUT.read_bytes()
    assert build() == json.loads(shipped)
    res = subprocess.run([sys.executable, "-m", "freeatm_hf.prompts.build_label_space", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--output" in res.stdout and OUT.read_bytes() == shipped
    main(["--output", str(tmp_path / "labels.json")])
    assert (tmp_path / "labels.json").read_bytes() == shipped


def test_without_output_the_package_file_is_the_one_rewritten(tmp_path, monkeypatch):
    import freeatm_hf.prompts.build_label_space as build_label_space

    shipped = build_label_space.OUT.read_bytes()
    monkeypatch.setattr(build_label_space, "OUT", tmp_path / "package" / "imagenet_label_space.json")
    (tmp_path / "package").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    build_label_space.main([])
    assert build_label_space.OUT.read_bytes() == shipped and not any((tmp_path / "cwd").iterdir())
