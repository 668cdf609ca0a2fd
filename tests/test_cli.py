import json
import subprocess
import sys

from typer.testing import CliRunner

from videomla_app.cli import app

runner = CliRunner()


def _info(*args):
    r = runner.invoke(app, ["info", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_info_reports_paper_cache_numbers():
    c = _info("--model", "videomla-1.3b")["cache"]
    assert (c["scalars_per_token_per_layer"], c["dense_scalars_per_token_per_layer"]) == (224, 3072)
    assert (c["bytes_per_token_per_layer"], c["dense_bytes_per_token_per_layer"]) == (448, 6144)
    assert round(c["reduction"], 3) == 0.927 and c["cache_tokens"] == 10 * 1560


def test_info_self_forcing_21_frame_dense_cache_is_6_04_gb():
    c = _info("--model", "self-forcing-1.3b")["cache"]
    assert c["cache_tokens"] == 32760 and round(c["total_bytes"] / 1e9, 2) == 6.04


def test_info_table_and_models_list():
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0 and "224" in r.output and "3072" in r.output and "92.7 %" in r.output
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "videomla-1.3b" in r.output and "self-forcing-1.3b" in r.output


def test_bad_input_is_one_line_and_exit_2():
    for args in (["info", "--model", "nope"], ["info", "--dtype", "int3"]):
        r = subprocess.run([sys.executable, "-m", "videomla_app", *args], capture_output=True, text=True)
        assert r.returncode == 2, r
        assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr and "Traceback" not in r.stderr
