"""Static security checks over the package source, with `ast` (nothing is imported to scan it).

No code path may unpickle or eval data: no pickle-family imports, no builtin eval/exec/compile,
no torch.load without weights_only=True, no allow_pickle=True, no unsafe yaml loads, no
torch.distributed object collectives (they pickle). And every gRPC server is built with a
max_receive_message_length option.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("splitserve", "router", "node", "prefill_node", "decode_node")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
CODE_BUILTINS = {"eval", "exec", "compile"}
OBJECT_COLLECTIVES = {"send_object_list", "recv_object_list", "broadcast_object_list", "all_gather_object",
                      "gather_object", "scatter_object_list"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}
# (path relative to the repo, finding) pairs that are allowed, each with the reason. Empty: nothing
# in the package needs an exception today (`model.eval()` and `re.compile()` are method calls, not
# the builtins, and the scan does not flag them).
ALLOWED: set[tuple[str, str]] = set()


def _dotted(node: ast.AST) -> str:
    """`torch.load` for Attribute(Name('torch'), 'load'); '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _call_findings(call: ast.Call) -> list[str]:
    name = _dotted(call.func)
    last = name.rsplit(".", 1)[-1]
    found = []
    if name in CODE_BUILTINS or name.startswith("builtins.") and last in CODE_BUILTINS:  # not obj.eval()
        found.append(f"{name}() runs code from data")
    if name == "torch.load" and not _is_true(_keyword(call, "weights_only")):
        found.append("torch.load without weights_only=True")
    if _is_true(_keyword(call, "allow_pickle")):
        found.append(f"{name}(allow_pickle=True)")
    if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all", "yaml.full_load_all"):
        found.append(f"{name} is not a safe load")
    loader = _dotted(_keyword(call, "Loader") or ast.Constant(None)).rsplit(".", 1)[-1]
    if name == "yaml.load" and loader not in SAFE_YAML_LOADERS:
        found.append("yaml.load without a SafeLoader")
    if last in OBJECT_COLLECTIVES:
        found.append(f"{name}() pickles objects")
    return found


def _import_findings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module]
    else:
        return []
    return [f"imports {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]


def scan_source(source: str) -> list[tuple[int, str]]:
    """(line, finding) for every forbidden construct in the source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        items = _call_findings(node) if isinstance(node, ast.Call) else _import_findings(node)
        found += [(node.lineno, item) for item in items]
    return found


def package_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_scanner_flags_unpickling_and_eval_but_not_methods_of_the_same_name():
    bad = "import pickle\nfrom dill import loads\nx = pickle.loads(x)\ny = eval(s)\nexec(code)\n" \
          "torch.load(path)\nnp.load(f, allow_pickle=True)\nyaml.load(text)\n" \
          "torch.distributed.recv_object_list(objs, 0)\n"
    assert [line for line, _ in scan_source(bad)] == [1, 2, 4, 5, 6, 7, 8, 9]
    fine = "model.eval()\nre.compile('x')\ntorch.load(p, weights_only=True)\nnp.load(f)\n" \
           "yaml.safe_load(t)\nyaml.load(t, Loader=yaml.SafeLoader)\ntorch.save(obj, path)\njson.loads(s)\n"
    assert scan_source(fine) == []


def test_the_scan_sees_the_package():
    files = package_files()
    assert len(files) >= 50, f"only {len(files)} .py files under {PACKAGES}: the scan would pass vacuously"
    assert {p.relative_to(ROOT).parts[0] for p in files} == set(PACKAGES)


def test_no_code_path_unpickles_or_evals_data():
    found = []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        found += [f"{rel}:{line}: {item}" for line, item in scan_source(path.read_text())
                  if (rel, item) not in ALLOWED]
    assert found == []


def _server_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func) in ("grpc.server", "grpc.aio.server", "aio.server"):
            yield node


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _options_value(path: Path | None, call: ast.Call):
    """The value of the call's options= (a module-level name is resolved by importing the module)."""
    options = _keyword(call, "options")
    if isinstance(options, ast.Name) and path is not None:
        return getattr(importlib.import_module(_module_name(path)), options.id)
    return ast.literal_eval(options) if options is not None else ()


def _receive_limit(path: Path | None, call: ast.Call):
    return dict(_options_value(path, call)).get("grpc.max_receive_message_length")


def test_every_grpc_server_limits_the_messages_it_receives():
    calls = [(path, call) for path in package_files() for call in _server_calls(ast.parse(path.read_text()))]
    assert len(calls) >= 2, "expected the node/router server and the KV receiver's own server"
    for path, call in calls:
        limit = _receive_limit(path, call)
        assert isinstance(limit, int) and 0 < limit <= 1 << 30, f"{path}:{call.lineno}: no receive limit"


@pytest.mark.parametrize("snippet", ["grpc.aio.server()", "grpc.server(pool, options=[('grpc.so_reuseport', 0)])"])
def test_the_limit_check_would_catch_a_server_without_one(snippet):
    (call,) = _server_calls(ast.parse(snippet))
    assert _receive_limit(None, call) is None
