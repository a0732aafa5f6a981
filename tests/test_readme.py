"""The README's set-up commands are the ones CI runs, and its API example imports."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [b.split("\n```")[0].strip() for b in blocks]


def test_ci_runs_the_readme_test_command():
    setup, test = _commands()
    assert "neuronpath demo" in setup and "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_api_names_exist():
    import neuronpath

    for name in (
        "AttributionConfig",
        "find_paths",
        "joint_attribution_score",
        "load_model",
        "read_records",
        "ModelAdapter",
        "ModelSpec",
        "JASOptions",
        "register",
        "PathMethod",
    ):
        assert hasattr(neuronpath, name)
