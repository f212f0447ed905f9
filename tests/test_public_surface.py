"""The integrations use attribot-rag's public surface only (issue #18).

Every ``.py`` file under ``integrations/`` (packages, tests, benchmarks) is parsed, not imported,
and may not reach a private core name: ``from attribot_rag.X import _name``, ``import
attribot_rag._mod``, or an attribute ``_name`` read off ``attribot_rag`` or a module of it
(``attribot_rag.models._SHARED``, ``core_models._SHARED`` after ``import attribot_rag.models as
core_models``). Dunder names (``__version__``) are public.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTEGRATIONS = ROOT / "integrations"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_core(module: str | None) -> bool:
    return module is not None and (module == "attribot_rag" or module.startswith("attribot_rag."))


def private_uses(source: str, filename: str = "<string>") -> list[str]:
    """``"line: what"`` for each private core name ``source`` reaches."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    core_aliases: dict[str, str] = {}  # local name -> the core module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_core(alias.name):
                    continue
                if any(_private(part) for part in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
                # `import attribot_rag.models` binds `attribot_rag`; `... as m` binds m to the module itself
                core_aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "attribot_rag"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_core(node.module):
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                else:  # `from attribot_rag import models as core_models` binds a core module (or a name)
                    core_aliases.setdefault(alias.asname or alias.name, f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in core_aliases:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr")
              and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in core_aliases
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_checker_sees_each_way_in():
    src = (
        "import attribot_rag.models as core_models\n"
        "import attribot_rag\n"
        "from attribot_rag.models import _as_dtype, shared_model\n"
        "from attribot_rag import models\n"
        "import attribot_rag._secret\n"
        "x = core_models._SHARED\n"
        "y = attribot_rag.models._MODEL_LOCKS\n"
        "z = models._GUARD\n"
        "getattr(core_models, '_SHARED')\n"
        "ok = attribot_rag.__version__, core_models.shared_model, self._x, other._y\n"
    )
    hits = private_uses(src)
    assert [h.split(":")[0] for h in hits] == ["3", "5", "6", "7", "8", "9"], hits


def test_integrations_import_no_private_core_name():
    files = sorted(INTEGRATIONS.rglob("*.py"))
    assert len(files) > 20  # both packages, their tests and benchmarks
    offences = [f"{path.relative_to(ROOT)}:{hit}" for path in files
                for hit in private_uses(path.read_text(encoding="utf-8"), str(path))]
    assert not offences, "integrations reach private attribot_rag names (make them public in the core):\n" + \
        "\n".join(offences)
