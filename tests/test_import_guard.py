"""The repository's ``kernels/`` folder must not pass for the PyPI package ``kernels`` when the
repository root is on sys.path (``python -m videomla_app`` from the checkout; ``PYTHONPATH=.`` in
scripts/gpu_train.sh): transformers imported it while loading MiniLM and every embedded-model
command failed with "cannot import name 'CUDAProperties' from 'kernels'"."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def test_minilm_loads_when_run_from_the_checkout():
    # python -c puts the working folder (the repository root) first on sys.path, like python -m
    r = _run("import sys; assert sys.path[0] == ''\n"
             "from videomla_app.text_encoder import MiniLMTextEncoder\n"
             "s = MiniLMTextEncoder(text_len=16).encode(['a red ball bouncing'])\n"
             "print(tuple(s.shape))")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(1, 16, 384)"


def test_kernels_is_the_real_package_or_none_never_our_folder():
    r = _run("import importlib.util, videomla_app\n"
             "spec = importlib.util.find_spec('kernels')\n"
             "print(spec.origin if spec else None)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != str(ROOT / "kernels" / "__init__.py")
    # our kernels stay importable under their own name
    r = _run("import videomla_kernels; print(videomla_kernels.__file__)")
    assert r.returncode == 0 and Path(r.stdout.strip()).resolve() == ROOT / "kernels" / "__init__.py"


def test_without_a_real_kernels_package_the_name_is_blocked():
    """As on a machine where nothing is installed: the repository root and the standard library
    alone on sys.path. ``import kernels`` must fail the way an absent package does."""
    r = _run("import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]\n"
             "import importlib.util, videomla_app\n"
             "print(sys.modules['kernels'], importlib.util.find_spec('kernels'))\n"
             "try:\n    import kernels\nexcept ImportError:\n    print('ImportError')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", "None", "ImportError"]


def test_installed_next_to_hugging_face_kernels_it_leaves_them_alone(tmp_path):
    """Installed without -e, videomla_app sits in site-packages beside the real ``kernels``: that
    one is not our folder (it lacks our kernel files) and must stay importable."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(ROOT / "videomla_app", site / "videomla_app", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "kernels").mkdir()
    (site / "kernels" / "__init__.py").write_text("MARK = 'hugging face'\n")
    r = subprocess.run([sys.executable, "-c", "import videomla_app, kernels; print(kernels.MARK)"], cwd=tmp_path,
                       env={**ENV, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hugging face"


def test_a_deleted_working_folder_does_not_break_the_import(tmp_path):
    code = ("import os, sys, tempfile\n"
            "d = tempfile.mkdtemp(dir=sys.argv[1]); os.chdir(d); os.rmdir(d); sys.path.insert(0, '')\n"
            "import videomla_app, importlib.util\n"
            "spec = importlib.util.find_spec('kernels')\n"
            "print('ok', spec.origin if spec else None)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path,
                       env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "ok" and r.stdout.split()[1] != str(ROOT / "kernels" / "__init__.py")
