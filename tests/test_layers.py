"""The layers run one way: the vision and scoring core imports nothing of ours above it, the
engines only the core, the line (pipeline) and calibration the engines and the core, the tools
everything. A module that imports upwards fails here, naming the import."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package (or module prefix) -> our packages it must not import
FORBIDDEN = {
    "pipeline/vision": ("engines", "calibration", "tools", "research", "pipeline.config", "pipeline.processing",
                        "pipeline.stages", "pipeline.sinks", "pipeline.sources", "pipeline.supervisor"),
    "engines": ("calibration", "tools", "research", "pipeline.config", "pipeline.processing", "pipeline.stages",
                "pipeline.sinks", "pipeline.sources", "pipeline.supervisor", "pipeline.benchmark"),
    "pipeline": ("calibration", "tools", "research"),
    "calibration": ("tools", "research"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_it(layer):
    wrong = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, module in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[layer]):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_research_modules_import():
    """Every study runs as a module against today's library (python -m research.NAME --help)."""
    import importlib

    names = sorted(p.stem for p in (ROOT / "research").glob("*.py") if p.stem != "__init__")
    assert len(names) >= 10
    for name in names:
        importlib.import_module(f"research.{name}")


def test_every_tool_option_says_what_it_does():
    """Each command-line tool's options all carry help text, and train's defaults are TrainConfig's."""
    import importlib

    from engines.train_config import TrainConfig

    missing = []
    for path in sorted((ROOT / "tools").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"tools.{path.stem}")
        if not hasattr(module, "get_parser"):
            continue
        for action in module.get_parser()._actions:
            if action.dest != "help" and not action.help:
                missing.append(f"{path.stem} {'/'.join(action.option_strings) or action.dest}")
    for path in sorted((ROOT / "pipeline" / "stages").glob("*.py")):  # the stages build parsers in main()
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                    and "help" not in {k.arg for k in node.keywords}):
                missing.append(f"{path.stem}:{node.lineno}")
    assert not missing, missing
    from tools.train import get_parser

    args = get_parser().parse_args(["--data", "d", "--out", "o"])
    for name in ("width", "epochs", "steps_per_epoch", "batch_size", "lr", "seed", "ema", "image_scale"):
        assert getattr(args, name) == getattr(TrainConfig("d", "o"), name), name
