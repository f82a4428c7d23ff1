"""`lrpo --help` stays fast: building the parser imports no torch (a fresh process, since pytest's
own imports would hide it), and lrpo.degradation still hands out every public name."""

import subprocess
import sys

import lrpo.degradation as degradation


def _modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.splitlines()[-1].split())  # the last line: what --help printed comes before it


def test_help_imports_no_torch():
    # before: the degrade parser came from lrpo.degradation.paired, whose package imported torch (about 5 s)
    code = "from lrpo.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    loaded = _modules_after(code)
    assert "argparse" in loaded and "lrpo" in loaded  # the probe ran
    assert "torch" not in loaded and "cv2" not in loaded


def test_the_degradation_package_loads_its_parts_on_first_use():
    assert "torch" not in _modules_after("import lrpo.degradation")
    for name in degradation.__all__:  # every public name resolves, and to its submodule's object
        value = getattr(degradation, name)
        assert value is getattr(sys.modules[value.__module__], name), name
    assert set(degradation.__all__) <= set(dir(degradation))
