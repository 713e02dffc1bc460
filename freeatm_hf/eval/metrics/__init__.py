"""`evaluate` modules shipped with the package: `evaluate.load(metric_path(name))` works offline."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise FileNotFoundError(f"no metric {name!r}; available: {available}")
    return str(path.parent)


def load_metric(name: str):
    import evaluate

    return evaluate.load(metric_path(name))
